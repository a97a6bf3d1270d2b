"""Helpers for tests that run the real decoder/joiner (and the stand-in encoder)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt

from kwsd.audio.file import read_audio


def espeak(text: str, path: Path, voice: str = "en-us+m3") -> npt.NDArray[np.float32]:
    """Generated speech (espeak-ng), resampled to 16 kHz mono."""
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return read_audio(path)
