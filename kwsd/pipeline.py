"""The daemon's dataflow: audio queue → engine worker thread → gate → detection queue → sink.

Only wiring lives here. Feature extraction, the encoder and the keyword search all run
on one dedicated worker thread (they share per-stream state, and the search is cheap
next to the encoder, so a second hop would only add latency), which keeps the event
loop free for MQTT, the health endpoint and signals. The worker hands each block's
detections back to the loop, which passes them through the detection gate (mute, then
refractory: kwsd/gate.py) and a bounded queue drained by the publishing task.

Keyword swaps are requested from the loop and picked up by the worker before its next
block, so a new list takes effect between chunks: no audio is skipped and the encoder
keeps its state. The gate sits after the search, so audio keeps flowing and the
heartbeat keeps beating while muted.

An observer (`BlockObserver`) sees every block's outcome with its timing on the loop,
so benchmarks and diagnostics watch the engine without reaching into it.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Final, Protocol, TypeVar

import structlog

from kwsd.audio.base import AudioBlock, FloatArray
from kwsd.audio.queue import BoundedAudioQueue
from kwsd.detection import Detection
from kwsd.gate import DetectionGate, Verdict
from kwsd.heartbeat import Heartbeat
from kwsd.keywords import KeywordSet
from kwsd.metrics import Metrics
from kwsd.vad import GateItem, Restart, SpeechGate, search_items

log = structlog.get_logger("kwsd.pipeline")

CHUNK_AUDIO_SECONDS: Final = 0.32  # audio per encoder chunk (8 frames of 40 ms)
DETECTION_QUEUE_SIZE: Final = 256
_SAMPLES_PER_FRAME: Final = 640  # 40 ms encoder frames at 16 kHz


class FrontendLike(Protocol):
    """`kwsd.engine.Frontend` (samples in, encoder chunks out), or the `SpeechGate` in
    front of it, whose output also marks where the encoder restarted (`Restart`)."""

    def accept(self, samples: FloatArray) -> Sequence[GateItem]: ...

    def flush(self) -> Sequence[GateItem]: ...

    def reset(self) -> None: ...


class SearchLike(Protocol):
    """`kwsd.search.KeywordSearch`: encoder frames in, detections out."""

    frame: int

    def step(self, enc: FloatArray) -> list[Detection]: ...

    def set_keywords(self, keywords: KeywordSet) -> None: ...

    def reset(self) -> None: ...


DetectionSink = Callable[[Detection], None]
_T = TypeVar("_T")


class _EngineThread:
    """One long-lived worker thread that runs the engine's jobs in order.

    A block is handed over ten times a second. `loop.run_in_executor` costs about
    twice the CPU of this hand-off (a concurrent future wrapped in an asyncio future,
    the executor's work queue and its idle-thread bookkeeping, per block), which at
    the synthetic encoder's cost was a sixth of the daemon's whole CPU time. Here a
    job is one `SimpleQueue.put`, and its result one `call_soon_threadsafe`.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._stopped = False

    async def run(self, job: Callable[[], _T]) -> _T:
        """Run `job` on the worker thread; cancelling the wait leaves it to finish alone."""
        if self._stopped:
            raise RuntimeError("the pipeline's engine thread has stopped")
        if not self._thread.is_alive():
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()

        def execute() -> None:
            if future.cancelled():
                return
            try:
                value = job()
            except BaseException as exc:  # delivered to the awaiting task, not lost here
                loop.call_soon_threadsafe(_fail, future, exc)
            else:
                loop.call_soon_threadsafe(_succeed, future, value)

        self._jobs.put(execute)
        return await future

    def stop(self) -> None:
        """Let the thread end after the job it is running (if any)."""
        self._stopped = True
        self._jobs.put(None)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()


def _succeed(future: asyncio.Future[_T], value: _T) -> None:
    if not future.done():  # the waiting task may have been cancelled meanwhile
        future.set_result(value)


def _fail(future: asyncio.Future[_T], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


@dataclass(frozen=True, slots=True)
class BlockReport:
    """What the engine made of one captured block, with its timing."""

    block: AudioBlock | None  # None: the tail flushed at the end of the input
    found: tuple[Detection, ...]  # what the search matched, before the gate
    published: tuple[Detection, ...]  # what passed the gate and went on to the sink
    compute_seconds: float  # wall time the worker spent on the block
    cpu_seconds: float  # CPU time of the worker thread on the block
    finished_at: float  # time.monotonic() when the worker was done with it


BlockObserver = Callable[[BlockReport], None]


@dataclass(frozen=True, slots=True)
class _Work:
    """A block's result as the worker thread hands it back to the loop."""

    found: list[Detection]
    compute_seconds: float
    cpu_seconds: float
    finished_at: float


@dataclass(slots=True)
class PipelineStats:
    """Counters for logs and tests, readable anywhere.

    The worker thread counts blocks and chunks; the loop, where the gate runs, counts
    the detections.
    """

    blocks: int = 0
    chunks: int = 0
    detections: int = 0
    muted_dropped: int = 0
    refractory_dropped: int = 0
    queue_dropped: int = 0
    keyword_versions: list[int] = field(default_factory=list)


class Pipeline:
    """Runs one audio stream through the engine and hands gated detections to a sink.

    `gate` decides what is published (default: no mute, 1 s refractory); `observer`,
    if given, is called on the loop after every block and must return quickly.
    """

    def __init__(
        self,
        frontend: FrontendLike,
        search: SearchLike,
        *,
        heartbeat: Heartbeat,
        gate: DetectionGate | None = None,
        metrics: Metrics | None = None,
        observer: BlockObserver | None = None,
    ) -> None:
        self.frontend = frontend
        self.search = search
        self.heartbeat = heartbeat
        self.gate = gate if gate is not None else DetectionGate()
        self.metrics = metrics
        self.observer = observer
        self.stats = PipelineStats()
        self._pending: KeywordSet | None = None
        self._pending_lock = threading.Lock()
        self._compute_s = 0.0  # engine time not yet attributed to a chunk
        self._reported_drop = 0.0  # seconds of dropped audio already in the metrics
        self._engine = _EngineThread("kwsd-engine")
        self._detections: asyncio.Queue[Detection | None] = asyncio.Queue(DETECTION_QUEUE_SIZE)

    # ----------------------------------------------------------------- control

    def set_keywords(self, keywords: KeywordSet) -> None:
        """Use `keywords` from the next block on (any thread; the latest request wins)."""
        with self._pending_lock:
            self._pending = keywords

    async def run(self, audio: BoundedAudioQueue, sink: DetectionSink) -> None:
        """Process blocks until the queue is closed and drained, then flush the tail.

        Returns once every detection reached `sink`. Cancelling stops at once (the
        block in the worker finishes in the background; its detections are dropped).
        """
        publisher = asyncio.create_task(self._publish(sink), name="kwsd-publish")
        try:
            await self._infer(audio)
            await self._detections.put(None)
            await publisher
        finally:
            if not publisher.done():
                publisher.cancel()
                await asyncio.gather(publisher, return_exceptions=True)
            self._engine.stop()

    # ------------------------------------------------------------------ stages

    async def _infer(self, audio: BoundedAudioQueue) -> None:
        while True:
            block = await audio.get()
            if block is None:
                work = await self._engine.run(self._finish)
                self._deliver(None, work)
                return
            work = await self._engine.run(partial(self._process, block))
            self._deliver(block, work)
            if self.metrics is not None:
                self.metrics.record_dropped(audio.dropped_seconds - self._reported_drop)
                self._reported_drop = audio.dropped_seconds

    def _deliver(self, block: AudioBlock | None, work: _Work) -> None:
        published = [det for det in work.found if self._admit(det)]
        self._enqueue(published)
        if self.observer is not None:
            report = BlockReport(
                block,
                tuple(work.found),
                tuple(published),
                work.compute_seconds,
                work.cpu_seconds,
                work.finished_at,
            )
            try:
                self.observer(report)
            except Exception:
                log.exception("pipeline observer failed")

    def _admit(self, det: Detection) -> bool:
        verdict = self.gate.check(det)
        if verdict is Verdict.MUTED:
            self.stats.muted_dropped += 1
            log.info("detection while muted: not published", keyword=det.keyword, start=det.start)
            return False
        if verdict is Verdict.REPEAT:
            self.stats.refractory_dropped += 1
            log.debug("repeat within the refractory period dropped", keyword=det.keyword)
            return False
        self.stats.detections += 1
        return True

    def _enqueue(self, published: list[Detection]) -> None:
        for det in published:
            try:
                self._detections.put_nowait(det)
            except asyncio.QueueFull:
                # The sinks never block, so this means the loop itself is starved.
                self._detections.get_nowait()
                self._detections.put_nowait(det)
                self.stats.queue_dropped += 1
                log.warning("detection queue full: dropped the oldest detection")

    async def _publish(self, sink: DetectionSink) -> None:
        while (det := await self._detections.get()) is not None:
            try:
                sink(det)
            except Exception:
                log.exception("detection sink failed", keyword=det.keyword)

    # ------------------------------------------------------- worker thread only

    def _process(self, block: AudioBlock) -> _Work:
        started, cpu = time.perf_counter(), time.thread_time()
        self._apply_pending()
        if block.discontinuity:
            self._restart_at(block)
        chunks = self.frontend.accept(block.samples)
        found = self._search(chunks, started)
        if not chunks and isinstance(self.frontend, SpeechGate) and not self.frontend.is_open:
            # The voice gate judged the block silent: audio flows while the encoder rests,
            # and the detector's moment of work is not the next chunk's compute time.
            self._compute_s = 0.0
            self.heartbeat.beat()
        self.stats.blocks += 1
        return self._work(found, started, cpu)

    def _finish(self) -> _Work:
        started, cpu = time.perf_counter(), time.thread_time()
        self._apply_pending()
        # Padding at shutdown is not captured audio: it must not count as a heartbeat,
        # or a daemon that never heard anything would report READY while stopping.
        found = self._search(self.frontend.flush(), started, beat=False)
        return self._work(found, started, cpu)

    @staticmethod
    def _work(found: list[Detection], started: float, cpu: float) -> _Work:
        return _Work(
            found,
            compute_seconds=time.perf_counter() - started,
            cpu_seconds=time.thread_time() - cpu,
            finished_at=time.monotonic(),
        )

    def _apply_pending(self) -> None:
        with self._pending_lock:
            keywords, self._pending = self._pending, None
        if keywords is not None:
            self.search.set_keywords(keywords)
            self.stats.keyword_versions.append(keywords.version)
            log.info(
                "keyword list swapped in",
                version=keywords.version,
                keywords=keywords.displays_for_log(),
                at_seconds=round(self.search.frame * 0.04, 2),
            )

    def _restart_at(self, block: AudioBlock) -> None:
        """Audio before `block` was lost: no keyword may span the gap; keep stream time."""
        self.frontend.reset()
        self.search.reset()
        self.search.frame = block.start_sample // _SAMPLES_PER_FRAME
        log.info("audio gap: engine restarted", at_seconds=round(block.start, 2))

    def _search(
        self, items: Sequence[GateItem], started: float, *, beat: bool = True
    ) -> list[Detection]:
        found = search_items(items, self.search)
        self._compute_s += time.perf_counter() - started
        chunks = [item for item in items if not isinstance(item, Restart)]
        if chunks:
            per_chunk = self._compute_s / len(chunks)
            self._compute_s = 0.0
            for _ in chunks:
                self.stats.chunks += 1
                if self.metrics is not None:
                    self.metrics.record_chunk(per_chunk, CHUNK_AUDIO_SECONDS)
                if beat:
                    self.heartbeat.beat()
        return found
