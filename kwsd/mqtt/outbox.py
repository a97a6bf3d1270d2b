"""The bounded store of messages not yet acknowledged by the broker.

Two lanes: events (detections, command replies) are kept in order, bounded, oldest
dropped first and counted; retained state (status, keyword list, discovery) keeps only
the latest payload per topic, is never dropped, and is re-sent after every reconnect
because a broker restart without persistence forgets retained messages.

A message leaves the outbox only when the broker acknowledged it (`ack`). Whatever was
handed out but not acknowledged when the connection died goes back to the front
(`rewind`), so a QoS 1 detection whose PUBACK never came is sent again (consumers
de-duplicate by the payload's `id`). Used from the event loop thread only.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from kwsd.mqtt.messages import OutMessage


@dataclass(frozen=True, slots=True)
class Ticket:
    """One message handed to the sender; give it back with `ack` or `discard`."""

    message: OutMessage
    epoch: int
    seq: int | None = None  # event lane
    state_topic: str | None = None  # state lane


class Outbox:
    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._pending: deque[tuple[int, OutMessage]] = deque()
        self._inflight: dict[int, OutMessage] = {}
        self._state: dict[str, OutMessage] = {}
        self._dirty: dict[str, None] = {}  # ordered set of state topics to (re)send
        self._state_inflight = 0
        self._seq = 0
        self._epoch = 0
        self.dropped = 0
        self.delivered = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        """Events not yet acknowledged (state messages are not counted)."""
        return len(self._pending) + len(self._inflight)

    def put(self, message: OutMessage) -> bool:
        """Queue an event; returns True when the oldest one had to be dropped for it."""
        dropped = False
        if len(self) >= self.maxsize:
            dropped = True
            self.dropped += 1
            if self._pending:
                self._pending.popleft()
            else:  # everything is in flight: forget the oldest, its ack becomes a no-op
                del self._inflight[min(self._inflight)]
        self._seq += 1
        self._pending.append((self._seq, message))
        self._changed()
        return dropped

    def set_state(self, message: OutMessage) -> None:
        """Make `message` the retained state of its topic and send it (again)."""
        self._state[message.topic] = message
        self._dirty[message.topic] = None
        self._changed()

    def state(self, topic: str) -> OutMessage | None:
        return self._state.get(topic)

    async def take(self) -> Ticket:
        """The next message to send: dirty state first, then the oldest event."""
        while not (self._dirty or self._pending):
            self._ready.clear()
            await self._ready.wait()
        if self._dirty:
            topic = next(iter(self._dirty))
            del self._dirty[topic]
            self._state_inflight += 1
            ticket = Ticket(self._state[topic], self._epoch, state_topic=topic)
        else:
            seq, message = self._pending.popleft()
            self._inflight[seq] = message
            ticket = Ticket(message, self._epoch, seq=seq)
        self._changed()
        return ticket

    def ack(self, ticket: Ticket) -> None:
        """The broker has the message."""
        if self._release(ticket) and ticket.seq is not None:
            self.delivered += 1  # events only: state re-sends would inflate it

    def discard(self, ticket: Ticket) -> None:
        """The message can never be sent (e.g. the broker rejects its topic): forget it."""
        self._release(ticket)

    def rewind(self) -> None:
        """The connection is gone: unacknowledged messages go back to the front, in order."""
        self._epoch += 1
        for seq in sorted(self._inflight, reverse=True):
            self._pending.appendleft((seq, self._inflight[seq]))
        self._inflight.clear()
        self._state_inflight = 0
        self._dirty = dict.fromkeys(self._state)
        self._changed()

    async def drained(self) -> None:
        """Wait until every queued message has been acknowledged."""
        await self._idle.wait()

    def _release(self, ticket: Ticket) -> bool:
        if ticket.epoch != self._epoch:
            return False  # from before a rewind: it is queued again
        released = False
        if ticket.seq is not None:
            released = self._inflight.pop(ticket.seq, None) is not None
        elif self._state_inflight > 0:
            self._state_inflight -= 1
            released = True
        self._changed()
        return released

    def _changed(self) -> None:
        if self._dirty or self._pending:
            self._ready.set()
        if self._dirty or self._pending or self._inflight or self._state_inflight:
            self._idle.clear()
        else:
            self._idle.set()
