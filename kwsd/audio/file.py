"""Audio from a file (WAV, FLAC, ...): for demos, tests, benchmarks and replaying recordings.

Read at real time it behaves like a microphone (live: the queue may drop audio if the
decoder falls behind), which is what the latency benchmark needs; read as fast as
possible it is a batch input that waits for the decoder and never loses a sample.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from kwsd.audio.base import SAMPLE_RATE, AudioOptions, FloatArray, StreamClock
from kwsd.audio.convert import Converter, check_channel, resample, to_mono
from kwsd.audio.queue import BoundedAudioQueue
from kwsd.audio.silence import SilenceWatchdog
from kwsd.errors import AudioError
from kwsd.log import get_logger

log = get_logger(__name__)

_COMMON_FORMATS = ("WAV", "FLAC", "OGG", "MP3", "AIFF", "CAF", "W64", "RF64")


def supported_formats() -> str:
    """The formats this libsndfile build reads, most common first."""
    available = set(sf.available_formats())
    common = [f for f in _COMMON_FORMATS if f in available]
    return ", ".join(common) if common else "WAV, FLAC"


def probe_file(path: Path) -> Any:
    """The file's format, or AudioError naming the file and the formats that work."""
    if not path.exists():
        raise AudioError(f"audio file {path} does not exist")
    if not path.is_file():
        raise AudioError(f"audio file {path} is not a regular file")
    try:
        info = sf.info(str(path))
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioError(
            f"cannot read audio file {path}: {exc}. Supported formats: {supported_formats()} "
            "(any sample rate and channel count; converted to 16 kHz mono)"
        ) from exc
    if info.frames == 0 or info.samplerate <= 0:
        raise AudioError(f"audio file {path} contains no audio")
    return info


class FileSource:
    """Plays a file into the queue, paced at real time or as fast as the decoder takes it."""

    def __init__(self, path: Path, options: AudioOptions | None = None) -> None:
        self.options = options or AudioOptions(source="file", file=path)
        self.path = Path(path).expanduser()
        self.info = probe_file(self.path)
        check_channel(self.options.channel, self.info.channels, f"audio file {self.path}")
        self.name = f"file {self.path.name}"
        self.live = self.options.realtime
        self.clock = StreamClock()
        self.loops_completed = 0
        self._watchdog = SilenceWatchdog(
            self.options.silence_warning_seconds,
            source=f"audio file {self.path}",
            hint="the file itself is silent at this point (or was recorded from a muted input).",
        )

    async def run(self, out: BoundedAudioQueue) -> None:
        rate = int(self.info.samplerate)
        frames_per_read = max(1, rate * self.options.block_ms // 1000)
        converter = Converter(rate, self.options.channel)
        started = time.monotonic()
        log.info(
            "audio_file_opened",
            path=str(self.path),
            sample_rate=rate,
            channels=self.info.channels,
            seconds=round(self.info.duration, 3),
            realtime=self.options.realtime,
            loop=self.options.loop,
        )
        try:
            handle = await asyncio.to_thread(sf.SoundFile, str(self.path))
        except (sf.SoundFileError, RuntimeError, OSError) as exc:
            raise AudioError(f"cannot read audio file {self.path}: {exc}") from exc
        try:
            while True:
                while True:
                    data = await asyncio.to_thread(
                        handle.read, frames_per_read, dtype="float32", always_2d=True
                    )
                    if data.shape[0] == 0:
                        break
                    await self._emit(converter.process(data), out, started)
                if not self.options.loop:
                    break
                self.loops_completed += 1
                # The resampler keeps its state: the loop is resampled as one continuous
                # signal, and stream time keeps increasing.
                await asyncio.to_thread(handle.seek, 0)
            await self._emit(converter.flush(), out, started)
        finally:
            await asyncio.to_thread(handle.close)
        log.info("audio_file_finished", path=str(self.path), seconds=round(self.clock.seconds, 3))

    async def _emit(self, samples: FloatArray, out: BoundedAudioQueue, started: float) -> None:
        if samples.size == 0:
            return
        if self.options.realtime:
            # A block is "captured" once all of it has played: due times come from the
            # sample count since start, so sleeping never accumulates drift.
            due = started + (self.clock.samples_delivered + samples.size) / SAMPLE_RATE
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        block = self.clock.stamp(np.ascontiguousarray(samples), time.monotonic())
        self._watchdog.feed(block.samples)
        if self.live:
            out.put_nowait(block)
        else:
            await out.put(block)


def read_audio(path: Path, channel: int | None = None) -> FloatArray:
    """A whole file as float32 16 kHz mono: what `kwsd detect` and `kwsd eval` decode."""
    probe_file(path)
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError) as exc:
        raise AudioError(f"cannot read audio file {path}: {exc}") from exc
    check_channel(channel, data.shape[1], str(path))
    return resample(to_mono(data, channel), int(rate))
