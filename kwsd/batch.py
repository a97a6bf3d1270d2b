"""Many streams through one model at once: batched encoder and joiner calls.

A server with one stream per satellite spends most of its time in the encoder, whose
cost per stream falls when streams are encoded together (the Zipformer2 encoder: about
7 ms per 320 ms chunk alone, 4 ms per stream at batch 4), and in per-call overhead of
the joiner, which runs once per 40 ms frame. `StreamBatch` gathers the streams that
have a chunk ready, encodes them in one call, and runs the decoder and the joiner once
per frame for the paths of all of them. Everything a stream owns (its audio position,
encoder state, search paths, keyword list) stays its own, so streams join, leave,
reset and change keywords independently.

A stream's detections are the ones it would get alone. Batching never changes the
numbers a stream sees beyond float rounding: before batching a part, the batch checks
that the part gives each stream what it gives it alone (`BatchPlan`). Models with
dynamic int8 quantization do not: ONNX Runtime quantizes a whole batch with one scale,
so one stream's loudness would shift another stream's results. Those parts run one
stream per call, unless the caller accepts that with `exact=False`. The fp32 model
files batch exactly.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from kwsd.backends.base import Backend, BatchBackend, FloatArray
from kwsd.detection import Detection
from kwsd.engine import Frontend, StreamCore
from kwsd.features import SAMPLE_RATE
from kwsd.search import KeywordSearch
from kwsd.search.beam import log_softmax

if TYPE_CHECKING:
    from kwsd.spotter import KeywordsLike, KeywordSpotter

# Largest difference, relative to the output's magnitude, that still counts as float
# rounding when a part's batched output is compared with its one-stream output.
# Reordered float32 sums differ by about 1e-6; dynamic int8 quantization by about 1e-1.
BATCH_TOLERANCE = 1e-4


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Which parts of a model a batch runs for several streams in one call."""

    encoder: bool  # all ready streams' chunks in one encoder call
    joiner: bool  # all paths of all streams in one joiner call per frame
    encoder_exact: bool  # batching the encoder leaves every stream's output unchanged
    joiner_exact: bool  # the same for the joiner

    @classmethod
    def probe(cls, backend: Backend, *, exact: bool = True) -> BatchPlan:
        """Try each part batched and alone on fixed inputs, and batch what matches.

        `exact=False` batches every part that can take a batch, matching or not.
        """
        can_encode = isinstance(backend, BatchBackend) and backend.can_batch
        encoder_exact = (
            isinstance(backend, BatchBackend)
            and can_encode
            and _encoder_is_row_independent(backend)
        )
        joiner_exact = _joiner_is_row_independent(backend)
        return cls(
            encoder=can_encode and (encoder_exact or not exact),
            joiner=joiner_exact or not exact,
            encoder_exact=encoder_exact,
            joiner_exact=joiner_exact,
        )


def _close(batched: npt.ArrayLike, alone: npt.ArrayLike) -> bool:
    got, want = np.asarray(batched), np.asarray(alone)
    if got.shape != want.shape:
        return False
    if want.dtype.kind != "f":
        return bool(np.array_equal(got, want))
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    scale = max(1.0, float(np.abs(want64).max(initial=0.0)))
    return float(np.abs(got64 - want64).max(initial=0.0)) <= BATCH_TOLERANCE * scale


def _probe_windows(backend: Backend) -> list[FloatArray]:
    """Two feature windows of very different level: silence and loud, varied "speech"."""
    shape = (backend.chunk.frames_in, 80)
    quiet = np.full(shape, -15.0, np.float32)
    loud = np.random.default_rng(20240101).normal(2.0, 3.0, shape).astype(np.float32)
    return [quiet, loud]


def _encoder_is_row_independent(backend: BatchBackend) -> bool:
    windows = _probe_windows(backend)
    batched, batched_states = backend.run_batch(
        np.stack(windows), [backend.init_state() for _ in windows]
    )
    for i, window in enumerate(windows):
        alone, alone_state = backend.run_chunk(window, backend.init_state())
        if not _close(batched[i], alone):
            return False
        for name, value in alone_state.items():
            if not _close(batched_states[i][name], value):
                return False
    return True


def _joiner_is_row_independent(backend: Backend) -> bool:
    rng = np.random.default_rng(20240102)
    dim = backend.joiner_dim
    # Two "streams": 2 paths on a quiet frame, 3 on a loud one.
    enc = np.concatenate(
        [np.repeat(rng.normal(0, 0.1, (1, dim)), 2, 0), np.repeat(rng.normal(0, 3, (1, dim)), 3, 0)]
    ).astype(np.float32)
    dec = rng.normal(0, 1, (5, dim)).astype(np.float32)
    batched = backend.join(enc, dec)
    alone = np.concatenate([backend.join(enc[:2], dec[:2]), backend.join(enc[2:], dec[2:])])
    return _close(batched, alone)


