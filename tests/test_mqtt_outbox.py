"""The outbox: what waits for the broker, in which order, and what is dropped when full."""

from __future__ import annotations

import asyncio

import pytest

from kwsd.mqtt import Outbox, OutMessage


def event(n: int) -> OutMessage:
    return OutMessage("kwsd/x/detection", str(n).encode())


def state(topic: str, payload: bytes) -> OutMessage:
    return OutMessage(topic, payload, retain=True)


async def test_outbox_drops_the_oldest_when_full() -> None:
    box = Outbox(3)
    assert [box.put(event(n)) for n in range(5)] == [False, False, False, True, True]
    assert (len(box), box.dropped) == (3, 2)
    assert [(await box.take()).message.payload for _ in range(3)] == [b"2", b"3", b"4"]


async def test_outbox_sends_state_first_and_keeps_only_the_latest() -> None:
    box = Outbox(10)
    box.put(event(1))
    box.set_state(state("kwsd/x/status", b"online"))
    box.set_state(state("kwsd/x/keywords", b"v1"))
    box.set_state(state("kwsd/x/keywords", b"v2"))
    order = [(await box.take()).message.payload for _ in range(3)]
    assert order == [b"online", b"v2", b"1"]
    assert len(box) == 1  # the event is in flight, state is not counted


async def test_outbox_rewind_requeues_unacknowledged_in_order() -> None:
    box = Outbox(10)
    box.set_state(state("kwsd/x/status", b"online"))
    for n in range(4):
        box.put(event(n))
    tickets = [await box.take() for _ in range(4)]  # status, 0, 1, 2
    box.ack(tickets[0])
    box.ack(tickets[2])  # event 1 acknowledged; 0 and 2 were not
    box.rewind()
    again = [(await box.take()).message.payload for _ in range(4)]
    assert again == [b"online", b"0", b"2", b"3"]
    assert box.delivered == 1
    box.ack(tickets[1])  # a late ack from before the rewind changes nothing
    assert (len(box), box.delivered) == (3, 1)


async def test_outbox_overflow_while_everything_is_in_flight() -> None:
    box = Outbox(2)
    box.put(event(0))
    box.put(event(1))
    first, _ = await box.take(), await box.take()
    box.put(event(2))  # drops event 0 although it is being sent
    assert (len(box), box.dropped) == (2, 1)
    box.ack(first)
    assert (len(box), box.delivered) == (2, 0)


async def test_outbox_drained_waits_for_every_ack() -> None:
    box = Outbox(5)
    await asyncio.wait_for(box.drained(), 1)  # empty: returns at once
    box.put(event(0))
    box.set_state(state("kwsd/x/status", b"online"))
    waiter = asyncio.create_task(box.drained())
    tickets = [await box.take(), await box.take()]
    await asyncio.sleep(0)
    assert not waiter.done()
    box.ack(tickets[0])
    await asyncio.sleep(0)
    assert not waiter.done()
    box.ack(tickets[1])
    await asyncio.wait_for(waiter, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_events_older_than_the_maximum_age_are_dropped_and_counted() -> None:
    clock = Clock()
    box = Outbox(10, max_age=30.0, clock=clock)
    box.put(event(0))
    clock.now += 20
    box.put(event(1))
    in_flight = await box.take()  # event 0, sent but not acknowledged
    box.rewind()  # the connection died: it is queued again, with its original age
    clock.now += 15  # event 0 is 35 s old, event 1 is 15 s old
    assert [(await box.take()).message.payload] == [b"1"]
    assert (box.expired, box.dropped, len(box)) == (1, 0, 1)
    box.ack(in_flight)  # a stale ack changes nothing
    clock.now += 31
    box.put(event(2))  # expiring leaves what is in flight alone
    assert [m.payload for m in box.queued()] == [b"1", b"2"]
    assert box.expire() == 0


async def test_expiry_can_be_switched_off() -> None:
    clock = Clock()
    box = Outbox(10, clock=clock)
    box.put(event(0))
    clock.now += 1e6
    assert box.expire() == 0 and (await box.take()).message.payload == b"0"


async def test_an_acknowledged_deletion_is_not_sent_again() -> None:
    box = Outbox(10)
    box.set_state(state("ha/trigger/a/config", b"{}"))
    box.set_state(state("ha/trigger/b/config", b"{}"))
    for ticket in [await box.take(), await box.take()]:
        box.ack(ticket)
    box.set_state(state("ha/trigger/a/config", b""))  # keyword a removed
    box.set_state(state("ha/trigger/b/config", b""))  # keyword b removed ...
    deletion_a, deletion_b = await box.take(), await box.take()
    box.ack(deletion_a)
    box.set_state(state("ha/trigger/b/config", b"{}"))  # ... and added back meanwhile
    box.ack(deletion_b)
    box.rewind()  # a reconnect re-sends the live state only
    resent = [await box.take()]
    assert [(t.message.topic, t.message.payload) for t in resent] == [
        ("ha/trigger/b/config", b"{}")
    ]
    assert box.state("ha/trigger/a/config") is None


async def test_a_deletion_lost_with_the_connection_is_sent_again() -> None:
    box = Outbox(10)
    box.set_state(state("ha/trigger/a/config", b""))
    await box.take()  # sent, the connection died before the PUBACK
    box.rewind()
    again = await box.take()
    assert (again.message.topic, again.message.payload) == ("ha/trigger/a/config", b"")
    box.ack(again)
    box.rewind()
    with pytest.raises(TimeoutError):  # nothing left to send
        await asyncio.wait_for(box.take(), 0.05)


async def test_room_for_replies_is_half_the_outbox() -> None:
    box = Outbox(4)
    box.put(event(0))
    box.put(event(1))
    assert box.has_room
    box.put(event(2))
    assert not box.has_room
    waiter = asyncio.create_task(box.room())
    await asyncio.sleep(0)
    assert not waiter.done()
    box.ack(await box.take())
    await asyncio.wait_for(waiter, 1)
