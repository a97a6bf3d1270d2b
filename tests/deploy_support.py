"""Helpers for the container entrypoint and add-on tests: real processes, real sockets.

`KwsdProcess` runs `python -m kwsd container ...` as the image runs it (it execs kwsd,
so the process we hold becomes kwsd), with an environment of its own: a temporary
/data, cache (models), TMPDIR (health state) and no KWSD_* or PULSE_SERVER leaking in
from the caller. `fake_parec` stands in for PulseAudio's `parec` on PATH: it plays
espeak-ng speech as raw 16 kHz PCM, so the microphone-through-stdin plumbing runs for
real without a sound server.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from engine_support import espeak_wav

from kwsd.audio.file import read_audio

SPEECH = "hey computer, turn on the lights"


def clean_env(tmp_path: Path, assets: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KWSD_", "PULSE_", "SUPERVISOR_")) and k != "XDG_CACHE_HOME"
    }
    for name in ("tmp", "data", "cache", "config-home"):
        (tmp_path / name).mkdir(exist_ok=True)
    env.update(
        TMPDIR=str(tmp_path / "tmp"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        XDG_CONFIG_HOME=str(tmp_path / "config-home"),
        KWSD_DATA_DIR=str(tmp_path / "data"),
        KWSD_ASSETS=str(assets),
        KWSD_LOG__FORMAT="json",
    )
    env.update(extra)
    return env


def speech_wav(directory: Path) -> Path:
    """espeak-ng speech with a second of silence after it, so the last keyword completes."""
    raw = espeak_wav(directory / "espeak.wav", SPEECH)
    with wave.open(str(raw), "rb") as source:
        params = source.getparams()
        frames = source.readframes(source.getnframes())
    padded = directory / "speech.wav"
    with wave.open(str(padded), "wb") as target:
        target.setparams(params)
        target.writeframes(frames + b"\0" * params.sampwidth * params.framerate)
    return padded


def fake_parec(bin_dir: Path, wav: Path) -> Path:
    """A `parec` that records its arguments and plays `wav` as s16le 16 kHz mono, paced."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(read_audio(wav), -1.0, 1.0) * 32767).astype("<i2").tobytes()
    raw = bin_dir / "speech.raw"
    raw.write_bytes(pcm)
    args = bin_dir / "parec.args"
    script = bin_dir / "parec"
    # Chunks of 0.1 s every 0.1 s: a microphone's pace, not a file dump.
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        f"open({str(args)!r}, 'w').write(' '.join(sys.argv[1:]))\n"
        f"data = open({str(raw)!r}, 'rb').read()\n"
        "for i in range(0, len(data), 3200):\n"
        "    sys.stdout.buffer.write(data[i:i + 3200])\n"
        "    sys.stdout.buffer.flush()\n"
        "    time.sleep(0.1)\n",
        encoding="utf-8",
    )
    script.chmod(0o755)
    return args


@dataclass
class KwsdProcess:
    """One `python -m kwsd ...` child, its stderr in a file we can read while it runs."""

    args: list[str]
    env: dict[str, str]
    log_path: Path
    stdout: int | None = subprocess.PIPE
    process: subprocess.Popen[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "kwsd", *self.args],
            env=self.env,
            stdout=self.stdout,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_for_log(self, text: str, within: float = 60.0) -> str:
        return wait_for_text(text, lambda: self.log, self.running, within)

    def stop(self, within: float = 10.0) -> int:
        if self.running():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(within)
        finally:
            self.close()

    def close(self) -> None:
        if self.running():
            self.process.kill()
            self.process.wait()
        self._log.close()


def wait_for_text(
    text: str, logs: Callable[[], str], alive: Callable[[], bool], within: float
) -> str:
    """The logs once they hold `text`; AssertionError if the process exits or time runs out."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        log = logs()
        if text in log:
            return log
        if not alive():
            raise AssertionError(f"the process exited before logging {text!r}:\n{log}")
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} logged within {within:.0f} s:\n{logs()}")


async def _describe(port: int) -> list[str] | None:
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    try:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), 5)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None
    if event is None or not Info.is_type(event.type):
        return None
    return [m.name for w in Info.from_event(event).wake for m in w.models]


def wyoming_models(
    port: int, alive: Callable[[], bool], logs: Callable[[], str], within: float = 60.0
) -> list[str]:
    """The wake models a Wyoming server offers, once it answers (while `alive()` holds)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        names = asyncio.run(_describe(port))
        if names is not None:
            return names
        if not alive():
            raise AssertionError(f"the Wyoming server's process exited:\n{logs()}")
        time.sleep(0.2)
    raise AssertionError(f"no Wyoming server on {port} within {within} s:\n{logs()}")


async def _detect(port: int, wav: Path) -> str | None:
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.wake import Detect, Detection, NotDetected

    with wave.open(str(wav), "rb") as source:
        rate, width, channels = source.getframerate(), source.getsampwidth(), source.getnchannels()
        pcm = source.readframes(source.getnframes())
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Detect().event())
        await client.write_event(AudioStart(rate=rate, width=width, channels=channels).event())
        step = rate * width * channels // 10
        for offset in range(0, len(pcm), step):
            chunk = AudioChunk(rate=rate, width=width, channels=channels,
                               audio=pcm[offset:offset + step])  # fmt: skip
            await client.write_event(chunk.event())
        await client.write_event(AudioStop().event())
        while (event := await asyncio.wait_for(client.read_event(), 30)) is not None:
            if Detection.is_type(event.type):
                return Detection.from_event(event).name
            if NotDetected.is_type(event.type):
                return None
    return None


def wyoming_detection(port: int, wav: Path) -> str | None:
    """The first keyword a Wyoming server detects in `wav` (as Home Assistant streams it)."""
    return asyncio.run(_detect(port, wav))
