"""Waiting on the event loop for something a test expects to happen soon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(
    predicate: Callable[[], bool], *, within: float = 15.0, what: str = ""
) -> None:
    """Poll `predicate` on the event loop; fail the test if it stays false for `within` s."""
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or predicate}")
        await asyncio.sleep(0.01)
