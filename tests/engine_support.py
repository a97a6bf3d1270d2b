"""Helpers for tests that need generated speech or run the real decoder/joiner."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt

from kwsd.audio.file import read_audio


def espeak_wav(path: Path, text: str, voice: str = "en-us+m3") -> Path:
    """Generated speech as espeak-ng writes it (22050 Hz mono 16-bit WAV)."""
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return path


def espeak(text: str, path: Path, voice: str = "en-us+m3") -> npt.NDArray[np.float32]:
    """Generated speech (espeak-ng), resampled to 16 kHz mono."""
    return read_audio(espeak_wav(path, text, voice))
