"""What every audio source produces, and the options that configure them.

All sources deliver the same thing, float32 mono 16 kHz blocks stamped in *stream
time* (samples delivered so far / 16000), so detection timestamps line up with the
audio itself rather than with a wall clock that drifts against the sound card.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from kwsd.audio.queue import BoundedAudioQueue
    from kwsd.config import AudioSettings

SAMPLE_RATE = 16000
FloatArray = npt.NDArray[np.float32]
SourceKind = Literal["mic", "file", "stdin"]


@dataclass(frozen=True, slots=True)
class AudioBlock:
    """A run of float32 mono 16 kHz samples in [-1, 1] and where it sits in the stream.

    `start_sample` counts samples this source has delivered before this block; it is
    exact, so consecutive blocks tile the stream without gaps or overlaps. `captured_at`
    is `time.monotonic()` when the audio reached us (None if unknown), for latency
    measurements. `discontinuity` marks the first block after audio was lost (a device
    reopened, or older blocks dropped by the queue): a keyword cannot span it.
    """

    samples: FloatArray
    start_sample: int
    captured_at: float | None = None
    discontinuity: bool = False

    @property
    def start(self) -> float:
        """Stream seconds at the first sample."""
        return self.start_sample / SAMPLE_RATE

    @property
    def num_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def duration(self) -> float:
        return self.num_samples / SAMPLE_RATE

    @property
    def end(self) -> float:
        """Stream seconds just after the last sample (the next block's `start`)."""
        return (self.start_sample + self.num_samples) / SAMPLE_RATE


class AudioSource(Protocol):
    """Produces AudioBlocks into a queue until its input ends (or forever, for a mic).

    `live` sources cannot wait: they add with `put_nowait`, which drops the oldest audio
    when the decoder falls behind. Non-live ones (a file read as fast as possible, a
    pipe) wait for room instead, so nothing is lost. `run` returns when the input ends
    and cleans up when cancelled.
    """

    name: str
    live: bool

    async def run(self, out: BoundedAudioQueue) -> None: ...


@dataclass(frozen=True, slots=True)
class AudioOptions:
    """The knobs of every source: `kwsd.config.AudioSettings` plus a few not in the config."""

    source: SourceKind = "mic"
    device: str | int | None = None
    # mic: capture rate (None = 16000 if supported, else the device default).
    # stdin: the rate of the raw PCM on stdin (None = 16000).
    sample_rate: int | None = None
    channel: int | None = None  # None = downmix all channels
    file: Path | None = None
    realtime: bool = True
    loop: bool = False
    block_ms: int = 100
    max_queue_seconds: float = 5.0
    silence_warning_seconds: float = 10.0  # 0 = never warn
    reopen_backoff_max_seconds: float = 30.0
    reopen_backoff_initial_seconds: float = 0.5
    # A device that stops calling back without reporting an error (a USB mic pulled on
    # some hosts) is declared lost after this long.
    stall_timeout_seconds: float = 5.0
    stdin_channels: int = 1

    @classmethod
    def from_settings(cls, settings: AudioSettings) -> AudioOptions:
        """The validated `[audio]` settings; the knobs the config does not offer keep defaults."""
        return cls(
            source=settings.source,
            device=settings.device,
            sample_rate=settings.sample_rate,
            channel=settings.channel,
            file=settings.file,
            realtime=settings.realtime,
            loop=settings.loop,
            block_ms=settings.block_ms,
            max_queue_seconds=settings.max_queue_seconds,
            silence_warning_seconds=settings.silence_warning_seconds,
            reopen_backoff_max_seconds=settings.reopen_backoff_max_seconds,
        )


class StreamClock:
    """Turns successive sample runs into AudioBlocks with exact, gap-free stream positions."""

    def __init__(self) -> None:
        self.samples_delivered = 0
        self._pending_discontinuity = False

    def mark_discontinuity(self) -> None:
        """The next block follows lost audio (e.g. the device was reopened)."""
        self._pending_discontinuity = True

    def stamp(self, samples: FloatArray, captured_at: float | None) -> AudioBlock:
        block = AudioBlock(
            samples=samples,
            start_sample=self.samples_delivered,
            captured_at=captured_at,
            discontinuity=self._pending_discontinuity,
        )
        self.samples_delivered += block.num_samples
        self._pending_discontinuity = False
        return block

    @property
    def seconds(self) -> float:
        return self.samples_delivered / SAMPLE_RATE
