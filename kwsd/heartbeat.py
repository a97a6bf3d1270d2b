"""The pipeline's pulse: one timestamp per processed audio chunk.

Both the systemd watchdog and `/healthz` ask the same question — "has audio gone
through the whole pipeline recently?" — so they share this object instead of each
watching a different part of the daemon. `beat()` is called from the engine's worker
thread and readers sit on the event loop, so state is behind a lock and the first beat
wakes `wait_started()` through `call_soon_threadsafe`, never by touching the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Heartbeat:
    """Records when the pipeline last finished a chunk, on a monotonic clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: float | None = None
        self._beats = 0
        self._waiters: list[_Waiter] = []

    def beat(self) -> None:
        """Call after every processed chunk (any thread)."""
        now = self._clock()
        with self._lock:
            first = self._last is None
            self._last = now
            self._beats += 1
            waiters, self._waiters = (self._waiters, []) if first else ([], self._waiters)
        for loop, future in waiters:
            # The loop may already be gone at shutdown; nobody is waiting then.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)

    async def wait_started(self) -> None:
        """Wait for the first beat; safe while `beat()` runs on another thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._last is not None:
                return
            waiter: _Waiter = (loop, future)
            self._waiters.append(waiter)
        try:
            await future
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    @property
    def beats(self) -> int:
        """How many chunks were processed; lets callers see progress, not just recency."""
        with self._lock:
            return self._beats

    @property
    def started(self) -> bool:
        """True once the first chunk went through (model loaded and audio flowing)."""
        with self._lock:
            return self._last is not None

    def age(self) -> float | None:
        """Seconds since the last beat, or None before the first one."""
        with self._lock:
            last = self._last
        if last is None:
            return None
        return max(0.0, self._clock() - last)

    def fresh(self, within: float) -> bool:
        """True if a beat happened in the last `within` seconds."""
        age = self.age()
        return age is not None and age <= within
