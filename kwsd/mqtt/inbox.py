"""Received messages waiting for their handler: bounded, never dropped silently.

The link's reader moves every message the client received into the inbox at once, so
nothing waits in the connection's own queue, which dies with the connection. Handlers
take them one at a time (a command compiles keywords in a thread, so a flood can run
far ahead of them). The backlog is bounded in count and bytes, so a flood cannot
exhaust memory; a message that does not fit is dropped and counted, commands apart
from the rest, and the link logs it and exports the counts to /metrics.
"""

from __future__ import annotations

import asyncio
from collections import deque

from kwsd.mqtt.messages import InboundMessage


class Inbox:
    def __init__(self, max_messages: int, max_bytes: int) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("the inbox needs room for at least one message")
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._messages: deque[InboundMessage] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._messages)

    def offer(self, message: InboundMessage) -> bool:
        """Queue `message`; False (and counted) when the backlog is full.

        A message on its own always fits, so a large but legitimate payload is not lost
        merely for being large; `max_bytes` bounds the backlog, not one message.
        """
        size = len(message.payload)
        full = len(self._messages) >= self.max_messages or (
            self._messages and self._bytes + size > self.max_bytes
        )
        if full:
            self.dropped += 1
            return False
        self._messages.append(message)
        self._bytes += size
        self._ready.set()
        return True

    async def get(self) -> InboundMessage:
        while not self._messages:
            self._ready.clear()
            await self._ready.wait()
        message = self._messages.popleft()
        self._bytes -= len(message.payload)
        return message
