"""The decode worker's batching policy: ready chunks wait a little for other streams'
when many streams are active, never when someone waits for the answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kwsd.spotter import KeywordSpotter
from kwsd.wyoming.decoding import (
    GATHER_SECONDS,
    Accept,
    BatchWorker,
    Restart,
    Searched,
    Settle,
    Settled,
)
from kwsd.wyoming.engine import chunk_boundaries


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def spotter(assets: Path) -> KeywordSpotter:
    return KeywordSpotter.from_assets(assets)


def _worker(spotter: KeywordSpotter, streams: int, clock: _Clock) -> BatchWorker:
    worker = BatchWorker(spotter.create_batch(), clock)
    keywords = spotter.compile(["HEY COMPUTER"])
    for number in range(1, streams + 1):
        worker.restart(Restart(number, 1, str(number), keywords))
    return worker


def _chunk(spotter: KeywordSpotter) -> np.ndarray:
    first, _ = chunk_boundaries(spotter)
    return np.zeros(first, np.float32)  # exactly one encoder chunk


def test_few_active_streams_never_wait(spotter: KeywordSpotter) -> None:
    clock = _Clock()
    worker = _worker(spotter, 4, clock)
    assert worker.wait_before_step() is None  # nothing ready
    for number in range(1, 5):
        worker.accept(Accept(number, np.zeros(160, np.float32), 1))  # heard, not ready
    worker.accept(Accept(1, _chunk(spotter), 2))
    assert worker.wait_before_step() == 0.0


def test_with_many_active_streams_a_chunk_waits_for_others_then_steps(
    spotter: KeywordSpotter,
) -> None:
    clock = _Clock()
    worker = _worker(spotter, 16, clock)
    for number in range(1, 17):  # all sixteen are streaming
        worker.accept(Accept(number, np.zeros(160, np.float32), 1))
    worker.accept(Accept(1, _chunk(spotter), 2))
    assert worker.wait_before_step() == pytest.approx(GATHER_SECONDS)
    clock.now += GATHER_SECONDS / 2
    for number in (2, 3):
        worker.accept(Accept(number, _chunk(spotter), 2))
    assert worker.wait_before_step() == pytest.approx(GATHER_SECONDS / 2)  # the oldest's
    worker.accept(Accept(4, _chunk(spotter), 2))  # a quarter of the active ones: go
    assert worker.wait_before_step() == 0.0
    assert worker.step()
    assert worker.wait_before_step() is None
    searched = [e for e in worker.take_events() if isinstance(e, Searched)]
    assert sorted(e.stream for e in searched if e.number == 2) == [1, 2, 3, 4]


def test_a_chunk_waits_no_longer_than_the_gather_time(spotter: KeywordSpotter) -> None:
    clock = _Clock()
    worker = _worker(spotter, 16, clock)
    for number in range(1, 17):
        worker.accept(Accept(number, np.zeros(160, np.float32), 1))
    worker.accept(Accept(5, _chunk(spotter), 2))
    clock.now += GATHER_SECONDS
    assert worker.wait_before_step() == 0.0


def test_a_chunk_someone_waits_for_goes_at_once(spotter: KeywordSpotter) -> None:
    clock = _Clock()
    worker = _worker(spotter, 16, clock)
    for number in range(1, 17):
        worker.accept(Accept(number, np.zeros(160, np.float32), 1))
    worker.accept(Accept(7, _chunk(spotter), 2))
    assert worker.wait_before_step() == pytest.approx(GATHER_SECONDS)
    worker.settle(Settle(7, token=99, finish=True))  # audio-stop: the client waits
    assert worker.wait_before_step() == 0.0
    while worker.wait_before_step() == 0.0:
        worker.step()
    assert Settled(99) in worker.take_events()


def test_streams_silent_for_a_while_do_not_count_as_active(spotter: KeywordSpotter) -> None:
    clock = _Clock()
    worker = _worker(spotter, 16, clock)
    for number in range(1, 17):
        worker.accept(Accept(number, np.zeros(160, np.float32), 1))
    clock.now += 5.0  # fifteen connections went quiet (no pipeline running)
    worker.accept(Accept(1, _chunk(spotter), 2))
    assert worker.wait_before_step() == 0.0


def test_the_end_of_an_utterance_steps_before_everyone_else(spotter: KeywordSpotter) -> None:
    clock = _Clock()
    worker = _worker(spotter, 16, clock)
    for number in range(1, 17):  # every stream has a chunk ready
        worker.accept(Accept(number, _chunk(spotter), 1))
    worker.take_events()
    worker.settle(Settle(9, token=5, finish=True))  # stream 9's client sent audio-stop
    stepped: list[set[int]] = []
    while not any(e == Settled(5) for e in worker.take_events()):
        before = {n for n in range(1, 17) if worker._streams[n].batch_stream.ready}
        assert worker.step()
        after = {n for n in range(1, 17) if worker._streams[n].batch_stream.ready}
        stepped.append(before - after)
    # Its tail (the chunk, the rest and the padding) went alone; the others still wait.
    assert stepped and all(s <= {9} for s in stepped)
    assert {n for n in range(1, 17) if worker._streams[n].batch_stream.ready} == (
        set(range(1, 17)) - {9}
    )


def test_a_client_that_is_only_ahead_gets_no_priority(spotter: KeywordSpotter) -> None:
    clock = _Clock()
    worker = _worker(spotter, 8, clock)
    for number in range(1, 9):
        worker.accept(Accept(number, _chunk(spotter), 1))
    worker.settle(Settle(3, token=6, finish=False))  # held back for being ahead
    assert worker.wait_before_step() == 0.0
    worker.step()
    assert not any(worker._streams[n].batch_stream.ready for n in range(1, 9))


def test_an_encoder_that_cannot_batch_never_waits(assets: Path) -> None:
    """The int8 Zipformer2 (zipformer-random: its architecture, random weights) runs
    one stream per call: a chunk gains nothing by waiting."""
    from kwsd.model.bundle import open_bundle
    from kwsd.spotter import BackendOptions

    encoder = assets / "zipformer-random/encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx"
    bundle = open_bundle(assets / "model", precision="int8", encoder_override=encoder)
    int8 = KeywordSpotter.from_bundle(bundle, backend=BackendOptions(precision="int8"))
    clock = _Clock()
    worker = BatchWorker(int8.create_batch(), clock)
    assert not worker.batch.plan.encoder
    keywords = int8.compile(["HEY COMPUTER"])
    for number in range(1, 17):
        worker.restart(Restart(number, 1, str(number), keywords))
        worker.accept(Accept(number, np.zeros(160, np.float32), 1))
    worker.accept(Accept(1, _chunk(int8), 2))
    assert worker.wait_before_step() == 0.0
