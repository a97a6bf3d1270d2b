"""The Wyoming server's decoding engine: every connection's stream in one `StreamBatch`.

A connection used to decode each 64 ms `audio-chunk` in a thread of its own: one
thread hop per piece, and each piece too short to fill an encoder chunk, so most hops
only computed features. Here the event loop only buffers the converted samples and
hands a stream's audio over when it completes an encoder chunk (320 ms, aligned with
the model's chunking, so handing over adds no delay), or the tail at `audio-stop`.
One worker thread owns the batch: it applies what the connections handed over, then
steps the batch while any stream has a chunk, so the chunks of all streams that are
ready go through the model together (`StreamBatch` batches what stays exact for each
stream). Detections go back to the loop with `call_soon_threadsafe`, in order, and a
finished stream's future is resolved after its last detections.

The worker is the only thread that touches the batch; the loop only queues commands.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Final

import numpy as np
import structlog

from kwsd.backends.base import FloatArray
from kwsd.batch import BatchStream, StreamBatch
from kwsd.detection import Detection
from kwsd.engine import Frontend
from kwsd.features import SAMPLE_RATE
from kwsd.keywords import KeywordSet
from kwsd.spotter import KeywordSpotter

log = structlog.get_logger("kwsd.wyoming")

DetectionsHook = Callable[[list[Detection]], None]
_Command = Callable[[], None]

# Resolution of the hand-over calibration (samples at 16 kHz): 5 ms.
_CALIBRATION_STEP: Final = 80
FEATURE_FRAMES_PER_SECOND: Final = 100  # fbank frames are 10 ms apart


def chunk_boundaries(spotter: KeywordSpotter) -> tuple[int, int]:
    """(samples at 16 kHz that complete a stream's first encoder chunk, samples per
    further chunk), measured on the model's own feature pipeline so a hand-over at
    these counts is never early (a chunk left waiting for the next hand-over would
    cost 320 ms of latency)."""
    frontend = Frontend(spotter.backend)
    silence = np.zeros(_CALIBRATION_STEP, np.float32)
    fed = 0
    while not frontend.windows(silence):
        fed += _CALIBRATION_STEP
    first = fed + _CALIBRATION_STEP
    return first, spotter.backend.chunk.frames_shift * SAMPLE_RATE // FEATURE_FRAMES_PER_SECOND


class EngineStream:
    """A connection's stream, used from the event loop: buffer audio, hand over chunks.

    One utterance at a time: `restart` begins one (with its keywords and where its
    detections go), `feed` buffers its audio, `finish` ends it and waits for its last
    detections. Detections reach the utterance's hook on the event loop.
    """

    def __init__(self, engine: DecodeEngine, name: str) -> None:
        self.engine = engine
        self.name = name
        self._buffer: list[FloatArray] = []
        self._fed = 0  # samples of this utterance so far (16 kHz)
        self._due = engine.first_chunk_samples  # hand over once _fed reaches this
        self._keywords: KeywordSet | None = None  # the list the worker's stream spots
        self._stream: BatchStream | None = None  # worker side; created by the first restart
        # Hand-overs so far (loop side), and how many of them are searched (worker side;
        # the loop only reads it): the difference is this connection's backlog.
        self.handed = 0
        self.searched = 0
        self._accepted = 0  # worker side: the last hand-over applied
        self._hook: DetectionsHook | None = None  # worker side: the current utterance's hook

    def restart(self, keywords: KeywordSet, on_detections: DetectionsHook) -> None:
        """Begin an utterance spotting `keywords`; the previous one's queued audio is
        searched first (its detections go to its own hook), its buffered rest dropped.

        The keyword graph is only looked up when `keywords` is another list than the
        last utterance's, so a new utterance with the same list rebuilds nothing.
        """
        self._buffer.clear()
        self._fed = 0
        self._due = self.engine.first_chunk_samples
        changed = keywords is not self._keywords
        self._keywords = keywords
        self.engine.submit(lambda: self._restart_in_worker(keywords, changed, on_detections))

    @property
    def backlog(self) -> int:
        """Chunks handed over and not searched yet (a client sending faster than real
        time, or a server short of CPU)."""
        return self.handed - self.searched

    def feed(self, samples: FloatArray) -> None:
        """Buffer 16 kHz samples; hand them over once they complete an encoder chunk."""
        if not len(samples):
            return
        self._buffer.append(samples)
        self._fed += len(samples)
        if self._fed >= self._due:
            step = self.engine.chunk_samples
            self._due += step * ((self._fed - self._due) // step + 1)
            self._hand_over()

    async def finish(self) -> None:
        """End the utterance: hand over the rest, pad it, and wait until the worker has
        delivered its last detections (they reach the hook before this returns)."""
        self._hand_over()
        done: asyncio.Future[None] = self.engine.loop.create_future()
        self.engine.submit(lambda: self._settle_in_worker(done, finish=True))
        await done

    async def settle(self) -> None:
        """Wait until the audio handed over so far is searched and its detections
        delivered (what is still buffered cannot complete a chunk yet)."""
        done: asyncio.Future[None] = self.engine.loop.create_future()
        self.engine.submit(lambda: self._settle_in_worker(done, finish=False))
        await done

    def close(self) -> None:
        """The connection is gone: drop the stream and whatever it had queued."""
        self._buffer.clear()
        self.engine.streams.discard(self)
        self.engine.submit(self._close_in_worker)

    def _hand_over(self) -> None:
        if not self._buffer:
            return
        samples = self._buffer[0] if len(self._buffer) == 1 else np.concatenate(self._buffer)
        self._buffer.clear()
        self.handed += 1
        number = self.handed
        self.engine.submit(lambda: self._accept_in_worker(samples, number))

    # ------------------------------------------------------------ worker side

    def _restart_in_worker(self, keywords: KeywordSet, changed: bool, hook: DetectionsHook) -> None:
        engine = self.engine
        if self._stream is None:
            self._stream = engine.batch.add_stream(keywords, name=self.name)
            engine.owners[self._stream] = self
        else:
            engine.drain(self._stream)  # the old utterance's queued chunks still count
            self._stream.reset()
            if changed:
                self._stream.set_keywords(keywords)
        self._hook = hook

    def _accept_in_worker(self, samples: FloatArray, number: int) -> None:
        self._accepted = number
        if self._stream is None or not self._stream.accept(samples):
            self.searched = number

    def _caught_up(self) -> None:
        """Worker side: the stream's queued chunks are all searched."""
        self.searched = self._accepted

    def _settle_in_worker(self, done: asyncio.Future[None], *, finish: bool) -> None:
        if self._stream is None:
            self.engine.resolve(done)
            return
        if finish:
            self._stream.finish()
        self.engine.awaiting.setdefault(self._stream, []).append(done)

    def _close_in_worker(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self.engine.owners.pop(stream, None)
            for done in self.engine.awaiting.pop(stream, []):
                self.engine.resolve(done)
            stream.close()


class DecodeEngine:
    """One worker thread stepping one `StreamBatch` for all Wyoming connections."""

    def __init__(
        self, spotter: KeywordSpotter, batch: StreamBatch, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Use `DecodeEngine.start`, which builds the batch off the event loop."""
        self.spotter = spotter
        self.batch = batch
        self.loop = loop
        self.first_chunk_samples, self.chunk_samples = chunk_boundaries(spotter)
        # Worker side: futures resolved once their stream has no chunk queued.
        self.awaiting: dict[BatchStream, list[asyncio.Future[None]]] = {}
        self.owners: dict[BatchStream, EngineStream] = {}  # worker side
        self._commands: deque[_Command] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._opened = 0
        self.streams: set[EngineStream] = set()  # loop side: the open connections' streams
        self._thread = threading.Thread(target=self._run, name="kwsd-wyoming-engine", daemon=True)

    @classmethod
    async def start(cls, spotter: KeywordSpotter) -> DecodeEngine:
        """Probe the model for batching and start the worker (both off the loop)."""
        batch = await asyncio.to_thread(spotter.create_batch)
        engine = await asyncio.to_thread(cls, spotter, batch, asyncio.get_running_loop())
        engine._thread.start()
        log.debug("Wyoming decode engine started", plan=str(batch.plan))
        return engine

    async def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join)

    def open(self, name: str | None = None) -> EngineStream:
        """A stream for one connection (call `restart` to begin its first utterance)."""
        self._opened += 1
        stream = EngineStream(self, name if name is not None else str(self._opened))
        self.streams.add(stream)
        return stream

    def submit(self, command: _Command) -> None:
        with self._wake:
            self._commands.append(command)
            self._wake.notify()

    def resolve(self, done: asyncio.Future[None], error: BaseException | None = None) -> None:
        """Worker side: complete `done` on the loop, after the detections sent before."""

        def settle() -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        self.loop.call_soon_threadsafe(settle)

    def drain(self, stream: BatchStream) -> None:
        """Worker side: step the batch until `stream` has no chunk queued."""
        while stream.ready and self._step():
            pass

    # ------------------------------------------------------------ the worker

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._commands and not self._stopping and not self.batch.ready:
                    self._wake.wait()
                if self._stopping:
                    return
                commands = list(self._commands)
                self._commands.clear()
            for command in commands:
                try:
                    command()
                except Exception:
                    log.exception("Wyoming decode engine command failed")
            self._settle_finished()
            # One chunk per ready stream, then look for new audio: a stream that
            # hands over meanwhile joins the next step instead of waiting for a drain.
            self._step()
            self._settle_finished()

    def _step(self) -> bool:
        streams = [s for s in self.batch if s.ready]
        try:
            results = self.batch.step()
        except Exception as exc:
            # A failed step fails only the streams in it: they leave the batch, and
            # their connections get an error at audio-stop instead of a hang.
            log.exception("Wyoming decode step failed", streams=[s.name for s in streams])
            for stream in streams:
                stream.close()
                owner = self.owners.pop(stream, None)
                if owner is not None:
                    owner._stream = None  # its next utterance starts a new stream
                    owner._caught_up()
                for done in self.awaiting.pop(stream, []):
                    self.resolve(done, RuntimeError(f"decoding failed: {exc}"))
            return bool(streams)
        for stream, found in results.items():
            owner = self.owners.get(stream)
            if owner is None:
                continue
            if found and owner._hook is not None:
                self.loop.call_soon_threadsafe(owner._hook, found)
            if not stream.ready:
                owner._caught_up()
        return bool(results)

    def _settle_finished(self) -> None:
        for stream in [s for s in self.awaiting if not s.ready]:
            owner = self.owners.get(stream)
            if owner is not None:
                owner._caught_up()  # also after a hand-over the stream refused
            for done in self.awaiting.pop(stream):
                self.resolve(done)
