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


async def scrape_metrics(port: int) -> str:
    """The body of `GET /metrics` from the health endpoint on loopback `port`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    body = (await reader.read()).decode().partition("\r\n\r\n")[2]
    writer.close()
    return body
