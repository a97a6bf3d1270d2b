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
