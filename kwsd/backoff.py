"""Retry delays: exponential from a minimum, capped, jittered unless asked not to be.

The MQTT link waits like this between reconnects, the microphone between attempts to
reopen a lost device. A caller may cap one delay (`next_delay(cap=...)`): the MQTT
link retries every second or two for the first minute of an outage, so it is back
within seconds of a broker restart, and only then backs off; the growth resumes from
the cap, not from where an uncapped schedule would have got to.

Jitter spreads the reconnects of many daemons (a house full of satellites) after a
broker restart, instead of having them all knock at the same instant; a local sound
device has nobody to collide with, so the mic asks for none.
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
        self._step = 0  # the doubling exponent; held while a cap is in force

    @property
    def attempt(self) -> int:
        """Failures since the last success."""
        return self._attempt

    def next_delay(self, *, cap: float | None = None) -> float:
        """Seconds to wait before the next attempt: the ceiling, doubling from the minimum up
        to the maximum (or to `cap`, never below the minimum); with jitter, a random point
        in [ceiling/2, ceiling] (at least the minimum)."""
        ceiling = min(self.maximum, self.minimum * 2.0 ** min(self._step, 32))
        if cap is not None and ceiling > cap:
            ceiling = max(self.minimum, cap)
        else:
            self._step += 1
        self._attempt += 1
        if not self.jitter:
            return ceiling
        return max(self.minimum, self._rng.uniform(ceiling / 2.0, ceiling))

    def reset(self) -> None:
        self._attempt = 0
        self._step = 0
