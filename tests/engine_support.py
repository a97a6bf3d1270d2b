"""Generated speech for tests, and the `speech` fixture (a pytest plugin, see conftest)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from kwsd.audio.file import read_audio

SENTENCE = "good evening, hey computer, turn on the lights please"
# Home-automation commands in sentences, with words that share prefixes with them
# (LIGHT / LIGHTS / LIGHT UP, THE GARAGE / THE GARDEN, ...): the parity tests and the
# benchmarks speak them with espeak-ng to the stand-in encoder.
COMMAND_SENTENCES = (
    "good evening everyone, hey computer, turn on the lights in the living room please",
    "could you open the garage door and then set the volume up a little",
    "the weather tomorrow looks fine, so let us light up the garden tonight",
    "good night, lights off in the kitchen and lock the front door",
    "after early nightfall the yellow lamps would light up here and there",
    "hey computer, what time is it, and play some quiet music in the bedroom",
)


def espeak_wav(path: Path, text: str, voice: str = "en-us+m3") -> Path:
    """Generated speech as espeak-ng writes it (22050 Hz mono 16-bit WAV)."""
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True)
    return path


def espeak(text: str, path: Path, voice: str = "en-us+m3") -> npt.NDArray[np.float32]:
    """Generated speech (espeak-ng), resampled to 16 kHz mono."""
    return read_audio(espeak_wav(path, text, voice))


@pytest.fixture(scope="session")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng speech with HEY COMPUTER (~1.0-1.6 s) and TURN ON THE LIGHTS (~2.0-2.6 s)."""
    return espeak_wav(tmp_path_factory.mktemp("speech") / "speech.wav", SENTENCE)
