"""The outbox: what waits for the broker, in which order, and what is dropped when full."""

from __future__ import annotations

import asyncio

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
