"""The Wyoming server's decoding, as messages: what a decode worker is told and tells back.

The event loop never touches a `StreamBatch`. It sends *commands* (begin an utterance,
here is a chunk of audio, tell me when this stream is searched, the connection is
gone) to a `BatchWorker`, and the worker answers with *events* (detections, how far a
stream is searched, a settled request). Commands and events are small picklable
dataclasses, so the same worker runs in a thread of the server's process or in a
process of its own (`kwsd.wyoming.shards`): the messages do not change, only how
they travel.

Streams are known by a number the engine gives them; the worker's `BatchStream`s
never leave the worker.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import structlog

from kwsd.backends.base import FloatArray
from kwsd.batch import BatchStream, StreamBatch
from kwsd.detection import Detection
from kwsd.keywords import KeywordSet

log = structlog.get_logger("kwsd.wyoming")

# Streams reach an encoder chunk at different moments, so a worker that steps as soon
# as one is ready encodes mostly one stream per call, the dearest way (the Zipformer2
# encoder: about 45 ms CPU per audio second alone, 24 at eight streams per call).
# With many active streams a ready chunk may wait this long for others to join it...
GATHER_SECONDS: Final = 0.08
# ...unless this share of the active streams (1/4: what 80 ms of a 320 ms chunk
# gathers when streams are spread evenly) is ready already. With four active streams
# or fewer it never waits.
GATHER_SHARE: Final = 4
# A stream counts as active while its last audio is at most this old.
ACTIVE_SECONDS: Final = 1.0


# ---------------------------------------------------------------- events (worker → loop)


@dataclass(frozen=True, slots=True)
class Found:
    """Detections of one stream's utterance, in the order the audio produced them."""

    stream: int
    utterance: int
    detections: list[Detection]


@dataclass(frozen=True, slots=True)
class Searched:
    """Every chunk of `stream` handed over up to hand-over number `number` is searched."""

    stream: int
    number: int


@dataclass(frozen=True, slots=True)
class Settled:
    """The request `token` (a `Settle`) is done: its stream's queued audio is searched
    and its detections were sent before this. `error` says why it failed instead."""

    token: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Lost:
    """The worker dropped `stream` (a failed step): its next utterance must bring its
    keywords again, and its current one ends in `error`."""

    stream: int
    error: str


Event = Found | Searched | Settled | Lost


# ---------------------------------------------------------------- commands (loop → worker)


@dataclass(frozen=True, slots=True)
class Restart:
    """Begin utterance `utterance` of `stream` (opening the stream the first time).

    `keywords` is None when the utterance spots the same list as the previous one, so
    an unchanged list costs neither pickling nor a graph lookup.
    """

    stream: int
    utterance: int
    name: str
    keywords: KeywordSet | None

    def apply(self, worker: BatchWorker) -> None:
        worker.restart(self)


@dataclass(frozen=True, slots=True)
class Accept:
    """Audio (16 kHz float) for `stream`: the engine's hand-over number `number`."""

    stream: int
    samples: FloatArray
    number: int

    def apply(self, worker: BatchWorker) -> None:
        worker.accept(self)


@dataclass(frozen=True, slots=True)
class Settle:
    """Answer `token` once `stream` has nothing queued; with `finish`, end its
    utterance first (the tail and padding are queued, so its last words complete)."""

    stream: int
    token: int
    finish: bool

    def apply(self, worker: BatchWorker) -> None:
        worker.settle(self)


@dataclass(frozen=True, slots=True)
class Close:
    """The connection is gone: drop the stream and what it had queued."""

    stream: int

    def apply(self, worker: BatchWorker) -> None:
        worker.close(self.stream)


Command = Restart | Accept | Settle | Close


# ---------------------------------------------------------------- the worker


@dataclass(slots=True)
class _WorkerStream:
    batch_stream: BatchStream
    utterance: int
    accepted: int = 0  # the last hand-over applied
    awaiting: list[int] = field(default_factory=list)  # Settle tokens to answer
    finishing: bool = False  # its utterance ended; the client waits for the answer
    heard: float = -math.inf  # when its last audio arrived (time.monotonic)
    ready_since: float = math.inf  # when its oldest queued chunk became ready


