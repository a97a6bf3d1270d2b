"""The Wyoming server's decoding engine, as the event loop sees it.

A connection used to decode each 64 ms `audio-chunk` in a thread of its own: one
thread hop per piece, and each piece too short to fill an encoder chunk, so most hops
only computed features. Here the event loop only buffers the converted samples and
hands a stream's audio over when it completes an encoder chunk (320 ms, aligned with
the model's chunking, so handing over adds no delay), or the tail at `audio-stop`.

Decoding runs in *shards* (`kwsd.wyoming.shards`): one worker thread by default, or
`wyoming.workers` decode processes, each stepping its own `StreamBatch` so the chunks
of all its streams that are ready go through the model together. A connection stays
on one shard. The loop talks to a shard only in messages (`kwsd.wyoming.decoding`):
commands out, events back; detections reach an utterance's hook on the loop, in
order, and a request to settle is answered after the detections before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np
import structlog

from kwsd.backends.base import FloatArray
from kwsd.detection import Detection
from kwsd.engine import Frontend
from kwsd.errors import ConfigError
from kwsd.features import SAMPLE_RATE
from kwsd.keywords import KeywordSet
from kwsd.spotter import KeywordSpotter
from kwsd.wyoming.decoding import (
    Accept,
    Close,
    Event,
    Found,
    Lost,
    Restart,
    Searched,
    Settle,
    Settled,
)
from kwsd.wyoming.shards import (
    ProcessShard,
    Shard,
    SpotterFactory,
    ThreadShard,
    WorkerLogging,
    usable_cores,
)

if TYPE_CHECKING:
    from kwsd.config.schema import LogSettings, WyomingSettings

log = structlog.get_logger("kwsd.wyoming")

DetectionsHook = Callable[[list[Detection]], None]

# Resolution of the hand-over calibration (samples at 16 kHz): 5 ms.
_CALIBRATION_STEP: Final = 80
FEATURE_FRAMES_PER_SECOND: Final = 100  # fbank frames are 10 ms apart
# Wait between attempts to start a decode process in place of one that died.
RESTART_DELAY_SECONDS: Final = 5.0


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


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    """Where a Wyoming server decodes.

    `workers=0` decodes in one thread of the server's process, with its spotter.
    `workers=N` starts N decode processes, each loading the model with `load`
    (`KeywordSpotter.loader()`): decoding then uses N cores, at the memory of one
    more model per process. `exact=False` lets int8 models batch too
    (`KeywordSpotter.create_batch`).
    """

    workers: int = 0
    load: SpotterFactory | None = None
    exact: bool = True
    logging: WorkerLogging = field(default_factory=WorkerLogging)

    @classmethod
    def from_settings(
        cls, wyoming: WyomingSettings, logging: LogSettings, spotter: KeywordSpotter
    ) -> DecodeOptions:
        """`wyoming.workers` for `spotter`'s model; a ConfigError when it cannot apply."""
        workers = wyoming.workers
        if workers == "auto":
            workers = usable_cores()
        if workers == 0:
            return cls()
        load = spotter.loader()
        if load is None:
            raise ConfigError(
                "wyoming.workers needs a model kwsd loads from files, not a custom backend; "
                "set wyoming.workers = 0"
            )
        return cls(
            workers=workers,
            load=load,
            logging=WorkerLogging(level=logging.level, fmt=logging.format),
        )


class DecodingError(RuntimeError):
    """An utterance could not be decoded (its decode process died, a model call failed)."""