class BatchStream(StreamCore):
    """One stream of a `StreamBatch`: audio in with `accept`, detections from the batch.

    `accept` computes the stream's features at once (cheap) and queues its encoder
    windows; the encoder and the search run in `StreamBatch.step`, which returns the
    detections per stream. Create streams with `StreamBatch.add_stream`.
    """

    def __init__(
        self,
        batch: StreamBatch,
        frontend: Frontend,
        search: KeywordSearch,
        sample_rate: int,
        name: str,
    ) -> None:
        super().__init__(batch.spotter, frontend, search, sample_rate)
        self.batch = batch
        self.name = name
        self._windows: deque[FloatArray] = deque()
        self._finishing = False  # finish() called; the tail windows are queued
        self._closed = False

    def __repr__(self) -> str:
        return f"<BatchStream {self.name!r} ready={self.ready}>"

    @property
    def ready(self) -> int:
        """Encoder chunks waiting for the next `step`s."""
        return len(self._windows)

    @property
    def finished(self) -> bool:
        """`finish` was called and its last chunk has been searched."""
        return self._finishing and not self._windows

    @property
    def closed(self) -> bool:
        """Removed from its batch (`close`)."""
        return self._closed

    def accept(self, samples: npt.ArrayLike) -> int:
        """Queue mono samples at `sample_rate` (int16, or float in [-1, 1]; any length).

        Returns how many encoder chunks are now waiting; `StreamBatch.step` searches them.
        """
        self._check_open()
        if self._finishing:
            raise RuntimeError(f"stream {self.name!r} is finished; call reset() to reuse it")
        self._windows.extend(self.frontend.windows(self._input.convert(samples)))
        return len(self._windows)

    def finish(self) -> int:
        """End of input: queue the tail, padded with silence so the last words complete.

        The detections it brings come out of the next `step`s. `accept` raises until
        `reset`; a second `finish` does nothing.
        """
        self._check_open()
        if not self._finishing:
            self._finishing = True
            tail = self._input.flush()
            if tail.size:
                self._windows.extend(self.frontend.windows(tail))
            self._windows.extend(self.frontend.flush_windows())
        return len(self._windows)

    def reset(self) -> None:
        """Start over as a new stream: queued audio, partial matches and time are dropped.

        The keyword list stays (including one passed to `set_keywords` just before).
        """
        self._check_open()
        self._windows.clear()
        self._restart()
        self._finishing = False

    def close(self) -> None:
        """Leave the batch; queued audio is dropped. Closing twice is harmless."""
        self.batch.remove_stream(self)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"stream {self.name!r} was closed (removed from its batch)")


