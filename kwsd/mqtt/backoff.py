"""Reconnect delays: exponential, capped, with jitter.

Jitter spreads the reconnects of many daemons (a house full of satellites) after a
broker restart, instead of having them all knock at the same instant.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, minimum: float, maximum: float, *, rng: random.Random | None = None) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("need 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Failures since the last success."""
        return self._attempt

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt: in [ceiling/2, ceiling], ceiling doubling."""
        ceiling = min(self.maximum, self.minimum * 2.0 ** min(self._attempt, 32))
        self._attempt += 1
        return max(self.minimum, self._rng.uniform(ceiling / 2.0, ceiling))

    def reset(self) -> None:
        self._attempt = 0
