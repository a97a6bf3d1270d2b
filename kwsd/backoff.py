"""Retry delays: exponential from a minimum, capped, jittered unless asked not to be.

The MQTT link waits like this between reconnects, the microphone between attempts to
reopen a lost device. Jitter spreads the reconnects of many daemons (a house full of
satellites) after a broker restart, instead of having them all knock at the same
instant; a local sound device has nobody to collide with, so the mic asks for none.
"""

from __future__ import annotations

import random


class Backoff:
    def __init__(
        self,
        minimum: float,
        maximum: float,
        *,
        jitter: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if not minimum > 0:
            raise ValueError("the minimum delay must be positive")
        self.minimum = minimum
        self.maximum = max(minimum, maximum)  # the cap never undercuts the first delay
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._attempt = 0

    @property
    def attempt(self) -> int:
        """Failures since the last success."""
        return self._attempt

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt: the ceiling, doubling from the minimum up
        to the maximum; with jitter, a random point in [ceiling/2, ceiling] (at least the
        minimum)."""
        ceiling = min(self.maximum, self.minimum * 2.0 ** min(self._attempt, 32))
        self._attempt += 1
        if not self.jitter:
            return ceiling
        return max(self.minimum, self._rng.uniform(ceiling / 2.0, ceiling))

    def reset(self) -> None:
        self._attempt = 0