class BatchWorker:
    """Applies commands to one `StreamBatch` and steps it; collects the events.

    Not thread-safe: one thread owns it (the engine's worker thread, or the main
    thread of a decode process). `take_events` hands over what happened since the
    last call, in order.
    """

    def __init__(self, batch: StreamBatch, clock: Callable[[], float] = time.monotonic) -> None:
        self.batch = batch
        self.clock = clock
        self._streams: dict[int, _WorkerStream] = {}
        self._by_batch_stream: dict[BatchStream, int] = {}
        self._events: list[Event] = []

    def wait_before_step(self) -> float | None:
        """Seconds to let ready chunks wait for other streams' (0: step now), or None
        when no stream has a chunk.

        A chunk someone waits for (the end of an utterance, a ping, a client held back
        for being ahead) never waits; with few active streams, or an encoder that runs
        one stream per call anyway (int8), nothing waits.
        """
        ready = [state for state in self._streams.values() if state.batch_stream.ready]
        if not ready:
            return None
        if not self.batch.plan.encoder or any(state.awaiting for state in ready):
            return 0.0  # nothing to gain from a bigger batch, or someone waits
        now = self.clock()
        active = sum(1 for state in self._streams.values() if now - state.heard <= ACTIVE_SECONDS)
        if len(ready) * GATHER_SHARE >= active:
            return 0.0
        oldest = min(state.ready_since for state in ready)
        return max(0.0, oldest + GATHER_SECONDS - now)

    def take_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------ commands

    def restart(self, command: Restart) -> None:
        state = self._streams.get(command.stream)
        if state is None:
            if command.keywords is None:
                # A failed step took the stream away before the loop heard of it: this
                # utterance fails too, and the next one brings its keywords.
                self._events.append(Lost(command.stream, "the stream's decoding failed"))
                return
            batch_stream = self.batch.add_stream(command.keywords, name=command.name)
            self._streams[command.stream] = _WorkerStream(batch_stream, command.utterance)
            self._by_batch_stream[batch_stream] = command.stream
            return
        self.drain(state.batch_stream)  # the old utterance's queued chunks still count
        state.batch_stream.reset()
        if command.keywords is not None:
            state.batch_stream.set_keywords(command.keywords)
        state.utterance = command.utterance

    def accept(self, command: Accept) -> None:
        state = self._streams.get(command.stream)
        if state is None:
            self._events.append(Searched(command.stream, command.number))
            return
        state.accepted = command.number
        state.heard = self.clock()
        was_ready = state.batch_stream.ready
        if not state.batch_stream.accept(command.samples):
            self._events.append(Searched(command.stream, command.number))
        elif not was_ready:
            state.ready_since = state.heard

    def settle(self, command: Settle) -> None:
        state = self._streams.get(command.stream)
        if state is None:
            self._events.append(Settled(command.token))
            return
        if command.finish:
            state.batch_stream.finish()
            state.finishing = True
        state.awaiting.append(command.token)
        self._settle_finished()

    def close(self, stream: int) -> None:
        state = self._streams.pop(stream, None)
        if state is None:
            return
        del self._by_batch_stream[state.batch_stream]
        self._events.extend(Settled(token) for token in state.awaiting)
        state.batch_stream.close()

    # ------------------------------------------------------------ stepping

    def drain(self, batch_stream: BatchStream) -> None:
        """Step the batch until `batch_stream` has no chunk queued."""
        while batch_stream.ready and self.step():
            pass

    def step(self) -> bool:
        """One chunk of every stream that has one; False when none had.

        While an utterance's end is awaited (audio-stop), only the finishing streams
        step: the answer waits for its own tail (a few chunks), not for everyone's.
        A client that is merely ahead gets no such priority.
        """
        stepped = [s for s in self.batch if s.ready]
        if not stepped:
            return False
        finishing = [
            state.batch_stream
            for state in self._streams.values()
            if state.finishing and state.batch_stream.ready
        ]
        if finishing:
            stepped = finishing
        try:
            results = self.batch.step(stepped)
        except Exception as exc:
            # A failed step fails only the streams in it: they leave the batch, and
            # their connections get an error at audio-stop instead of a hang.
            log.exception("Wyoming decode step failed", streams=[s.name for s in stepped])
            for batch_stream in stepped:
                self._fail(batch_stream, f"decoding failed: {exc}")
            return True
        for batch_stream, found in results.items():
            number = self._by_batch_stream.get(batch_stream)
            if number is None:
                continue
            state = self._streams[number]
            if found:
                self._events.append(Found(number, state.utterance, found))
            if not batch_stream.ready:
                state.ready_since = math.inf
                self._events.append(Searched(number, state.accepted))
        self._settle_finished()
        return True

    def _settle_finished(self) -> None:
        for number, state in self._streams.items():
            if state.awaiting and not state.batch_stream.ready:
                self._events.append(Searched(number, state.accepted))
                self._events.extend(Settled(token) for token in state.awaiting)
                state.awaiting.clear()
                state.finishing = False

    def _fail(self, batch_stream: BatchStream, error: str) -> None:
        number = self._by_batch_stream.pop(batch_stream, None)
        batch_stream.close()
        if number is None:
            return
        state = self._streams.pop(number)
        self._events.append(Searched(number, state.accepted))
        self._events.append(Lost(number, error))
        self._events.extend(Settled(token, error) for token in state.awaiting)
