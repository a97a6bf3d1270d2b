"""Decoding every manifest file, in parallel, exactly as `kwsd detect` would.

Each file is its own `KeywordStream`, fed in 10 ms blocks like a microphone, so the
time a detection is reported (and hence the latency) is what a live user would see.
With `jobs > 1` the files are spread over a process pool in which every worker loads
the model and compiles the keywords once; ONNX Runtime sessions are not shared across
processes, and threads would fight over the GIL in the search.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass

from kwsd.audio.file import read_audio
from kwsd.backends.base import FloatArray
from kwsd.errors import AudioError
from kwsd.evaluate.manifest import Utterance
from kwsd.evaluate.metrics import FileResult, Spotted, Target
from kwsd.evaluate.sweep import SAMPLE_RATE, Grid, SweepFile, at_point, encode, search
from kwsd.keywords import KeywordSet, KeywordSpec
from kwsd.spotter import KeywordSpotter
from kwsd.vad import VadOptions

BLOCK_SECONDS = 0.01

# Loads the model: `KeywordSpotter.loader()`, which pickles, so every pool worker
# loads its own copy.
SpotterFactory = Callable[[], KeywordSpotter]


@dataclass(frozen=True)
class RunConfig:
    """Everything a worker needs to decode files; picklable for the process pool."""

    make_spotter: SpotterFactory
    specs: tuple[KeywordSpec, ...]
    grid: Grid | None = None  # set for --sweep
    vad: VadOptions | None = None  # the voice-activity gate (audio.vad), as `kwsd run` has it


def load_audio(utt: Utterance) -> FloatArray:
    """The file as `kwsd detect` reads it; the error names the manifest entry too."""
    try:
        return read_audio(utt.path)
    except AudioError as exc:
        raise AudioError(f"{exc} (manifest entry {utt.relpath})") from None


class Worker:
    """The model and compiled keywords of one process, reused for every file it gets."""

    def __init__(self, config: RunConfig, spotter: KeywordSpotter | None = None) -> None:
        self.config = config
        self.spotter = spotter if spotter is not None else config.make_spotter()
        self.keywords = self.spotter.compile(config.specs)
        self.grid_keywords: list[KeywordSet] = []
        if config.grid is not None:
            # at_point sets every keyword's boost and threshold: no default applies.
            self.grid_keywords = [
                self.spotter.compile(at_point(config.specs, b, t)) for b, t in config.grid.points()
            ]
        self.block = round(BLOCK_SECONDS * SAMPLE_RATE)

    def targets(self) -> list[Target]:
        return targets_of(self.keywords)

    def run(self, utt: Utterance) -> FileResult:
        """Stream the file through a fresh stream, as `kwsd detect` does."""
        samples = load_audio(utt)
        stream = self.spotter.create_stream(self.keywords, vad=self.config.vad)
        found: list[Spotted] = []
        fed = 0
        for start in range(0, len(samples), self.block):
            piece = samples[start : start + self.block]
            fed += len(piece)
            for d in stream.accept(piece):
                found.append(
                    Spotted(d.keyword, d.phrase, d.start, d.end, d.score, fed / SAMPLE_RATE)
                )
        for d in stream.finish():
            found.append(Spotted(d.keyword, d.phrase, d.start, d.end, d.score, fed / SAMPLE_RATE))
        return FileResult(utt.relpath, fed / SAMPLE_RATE, tuple(found))

    def sweep(self, utt: Utterance) -> SweepFile:
        """Encode once, then search the cached frames at the base and every grid point."""
        encoded = encode(self.spotter.backend, load_audio(utt), self.block)

        def result(keywords: KeywordSet) -> FileResult:
            return FileResult(
                utt.relpath, encoded.duration, search(self.spotter, keywords, encoded)
            )

        return SweepFile(
            base=result(self.keywords), grid=tuple(result(ks) for ks in self.grid_keywords)
        )


def targets_of(keywords: KeywordSet) -> list[Target]:
    """One target per display name (alternate tokenisations share a display)."""
    seen: dict[str, Target] = {}
    for kw in keywords.keywords:
        seen.setdefault(kw.display, Target(kw.display, kw.phrase))
    return list(seen.values())


# -- process pool ------------------------------------------------------------------------

_WORKER: Worker | None = None


def _init_worker(config: RunConfig) -> None:
    global _WORKER  # noqa: PLW0603 (one model per pool process, by design)
    _WORKER = Worker(config)


def _task(sweeping: bool, utt: Utterance) -> FileResult | SweepFile:
    assert _WORKER is not None, "pool worker not initialised"
    return _WORKER.sweep(utt) if sweeping else _WORKER.run(utt)


def _serial(
    worker: Worker, utts: Sequence[Utterance], sweeping: bool
) -> Iterator[FileResult | SweepFile]:
    for utt in utts:
        yield worker.sweep(utt) if sweeping else worker.run(utt)


def _pooled(
    config: RunConfig, utts: Sequence[Utterance], sweeping: bool, jobs: int
) -> Iterator[tuple[int, FileResult | SweepFile]]:
    # spawn, not fork: the parent may already hold ONNX Runtime's thread pool.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(config,)
    ) as pool:
        pending: dict[Future[FileResult | SweepFile], int] = {}
        todo = iter(enumerate(utts))
        try:
            # A bounded window keeps memory flat on large corpora and lets errors stop early.
            for index, utt in todo:
                pending[pool.submit(_task, sweeping, utt)] = index
                if len(pending) >= jobs * 4:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    yield index, future.result()
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending[pool.submit(_task, sweeping, nxt[1])] = nxt[0]
        finally:
            for future in pending:
                future.cancel()


def run_all(
    config: RunConfig,
    utts: Sequence[Utterance],
    *,
    jobs: int = 1,
    sweeping: bool = False,
    worker: Worker | None = None,
    on_done: Callable[[], None] | None = None,
) -> list[FileResult | SweepFile]:
    """Results in manifest order. `worker` (already loaded) serves the serial path."""
    results: list[FileResult | SweepFile | None] = [None] * len(utts)
    if jobs <= 1 or len(utts) <= 1:
        local = worker or Worker(config)
        for index, item in enumerate(_serial(local, utts, sweeping)):
            results[index] = item
            if on_done:
                on_done()
    else:
        for index, item in _pooled(config, utts, sweeping, min(jobs, len(utts))):
            results[index] = item
            if on_done:
                on_done()
    return [r for r in results if r is not None]
