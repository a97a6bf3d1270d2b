"""The bounded queue between audio capture and the decoder.

A microphone cannot wait. If the decoder stalls (an overloaded Raspberry Pi, a long GC
pause, a suspended laptop waking up), keeping every block would grow memory without
bound and leave the daemon reacting to speech from minutes ago. So the queue holds at
most `max_seconds` of audio and drops the *oldest* when full: fresh audio is what a
keyword spotter must hear. Dropped audio is counted for the metrics endpoint and
reported in a rate-limited warning, never silently.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable

from kwsd.audio.base import SAMPLE_RATE, AudioBlock
from kwsd.log import get_logger

log = get_logger(__name__)


class QueueClosedError(Exception):
    """put() on a queue whose producer side was closed."""


class BoundedAudioQueue:
    """An asyncio queue of AudioBlocks bounded in seconds of audio.

    `put_nowait` (live sources) never blocks and drops the oldest blocks to make room;
    `put` (non-live sources) waits for room instead. `get` returns None once the queue
    is closed and drained. Not thread-safe: use it from the event loop only.
    """

    def __init__(
        self,
        max_seconds: float,
        *,
        warn_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_seconds <= 0:
            raise ValueError("max_seconds must be > 0")
        self.max_samples = max(1, int(max_seconds * SAMPLE_RATE))
        self.warn_interval = warn_interval
        self._clock = clock
        self._blocks: deque[AudioBlock] = deque()
        self._queued_samples = 0
        self._closed = False
        self._changed = asyncio.Event()
        # Metrics (read by kwsd's metrics module).
        self.dropped_samples = 0
        self.dropped_blocks = 0
        self._last_warning: float | None = None
        self._unreported_samples = 0
        self._drop_next = False

    # -- metrics -----------------------------------------------------------------
    @property
    def dropped_seconds(self) -> float:
        """Total audio dropped because the decoder fell behind, in seconds."""
        return self.dropped_samples / SAMPLE_RATE

    @property
    def queued_seconds(self) -> float:
        return self._queued_samples / SAMPLE_RATE

    @property
    def max_seconds(self) -> float:
        return self.max_samples / SAMPLE_RATE

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- producer side -------------------------------------------------------------
    def put_nowait(self, block: AudioBlock) -> None:
        """Add a block, dropping the oldest queued audio if it would not fit."""
        if self._closed:
            raise QueueClosedError("audio queue is closed")
        dropped = 0
        while self._blocks and self._queued_samples + block.num_samples > self.max_samples:
            old = self._blocks.popleft()
            self._queued_samples -= old.num_samples
            dropped += old.num_samples
            self.dropped_blocks += 1
        if dropped:
            self.dropped_samples += dropped
            self._unreported_samples += dropped
            self._drop_next = True
            self._warn_dropped()
        self._append(block)

    async def put(self, block: AudioBlock) -> None:
        """Add a block, waiting until there is room (a block larger than the bound still fits
        into an empty queue, so a producer can never wait forever)."""
        while True:
            if self._closed:
                raise QueueClosedError("audio queue is closed")
            if not self._blocks or self._queued_samples + block.num_samples <= self.max_samples:
                self._append(block)
                return
            self._changed.clear()
            await self._changed.wait()

    def close(self) -> None:
        """No more blocks will come; consumers drain what is queued, then get None."""
        self._closed = True
        self._changed.set()

    # -- consumer side ---------------------------------------------------------------
    async def get(self) -> AudioBlock | None:
        """The oldest block, waiting for one; None once the queue is closed and drained."""
        while not self._blocks:
            if self._closed:
                return None
            self._changed.clear()
            await self._changed.wait()
        return self.get_nowait()

    def get_nowait(self) -> AudioBlock | None:
        """The oldest block, or None when the queue is empty."""
        if not self._blocks:
            return None
        block = self._blocks.popleft()
        self._queued_samples -= block.num_samples
        self._changed.set()
        if self._drop_next:
            # Audio before this block was thrown away: the decoder must not join across it.
            self._drop_next = False
            if not block.discontinuity:
                block = dataclasses.replace(block, discontinuity=True)
        return block

    # -- internals -------------------------------------------------------------------
    def _append(self, block: AudioBlock) -> None:
        self._blocks.append(block)
        self._queued_samples += block.num_samples
        self._changed.set()

    def _warn_dropped(self) -> None:
        now = self._clock()
        if self._last_warning is not None and now - self._last_warning < self.warn_interval:
            return
        self._last_warning = now
        log.warning(
            "audio_dropped",
            dropped_seconds=round(self._unreported_samples / SAMPLE_RATE, 3),
            dropped_seconds_total=round(self.dropped_seconds, 3),
            max_queue_seconds=self.max_seconds,
            message=(
                "the decoder is not keeping up with the audio; the oldest audio was dropped. "
                "Keywords spoken then were missed. Check CPU load (`kwsd` metrics "
                "kwsd_audio_dropped_seconds_total), or raise audio.max_queue_seconds."
            ),
        )
        self._unreported_samples = 0
