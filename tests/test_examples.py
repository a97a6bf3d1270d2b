"""Every script in examples/ runs, as a user would run it, and prints what it should.

The model is the stand-in one from KWSD_ASSETS, so the speech is espeak-ng output. The
microphone example records from a real PortAudio/ALSA capture device whose samples
come from a FIFO this test writes (tests/alsa_support.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from alsa_support import ALSA_CONF, FifoCaptureDevices
from engine_support import espeak_wav

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SENTENCE = "good evening, hey computer, turn on the lights please"


def start_example(name: str, *args: str | Path, assets: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KWSD_ASSETS": str(assets)},
    )


def finish_example(proc: subprocess.Popen[str], timeout: float = 120) -> list[str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return out.splitlines()


def run_example(name: str, *args: str | Path, assets: Path) -> list[str]:
    return finish_example(start_example(name, *args, assets=assets))


def keywords_in(lines: list[str]) -> list[str]:
    return [m[1] for line in lines if (m := re.search(r"\b([A-Z][A-Z ]+[A-Z]) at \d", line))]


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return espeak_wav(tmp_path_factory.mktemp("examples") / "speech.wav", SENTENCE)


def test_every_example_is_tested() -> None:
    tested = {"detect_file.py", "spot_numpy.py", "keyword_swap.py", "microphone_asyncio.py"}
    scripts = {p.name for p in EXAMPLES.glob("*.py")} - {"choose_model.py"}
    assert scripts == tested


def test_detect_file(assets: Path, speech: Path, tmp_path: Path) -> None:
    data, rate = sf.read(str(speech), dtype="float32")
    stereo = tmp_path / "stereo.flac"
    sf.write(stereo, soxr.resample(np.stack([data, data], axis=1), rate, 44100), 44100)
    lines = run_example("detect_file.py", speech, stereo, assets=assets)
    for path in (speech, stereo):
        mine = [line for line in lines if line.startswith(f"{path}: ")]
        assert keywords_in(mine) == ["HEY COMPUTER", "TURN ON THE LIGHTS"], lines


def test_spot_numpy(assets: Path, speech: Path) -> None:
    lines = run_example("spot_numpy.py", speech, "-k", "turn on the lights", assets=assets)
    assert lines[0].endswith("samples at 22050 Hz")
    assert keywords_in(lines) == ["TURN ON THE LIGHTS"]


def test_keyword_swap(assets: Path, tmp_path: Path) -> None:
    said = {
        text: sf.read(str(espeak_wav(tmp_path / f"{i}.wav", text)), dtype="float32")
        for i, text in enumerate(["turn on the lights", "hey computer", "good night"])
    }
    rate = said["hey computer"][1]

    def pause(seconds: float) -> np.ndarray:
        return np.zeros(int(seconds * rate), np.float32)

    parts = [
        said["turn on the lights"][0], pause(1),  # no wake phrase yet: ignored
        said["hey computer"][0], pause(5),  # awake, but no command: back to sleep
        said["turn on the lights"][0], pause(1),  # asleep again: ignored
        said["hey computer"][0], pause(1),
        said["good night"][0], pause(1),  # the command
    ]  # fmt: skip
    conversation = tmp_path / "conversation.wav"
    sf.write(conversation, np.concatenate(parts), rate)
    lines = run_example("keyword_swap.py", conversation, assets=assets)
    events = [line.split(" at ")[0] for line in lines]
    assert events == [
        "wake: HEY COMPUTER",
        "no command; back to the wake phrase",
        "wake: HEY COMPUTER",
        "command: GOOD NIGHT",
    ], lines


@pytest.fixture
def microphone(tmp_path: Path) -> Iterator[FifoCaptureDevices]:
    if not ALSA_CONF.is_file():
        pytest.fail(f"{ALSA_CONF} missing: install libasound2 (it comes with libportaudio2)")
    devices = FifoCaptureDevices(tmp_path, ["kwsd_mic"])
    devices.activate(["kwsd_mic"])  # ALSA_CONFIG_PATH, inherited by the example's process
    yield devices
    devices.close()


def test_microphone_asyncio(assets: Path, speech: Path, microphone: FifoCaptureDevices) -> None:
    data, rate = sf.read(str(speech), dtype="float32")
    at44k = np.asarray(soxr.resample(data, rate, 44100), np.float32)
    args = ["--device", "kwsd_mic", "--rate", "44100", "--seconds", "8"]
    proc = start_example("microphone_asyncio.py", *args, assets=assets)
    done = threading.Event()
    feeder: threading.Thread | None = None
    try:
        # Speak once the device is recording: PortAudio's device scan at start-up
        # would read (and lose) whatever the FIFO already held.
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first == "recording from kwsd_mic at 44100 Hz"
        microphone.write("kwsd_mic", np.concatenate([at44k, np.zeros(44100, np.float32)]))
        feeder = microphone.feed_silence_until("kwsd_mic", 44100, done)  # an idle room
        lines = finish_example(proc)
    finally:
        done.set()
        if feeder is not None:
            feeder.join()
        proc.kill()
    assert keywords_in(lines) == ["HEY COMPUTER", "TURN ON THE LIGHTS"], lines
