"""Run a blocking driver call off the event loop, in a thread that cannot hold up exit.

`asyncio.to_thread` uses the loop's default executor, and `asyncio.run` joins that
executor at shutdown without a timeout. A sound driver that never returns from
open/abort (a wedged USB device, a FIFO-backed ALSA plugin with no writer) would then
keep the daemon from ever exiting. A daemon thread per call avoids that; these calls
are rare (device open/close), so the thread cost does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def call_in_daemon_thread(
    fn: Callable[[], T],
    name: str = "kwsd-blocking",
    on_abandoned: Callable[[T], None] | None = None,
) -> T:
    """Await `fn()` run in a new daemon thread; its exception is raised here.

    The call itself cannot be interrupted. If the caller is cancelled first, the result
    arrives with nobody to take it: `on_abandoned(result)` then runs (in a thread), so
    e.g. a device opened after shutdown began is closed instead of leaked.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[T] = loop.create_future()
    lock = threading.Lock()
    state = {"abandoned": False, "delivered": False}

    def settle(result: T | None, error: BaseException | None) -> None:
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def worker() -> None:
        result: T | None = None
        error: BaseException | None = None
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        with lock:
            orphaned = state["abandoned"]
            state["delivered"] = not orphaned
        if orphaned:
            if error is None and on_abandoned is not None:
                on_abandoned(result)  # type: ignore[arg-type]
            return
        with contextlib.suppress(RuntimeError):  # the loop closed while we were blocked
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=worker, name=name, daemon=True).start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        with lock:
            state["abandoned"] = True
            delivered = state["delivered"]
        if delivered and on_abandoned is not None:
            # The result is already on its way to `done`; clean it up when it lands.
            done.add_done_callback(lambda fut: _discard(fut, on_abandoned, name))
        raise


def _discard(fut: asyncio.Future[T], on_abandoned: Callable[[T], None], name: str) -> None:
    if fut.cancelled() or fut.exception() is not None:
        return
    threading.Thread(
        target=on_abandoned, args=(fut.result(),), name=f"{name}-cleanup", daemon=True
    ).start()
