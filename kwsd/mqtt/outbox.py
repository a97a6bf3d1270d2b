"""The bounded store of messages not yet acknowledged by the broker.

Two lanes: events (detections, command replies) are kept in order, bounded, oldest
dropped first and counted; retained state (status, keyword list, discovery) keeps only
the latest payload per topic, is never dropped, and is re-sent after every reconnect
because a broker restart without persistence forgets retained messages.

Events also have a maximum age. A detection is an instruction for *now*: "lights on"
delivered minutes after it was said is worse than none, so an event older than
`max_age` is dropped (and counted) instead of being sent after a long outage.

An empty retained message deletes the retained message of its topic (Home Assistant
discovery of a removed keyword). Once the broker has acknowledged it, there is nothing
left to re-send: a broker that forgot its retained messages has forgotten the deleted
one too. It is forgotten here, so reconnects do not re-send a growing list of deletions.

A message leaves the outbox only when the broker acknowledged it (`ack`). Whatever was
handed out but not acknowledged when the connection died goes back to the front
(`rewind`), so a QoS 1 detection whose PUBACK never came is sent again (consumers
de-duplicate by the payload's `id`). Used from the event loop thread only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from kwsd.mqtt.messages import OutMessage

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Ticket:
    """One message handed to the sender; give it back with `ack` or `discard`."""

    message: OutMessage
    epoch: int
    seq: int | None = None  # event lane
    state_topic: str | None = None  # state lane


@dataclass(frozen=True, slots=True)
class _Event:
    seq: int
    queued_at: float
    message: OutMessage


class Outbox:
    """`max_age` (seconds, None = no limit) bounds how long an event may wait; `clock`
    is the monotonic time source (a parameter so the age rule can be tested exactly)."""

    def __init__(
        self, maxsize: int, *, max_age: float | None = None, clock: Clock = time.monotonic
    ) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        if max_age is not None and max_age <= 0:
            raise ValueError("max_age must be positive (None = no limit)")
        self.maxsize = maxsize
        self.max_age = max_age
        self._clock = clock
        self._pending: deque[_Event] = deque()  # in seq order, so also in age order
        self._inflight: dict[int, _Event] = {}
        self._state: dict[str, OutMessage] = {}
        self._dirty: dict[str, None] = {}  # ordered set of state topics to (re)send
        self._state_inflight = 0
        self._seq = 0
        self._epoch = 0
        self.dropped = 0  # events dropped because the outbox was full
        self.expired = 0  # events dropped because they waited longer than max_age
        self.delivered = 0
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()

    def __len__(self) -> int:
        """Events not yet acknowledged (state messages are not counted)."""
        return len(self._pending) + len(self._inflight)

    @property
    def has_room(self) -> bool:
        """At most half full: room for the replies to what is read next."""
        return len(self) <= self.maxsize // 2

    def put(self, message: OutMessage) -> bool:
        """Queue an event; returns True when the oldest one had to be dropped for it."""
        self.expire()
        dropped = False
        if len(self) >= self.maxsize:
            dropped = True
            self.dropped += 1
            if self._pending:
                self._pending.popleft()
            else:  # everything is in flight: forget the oldest, its ack becomes a no-op
                del self._inflight[min(self._inflight)]
        self._seq += 1
        self._pending.append(_Event(self._seq, self._clock(), message))
        self._changed()
        return dropped

    def expire(self) -> int:
        """Drop queued events older than `max_age`; how many were dropped now.

        Events in flight are left alone: the broker may already have them.
        """
        if self.max_age is None:
            return 0
        oldest_allowed = self._clock() - self.max_age
        count = 0
        while self._pending and self._pending[0].queued_at < oldest_allowed:
            self._pending.popleft()
            count += 1
        if count:
            self.expired += count
            self._changed()
        return count

    def set_state(self, message: OutMessage) -> None:
        """Make `message` the retained state of its topic and send it (again)."""
        self._state[message.topic] = message
        self._dirty[message.topic] = None
        self._changed()

    def state(self, topic: str) -> OutMessage | None:
        return self._state.get(topic)

    def queued(self) -> list[OutMessage]:
        """The events not yet acknowledged, oldest first (e.g. to report them at exit)."""
        events = sorted([*self._pending, *self._inflight.values()], key=lambda e: e.seq)
        return [e.message for e in events]

    async def take(self) -> Ticket:
        """The next message to send: dirty state first, then the oldest event."""
        self.expire()
        while not (self._dirty or self._pending):
            self._ready.clear()
            await self._ready.wait()
            self.expire()
        if self._dirty:
            topic = next(iter(self._dirty))
            del self._dirty[topic]
            self._state_inflight += 1
            ticket = Ticket(self._state[topic], self._epoch, state_topic=topic)
        else:
            event = self._pending.popleft()
            self._inflight[event.seq] = event
            ticket = Ticket(event.message, self._epoch, seq=event.seq)
        self._changed()
        return ticket

    def ack(self, ticket: Ticket) -> None:
        """The broker has the message."""
        if not self._release(ticket):
            return
        if ticket.seq is not None:
            self.delivered += 1  # events only: state re-sends would inflate it
        elif ticket.state_topic is not None and not ticket.message.payload:
            self._forget_deletion(ticket.state_topic, ticket.message)

    def discard(self, ticket: Ticket) -> None:
        """The message can never be sent (e.g. the broker rejects its topic): forget it."""
        self._release(ticket)

    def rewind(self) -> None:
        """The connection is gone: unacknowledged messages go back to the front, in order."""
        self._epoch += 1
        for seq in sorted(self._inflight, reverse=True):
            self._pending.appendleft(self._inflight[seq])
        self._inflight.clear()
        self._state_inflight = 0
        self._dirty = dict.fromkeys(self._state)
        self._changed()

    async def drained(self) -> None:
        """Wait until every queued message has been acknowledged."""
        await self._idle.wait()

    async def room(self) -> None:
        """Wait until the outbox is at most half full (see `has_room`)."""
        await self._room.wait()

    def _forget_deletion(self, topic: str, deletion: OutMessage) -> None:
        # Only if nothing newer was set for the topic since this one was handed out.
        if self._state.get(topic) is deletion and topic not in self._dirty:
            del self._state[topic]

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
        if self.has_room:
            self._room.set()
        else:
            self._room.clear()