class EngineStream:
    """A connection's stream, used from the event loop: buffer audio, hand over chunks.

    One utterance at a time: `restart` begins one (with its keywords and where its
    detections go), `feed` buffers its audio, `finish` ends it and waits for its last
    detections. Detections reach the utterance's hook on the event loop.
    """

    def __init__(self, engine: DecodeEngine, shard: Shard, number: int, name: str) -> None:
        self.engine = engine
        self.shard = shard
        self.number = number
        self.name = name
        self._buffer: list[FloatArray] = []
        self._fed = 0  # samples of this utterance so far (16 kHz)
        self._due = engine.first_chunk_samples  # hand over once _fed reaches this
        self._keywords: KeywordSet | None = None  # the list the shard's stream spots
        self._utterance = 0
        # Hooks of the utterances whose detections may still arrive (the previous
        # one's queued audio is searched after `restart`, for its own hook).
        self._hooks: dict[int, DetectionsHook] = {}
        self._error: str | None = None  # why the current utterance's decoding failed
        # Hand-overs so far, and how many of them the shard has searched: the
        # difference is this connection's backlog.
        self.handed = 0
        self.searched = 0

    def restart(self, keywords: KeywordSet, on_detections: DetectionsHook) -> None:
        """Begin an utterance spotting `keywords`; the previous one's queued audio is
        searched first (its detections go to its own hook), its buffered rest dropped.

        The keywords only travel to the shard when they are another list than the
        last utterance's, so a new utterance with the same list rebuilds nothing.
        """
        self._buffer.clear()
        self._fed = 0
        self._due = self.engine.first_chunk_samples
        changed = keywords is not self._keywords
        self._keywords = keywords
        self._error = None
        self._utterance += 1
        self._hooks[self._utterance] = on_detections
        self.shard.submit(
            Restart(self.number, self._utterance, self.name, keywords if changed else None)
        )

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
        """End the utterance: hand over the rest, pad it, and wait until the shard has
        delivered its last detections (they reach the hook before this returns).

        Raises DecodingError when the utterance's decoding failed.
        """
        self._hand_over()
        await self.engine.request(self, finish=True)
        if self._error is not None:
            raise DecodingError(self._error)

    async def settle(self) -> None:
        """Wait until the audio handed over so far is searched and its detections
        delivered (what is still buffered cannot complete a chunk yet).

        A failed decoding is not raised here: the utterance's `finish` reports it.
        """
        try:
            await self.engine.request(self, finish=False)
        except DecodingError as exc:
            self._error = self._error or str(exc)

    def close(self) -> None:
        """The connection is gone: drop the stream and whatever it had queued."""
        self._buffer.clear()
        self._hooks.clear()
        self.engine.forget(self)
        self.shard.submit(Close(self.number))

    def _hand_over(self) -> None:
        if not self._buffer:
            return
        samples = self._buffer[0] if len(self._buffer) == 1 else np.concatenate(self._buffer)
        self._buffer.clear()
        self.handed += 1
        self.shard.submit(Accept(self.number, samples, self.handed))

    # ------------------------------------------------------------ events

    def _found(self, utterance: int, detections: list[Detection]) -> None:
        for old in [u for u in self._hooks if u < utterance]:
            del self._hooks[old]  # no more audio of an older utterance is coming
        hook = self._hooks.get(utterance)
        if hook is None:
            return
        try:
            hook(detections)
        except Exception:
            log.exception("Wyoming detection hook failed", stream=self.name)

    def _lost(self, error: str) -> None:
        """The shard dropped this stream: the next utterance reopens it with its keywords."""
        self._keywords = None
        self._error = error
        self.searched = self.handed


