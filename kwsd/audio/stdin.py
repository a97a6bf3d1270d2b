"""Raw PCM on standard input: `arecord -f S16_LE -r 16000 -c 1 -t raw | kwsd run`.

Reading a pipe blocks, so a dedicated daemon thread does it: the event loop never
waits on stdin, and a reader still blocked at shutdown cannot hold the process open.
The thread waits for room in the queue (backpressure) instead of dropping audio: a
pipe has its own buffer, and replaying a recording through stdin must lose nothing.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sys
import threading
import time
from typing import Protocol

import numpy as np

from kwsd.audio.base import SAMPLE_RATE, AudioOptions, FloatArray, StreamClock
from kwsd.audio.convert import Converter, check_channel
from kwsd.audio.queue import BoundedAudioQueue, QueueClosedError
from kwsd.audio.silence import SilenceWatchdog
from kwsd.errors import AudioError
from kwsd.log import get_logger

log = get_logger(__name__)

_BYTES_PER_SAMPLE = 2  # s16le


class ByteReader(Protocol):
    """What the source reads from: `sys.stdin.buffer`, a pipe, a subprocess's stdout."""

    def read(self, size: int = -1, /) -> bytes: ...


class StdinSource:
    """Signed 16-bit little-endian PCM (16 kHz mono unless configured) from a byte stream."""

    live = False

    def __init__(
        self, options: AudioOptions | None = None, stream: ByteReader | None = None
    ) -> None:
        self.options = options or AudioOptions(source="stdin")
        self.rate = self.options.sample_rate or SAMPLE_RATE
        self.channels = self.options.stdin_channels
        if self.channels < 1:
            raise AudioError(f"stdin channel count must be >= 1, not {self.channels}")
        check_channel(self.options.channel, self.channels, "stdin audio")
        # The raw, unbuffered fd rather than sys.stdin.buffer: a reader thread blocked in
        # BufferedReader.read holds its lock, and the interpreter aborts ("could not acquire
        # lock for <stdin> at interpreter shutdown") when it exits during that read, e.g.
        # on SIGTERM while `arecord | kwsd run` is running.
        self._stream = (
            stream
            if stream is not None
            else open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)  # noqa: SIM115
        )
        if stream is None and sys.stdin.isatty():
            raise AudioError(
                "audio.source = stdin but stdin is a terminal; pipe raw audio in, e.g. "
                "`arecord -q -f S16_LE -r 16000 -c 1 -t raw | kwsd run`"
            )
        self.name = "stdin"
        self.clock = StreamClock()
        self.trailing_bytes = 0  # bytes at the end that did not make a whole frame
        self._stop = threading.Event()
        self._pending: concurrent.futures.Future[None] | None = None
        self._watchdog = SilenceWatchdog(
            self.options.silence_warning_seconds,
            source="stdin",
            hint="the program writing to stdin sends zeros (e.g. `arecord` on a muted or "
            "wrong device: check `arecord -l` and `alsamixer`).",
        )

    async def run(self, out: BoundedAudioQueue) -> None:
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        thread = threading.Thread(
            target=self._read_all, args=(loop, out, finished), name="kwsd-stdin", daemon=True
        )
        log.info("audio_stdin_opened", sample_rate=self.rate, channels=self.channels)
        thread.start()
        try:
            await finished
        finally:
            self._stop.set()
            pending = self._pending
            if pending is not None:
                pending.cancel()  # a hand-over waiting for queue room: release the reader
        log.info("audio_stdin_finished", seconds=round(self.clock.seconds, 3))

    async def _deliver(
        self, samples: FloatArray, captured_at: float, out: BoundedAudioQueue
    ) -> None:
        if samples.size == 0:
            return
        block = self.clock.stamp(samples, captured_at)
        self._watchdog.feed(block.samples)
        await out.put(block)

    def _read_all(
        self,
        loop: asyncio.AbstractEventLoop,
        out: BoundedAudioQueue,
        finished: asyncio.Future[None],
    ) -> None:
        """Worker thread: read, convert, hand over; resolve `finished` at end of input."""
        frame_bytes = _BYTES_PER_SAMPLE * self.channels
        read_bytes = max(1, self.rate * self.options.block_ms // 1000) * frame_bytes
        converter = Converter(self.rate, self.options.channel)
        carry = b""
        error: BaseException | None = None
        try:
            while not self._stop.is_set():
                chunk = self._stream.read(read_bytes)
                if not chunk:
                    break
                captured_at = time.monotonic()
                data = carry + chunk
                usable = len(data) - len(data) % frame_bytes
                carry = data[usable:]
                pcm = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, self.channels)
                if not self._hand_over(loop, converter.process(pcm), captured_at, out):
                    self._stop.set()
            if not self._stop.is_set():
                self._hand_over(loop, converter.flush(), time.monotonic(), out)
            self.trailing_bytes = len(carry)
            if carry:
                log.warning(
                    "audio_stdin_partial_frame",
                    bytes=len(carry),
                    message="stdin ended in the middle of a sample frame; is it really "
                    f"s16le with {self.channels} channel(s)?",
                )
        except (OSError, ValueError) as exc:
            error = AudioError(f"reading audio from stdin failed: {exc}")
        except BaseException as exc:  # delivered to the awaiting task, not lost in a thread
            error = exc
        self._resolve(loop, finished, error)

    def _hand_over(
        self,
        loop: asyncio.AbstractEventLoop,
        samples: FloatArray,
        captured_at: float,
        out: BoundedAudioQueue,
    ) -> bool:
        """Deliver on the loop and wait for room; False when the loop or queue is gone."""
        try:
            future = asyncio.run_coroutine_threadsafe(
                self._deliver(samples, captured_at, out), loop
            )
            self._pending = future
            future.result()
        except (RuntimeError, QueueClosedError, concurrent.futures.CancelledError):
            # RuntimeError: the loop closed (shutdown) while we were reading.
            return False
        return True

    @staticmethod
    def _resolve(
        loop: asyncio.AbstractEventLoop,
        finished: asyncio.Future[None],
        error: BaseException | None,
    ) -> None:
        def settle() -> None:
            if finished.done():
                return
            if error is None:
                finished.set_result(None)
            else:
                finished.set_exception(error)

        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(settle)
