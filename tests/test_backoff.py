"""Retry delays of the MQTT link (jittered) and the microphone (exact doubling)."""

from __future__ import annotations

import random

from kwsd.backoff import Backoff


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 8.0, rng=random.Random(1))
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    delays = [backoff.next_delay() for _ in ceilings]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert max(0.5, ceiling / 2) <= delay <= ceiling
    assert len(set(delays[4:])) == 3  # jittered, not a fixed value
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 0.5


def test_backoff_without_jitter_doubles_exactly_and_never_undercuts_the_minimum() -> None:
    backoff = Backoff(0.3, 2.0, jitter=False)
    assert [backoff.next_delay() for _ in range(5)] == [0.3, 0.6, 1.2, 2.0, 2.0]
    assert backoff.attempt == 5
    backoff.reset()
    assert (backoff.attempt, backoff.next_delay()) == (0, 0.3)
    assert Backoff(0.5, 0.2, jitter=False).next_delay() == 0.5  # a cap below the start


def test_a_cap_holds_the_delay_and_the_growth_resumes_from_it() -> None:
    backoff = Backoff(1.0, 60.0, jitter=False)
    assert [backoff.next_delay(cap=2.0) for _ in range(6)] == [1.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert backoff.attempt == 6  # every failure is counted
    assert [backoff.next_delay() for _ in range(6)] == [4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert Backoff(5.0, 60.0, jitter=False).next_delay(cap=2.0) == 5.0  # never below minimum


def test_capped_delays_stay_jittered() -> None:
    backoff = Backoff(1.0, 60.0, rng=random.Random(3))
    delays = [backoff.next_delay(cap=2.0) for _ in range(40)]
    assert all(1.0 <= d <= 2.0 for d in delays)
    assert len(set(delays[2:])) > 30  # many daemons do not retry in lockstep