class DecodeEngine:
    """The shards decoding the Wyoming connections, and the connections' streams."""

    def __init__(self, spotter: KeywordSpotter) -> None:
        """Use `DecodeEngine.start`, which starts the shards."""
        self.spotter = spotter
        self.first_chunk_samples, self.chunk_samples = chunk_boundaries(spotter)
        self.shards: list[Shard] = []
        self.streams: set[EngineStream] = set()  # the open connections' streams
        self._by_number: dict[int, EngineStream] = {}
        self._numbers = itertools.count(1)
        self._tokens = itertools.count(1)
        self._requests: dict[int, tuple[EngineStream, asyncio.Future[None]]] = {}
        self._replacing: set[asyncio.Task[None]] = set()
        self.options = DecodeOptions()
        self._closed = False

    @classmethod
    async def start(
        cls, spotter: KeywordSpotter, options: DecodeOptions | None = None
    ) -> DecodeEngine:
        """Start the shards `options` asks for (default: one thread using `spotter`)."""
        options = options or DecodeOptions()
        engine = await asyncio.to_thread(cls, spotter)
        engine.options = options
        if options.workers <= 0:
            engine.shards = [
                await ThreadShard.start(spotter, exact=options.exact, on_events=engine.dispatch)
            ]
            return engine
        if options.load is None:
            raise ValueError("decode processes need `load`, a picklable model loader")
        processes = [engine._process(str(n)) for n in range(1, options.workers + 1)]
        engine.shards = list(processes)
        started = await asyncio.gather(*(p.launch() for p in processes), return_exceptions=True)
        failures = [s for s in started if isinstance(s, BaseException)]
        if failures:
            await engine.close()
            raise failures[0]
        return engine

    def _process(self, name: str) -> ProcessShard:
        options = self.options
        assert options.load is not None  # start() checked
        return ProcessShard(
            name,
            options.load,
            exact=options.exact,
            on_events=self.dispatch,
            on_lost=self._shard_lost,
            logging=options.logging,
        )

    async def close(self) -> None:
        self._closed = True
        for task in list(self._replacing):
            task.cancel()
        await asyncio.gather(*self._replacing, return_exceptions=True)
        for shard in self.shards:
            await shard.close()
        for _stream, done in self._requests.values():
            if not done.done():
                done.set_exception(DecodingError("the Wyoming server is stopping"))
        self._requests.clear()

    def open(self, name: str | None = None) -> EngineStream:
        """A stream for one connection (call `restart` to begin its first utterance),
        on the shard with the fewest connections."""
        number = next(self._numbers)
        counts = {id(shard): 0 for shard in self.shards}
        for stream in self.streams:
            counts[id(stream.shard)] = counts.get(id(stream.shard), 0) + 1
        shard = min(self.shards, key=lambda s: counts[id(s)])
        stream = EngineStream(self, shard, number, name if name is not None else str(number))
        self.streams.add(stream)
        self._by_number[number] = stream
        return stream

    def forget(self, stream: EngineStream) -> None:
        self.streams.discard(stream)
        self._by_number.pop(stream.number, None)

    async def request(self, stream: EngineStream, *, finish: bool) -> None:
        """Ask `stream`'s shard to settle it (and finish its utterance) and wait."""
        if stream.shard.broken is not None:
            raise DecodingError(stream.shard.broken)
        token = next(self._tokens)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._requests[token] = (stream, done)
        stream.shard.submit(Settle(stream.number, token, finish))
        await done

    def dispatch(self, events: list[Event]) -> None:
        """On the loop: what a shard reports, to the streams and requests it concerns."""
        for event in events:
            if isinstance(event, Settled):
                _stream, done = self._requests.pop(event.token, (None, None))
                if done is not None and not done.done():
                    if event.error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(DecodingError(event.error))
                continue
            stream = self._by_number.get(event.stream)
            if stream is None:
                continue
            if isinstance(event, Found):
                stream._found(event.utterance, event.detections)
            elif isinstance(event, Searched):
                stream.searched = max(stream.searched, event.number)
            elif isinstance(event, Lost):
                stream._lost(event.error)

    def _shard_lost(self, shard: ProcessShard, reason: str) -> None:
        """On the loop: a decode process ended by itself. Its utterances fail, its
        connections carry on with a new process (from their next utterance)."""
        if self._closed or shard not in self.shards:
            return
        log.error(
            "Wyoming decode process stopped; starting a new one",
            worker=shard.name,
            pid=shard.pid,
            reason=reason,
        )
        self._fail_shard(shard, f"the decoding process stopped ({reason})")
        task = asyncio.get_running_loop().create_task(self._replace(shard, self._swap(shard)))
        self._replacing.add(task)
        task.add_done_callback(self._replacing.discard)

    def _fail_shard(self, shard: Shard, error: str) -> None:
        """The utterances on `shard` fail; its connections stay open."""
        for stream in [s for s in self.streams if s.shard is shard]:
            stream._lost(error)
        for token, (stream, done) in list(self._requests.items()):
            if stream.shard is shard:
                del self._requests[token]
                if not done.done():
                    done.set_exception(DecodingError(error))

    def _swap(self, old: ProcessShard) -> ProcessShard:
        """A new shard in `old`'s place, taking over its connections at once (before its
        process runs: what they send meanwhile waits in its queue, not a dead one's)."""
        shard = self._process(old.name)
        self.shards[self.shards.index(old)] = shard
        for stream in self.streams:
            if stream.shard is old:
                stream.shard = shard
        return shard

    async def _replace(self, lost: ProcessShard, shard: ProcessShard) -> None:
        """Start `shard`'s process in place of `lost`'s, retried while it cannot start."""
        with contextlib.suppress(Exception):
            await lost.close()
        while not self._closed:
            try:
                await shard.launch()
                return
            except Exception as exc:
                log.error("Wyoming decode process failed to start; retrying", error=str(exc))
                shard.broken = f"kwsd's decoding process cannot start: {exc}"
                self._fail_shard(shard, shard.broken)
                await asyncio.sleep(RESTART_DELAY_SECONDS)
                shard = self._swap(shard)