class StreamBatch:
    """Many audio streams through one model, encoded and searched together.

        batch = spotter.create_batch()
        kitchen = batch.add_stream(name="kitchen")
        porch = batch.add_stream(["open the garage"], sample_rate=48000, name="porch")
        kitchen.accept(block_a)                    # queue audio; cheap
        porch.accept(block_b)
        for stream, found in batch.drain().items():  # encode + search what is ready
            for det in found:
                print(stream.name, det.keyword, det.start)
        porch.finish(); batch.drain()              # end of an utterance: its tail
        porch.close()                              # leave the batch

    `step()` runs one encoder chunk (320 ms of audio) for every stream that has one
    queued, in one batched encoder call, then searches the chunk's frames with one
    decoder and one joiner call per frame for all of those streams. `drain()` repeats
    `step()` until no chunk is queued. A stream's detections are those it would get
    alone, with times in seconds since the stream started (or was last reset).

    Streams with equal keyword lists share the compiled graph, and all streams share
    the spotter's decoder-output cache. Use a batch from one thread at a time (a
    server's worker thread); `BatchStream.set_keywords` alone may come from any thread.
    """

    def __init__(self, spotter: KeywordSpotter, plan: BatchPlan, *, threads: int = 1) -> None:
        """Use `KeywordSpotter.create_batch`, which checks the model once for `plan`."""
        self.spotter = spotter
        self.backend = spotter.backend
        self.plan = plan
        self.threads = max(1, threads)
        self._streams: dict[BatchStream, None] = {}  # insertion-ordered set
        self._next_id = 0
        # The encoder calls of one step, split over `threads` threads: ONNX Runtime
        # releases the GIL while it computes, so they run on as many cores.
        self._pool = (
            ThreadPoolExecutor(self.threads - 1, thread_name_prefix="kwsd-encode")
            if self.threads > 1
            else None
        )

    def __len__(self) -> int:
        return len(self._streams)

    def __iter__(self) -> Iterator[BatchStream]:
        return iter(list(self._streams))

    @property
    def ready(self) -> int:
        """How many streams have a chunk queued (the size of the next `step`)."""
        return sum(1 for s in self._streams if s.ready)

    def add_stream(
        self,
        keywords: KeywordsLike | None = None,
        sample_rate: int = SAMPLE_RATE,
        *,
        name: str | None = None,
    ) -> BatchStream:
        """A new stream spotting `keywords` (default: the spotter's) in audio at
        `sample_rate` Hz. `name` labels it in logs and `repr` (default: its number)."""
        search = self.spotter.create_search(keywords)
        stream_id = self._next_id
        self._next_id += 1
        stream = BatchStream(
            self,
            Frontend(self.backend),
            search,
            sample_rate,
            name if name is not None else str(stream_id),
        )
        self._streams[stream] = None
        return stream

    def remove_stream(self, stream: BatchStream) -> None:
        """Take `stream` out of the batch (same as `stream.close()`)."""
        if stream in self._streams:
            del self._streams[stream]
            stream._windows.clear()
            stream._closed = True

    def step(self, only: Iterable[BatchStream] | None = None) -> dict[BatchStream, list[Detection]]:
        """Search one queued chunk of every stream that has one (of `only` those).

        Returns an entry (maybe an empty list) for each stream that was stepped.
        """
        chosen = self._streams if only is None else only
        streams = [s for s in chosen if s._windows and s in self._streams]
        if not streams:
            return {}
        encoded = self._encode(streams, [s._windows.popleft() for s in streams])
        return self._search(streams, encoded)

    def drain(self) -> dict[BatchStream, list[Detection]]:
        """`step()` until no stream has a chunk queued; detections merged per stream."""
        found: dict[BatchStream, list[Detection]] = {}
        while results := self.step():
            for stream, detections in results.items():
                found.setdefault(stream, []).extend(detections)
        return found

    # ------------------------------------------------------------------ stages

    def close(self) -> None:
        """Stop the encoder threads (a batch with `threads > 1`); the streams stay."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _encode(self, streams: list[BatchStream], windows: list[FloatArray]) -> list[FloatArray]:
        groups = min(self.threads, len(streams))
        if groups <= 1 or self._pool is None:
            return self._encode_group(streams, windows)
        # Contiguous, nearly equal groups: each a batched call (or one call per stream).
        bounds = [len(streams) * g // groups for g in range(groups + 1)]
        parts = [(streams[a:b], windows[a:b]) for a, b in pairwise(bounds)]
        later = [self._pool.submit(self._encode_group, *part) for part in parts[1:]]
        encoded = self._encode_group(*parts[0])
        for future in later:
            encoded += future.result()
        return encoded

    def _encode_group(
        self, streams: list[BatchStream], windows: list[FloatArray]
    ) -> list[FloatArray]:
        backend = self.backend
        if self.plan.encoder and len(streams) > 1 and isinstance(backend, BatchBackend):
            enc, states = backend.run_batch(np.stack(windows), [s.frontend.state for s in streams])
            for stream, state in zip(streams, states, strict=True):
                stream.frontend.state = state
            return list(enc)
        return [s.frontend.encode(w) for s, w in zip(streams, windows, strict=True)]

    def _search(
        self, streams: list[BatchStream], encoded: list[FloatArray]
    ) -> dict[BatchStream, list[Detection]]:
        found: dict[BatchStream, list[Detection]] = {s: [] for s in streams}
        # A replayed encoder may return fewer frames for a stream near its end.
        for t in range(max(len(e) for e in encoded)):
            active = [(s, e[t]) for s, e in zip(streams, encoded, strict=True) if len(e) > t]
            contexts = [s.search.begin_frame() for s, _ in active]
            sizes = [len(c) for c in contexts]
            dec = np.concatenate(
                [s.search.decoder_rows(c) for (s, _), c in zip(active, contexts, strict=True)]
            )
            enc = np.repeat(np.stack([row for _, row in active]), sizes, axis=0)
            log_probs = log_softmax(self._join(enc, dec, sizes))
            start = 0
            for (stream, _), size in zip(active, sizes, strict=True):
                det = stream.search.end_frame(log_probs[start : start + size])
                start += size
                if det is not None:
                    found[stream].append(det)
        return found

    def _join(self, enc: FloatArray, dec: FloatArray, sizes: list[int]) -> FloatArray:
        join: Callable[[FloatArray, FloatArray], FloatArray] = self.backend.join
        if self.plan.joiner or len(sizes) == 1:
            return join(enc, dec)
        bounds = np.cumsum([0, *sizes])
        return np.concatenate([join(enc[a:b], dec[a:b]) for a, b in pairwise(bounds)])
