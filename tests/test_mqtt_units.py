"""The broker-free parts of kwsd.mqtt: outbox, backoff, parsing, payloads, stdout."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import threading
from datetime import UTC, datetime

import pytest

from kwsd.detection import Detection
from kwsd.errors import ConfigError
from kwsd.keywords.spec import KeywordSpec
from kwsd.mqtt import (
    CommandError,
    CommandReply,
    DetectionPayload,
    KeywordsPayload,
    Outbox,
    OutMessage,
    StdoutPublisher,
    Topics,
    parse_command,
)
from kwsd.mqtt.backoff import Backoff

DET = Detection(
    "LIGHT_UP", "LIGHT UP", ("▁", "L", "IGHT", "▁UP"), 3.0400000000000005, 3.2, 0.83, 80
)


def event(n: int) -> OutMessage:
    return OutMessage("kwsd/x/detection", str(n).encode())


def state(topic: str, payload: bytes) -> OutMessage:
    return OutMessage(topic, payload, retain=True)


# ------------------------------------------------------------------ outbox


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


# ----------------------------------------------------------------- backoff


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 8.0, rng=random.Random(1))
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    delays = [backoff.next_delay() for _ in ceilings]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert max(0.5, ceiling / 2) <= delay <= ceiling
    assert len(set(delays[4:])) == 3  # jittered, not a fixed value
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 0.5


# ---------------------------------------------------------------- commands


def test_parse_keyword_command_shapes() -> None:
    command = parse_command(
        "keywords/add",
        '{"id": 9, "keywords": ["LIGHT UP", {"pieces": "▁ L IGHT ▁UP", "boost": "2"}]}'.encode(),
    )
    assert (command.name, command.id) == ("add", "9")
    assert command.entries == (
        KeywordSpec(phrase="LIGHT UP"),
        KeywordSpec(pieces=("▁", "L", "IGHT", "▁UP"), boost=2.0),
    )
    assert parse_command("keywords/set", b'"GOOD NIGHT"').entries == (
        KeywordSpec(phrase="GOOD NIGHT"),
    )
    assert parse_command("keywords/set", b"[]").entries == ()  # clears the list
    removal = parse_command("keywords/remove", b'[" LIGHT_UP ", {"phrase": "X"}]')
    assert removal.entries == ("LIGHT_UP", KeywordSpec(phrase="X"))


def test_parse_state_commands() -> None:
    assert parse_command("pause", b"").reason is None
    assert parse_command("pause", b"  \n").name == "pause"
    resume = parse_command("resume", b'{"reason": "tv", "id": "a"}')
    assert (resume.name, resume.reason, resume.id) == ("resume", "tv", "a")


@pytest.mark.parametrize(
    ("verb", "payload", "message"),
    [
        ("keywords/set", b'{"keywords": 5, "id": "7"}', "JSON list of keywords"),
        ("keywords/set", b'{"keywords": [], "extra": 1}', "unknown field(s) ['extra']"),
        ("keywords/add", b'[{"phrase": "X", "threshold": 2}]', "`threshold`"),
        ("keywords/add", b"[null]", "got null"),
        ("keywords/remove", b'["  "]', "keyword 1: an empty name"),
        ("keywords/add", b"[Infinity]", "Infinity is not a number"),
        ("resume", b'{"reason": 5}', "`reason` must be a string"),
        ("resume", b'{"why": "x"}', "unknown field(s) ['why']"),
        ("keywords/set", b"\xff\xfe", "byte 0xff at offset 0"),
    ],
)
def test_parse_command_errors(verb: str, payload: bytes, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(verb, payload)
    assert message in str(info.value)


def test_command_error_keeps_the_request_id() -> None:
    with pytest.raises(CommandError) as info:
        parse_command("keywords/add", b'{"id": "req-5", "keywords": [42]}')
    assert info.value.command_id == "req-5"


def test_size_limit_is_checked_before_decoding() -> None:
    with pytest.raises(CommandError, match="over the 100-byte limit"):
        parse_command("keywords/set", b"\xff" * 101, max_bytes=100)


# ---------------------------------------------------------------- payloads


def test_detection_payload_rounds_times_and_stamps_utc() -> None:
    when = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    payload = DetectionPayload.from_detection(DET, site="kitchen", model="m", when=when)
    assert (payload.start, payload.end, payload.score) == (3.04, 3.2, 0.83)
    assert payload.time == "2024-05-01T12:30:15.123Z"
    assert DetectionPayload.from_json(payload.to_json()) == payload
    assert json.loads(payload.to_json())["tokens"] == ["▁", "L", "IGHT", "▁UP"]


def test_keywords_payload_and_reply_round_trip() -> None:
    kws = KeywordsPayload(
        "a1", (KeywordSpec(phrase="LIGHT UP", alternates=(("▁LI", "GHT", "▁UP"),)),), True
    )
    data = json.loads(kws.to_json())
    assert data["keywords"] == [{"phrase": "LIGHT UP", "alternates": [["▁LI", "GHT", "▁UP"]]}]
    assert KeywordsPayload.from_json(kws.to_json()) == kws
    reply = CommandReply("keywords/add", False, "unknown piece", 4, "x", ("weak keyword",))
    assert CommandReply.from_json(reply.to_json()) == reply


# ------------------------------------------------------------------ topics


def test_topics_and_base_topic_validation() -> None:
    topics = Topics.for_base("kwsd/kitchen")
    assert topics.detection == "kwsd/kitchen/detection"
    assert topics.command_verb("kwsd/kitchen/cmd/keywords/set") == "keywords/set"
    assert topics.command_verb("kwsd/other/cmd/pause") is None
    assert not topics.is_command_topic(topics.command_result)
    for bad in ("", "kwsd/#", "/kwsd", "$SYS/kwsd", "kw\0sd"):
        with pytest.raises(ConfigError, match=r"mqtt\.base_topic"):
            Topics.for_base(bad)


# ------------------------------------------------------------------ stdout


async def test_stdout_publisher_writes_the_mqtt_fields_as_json_lines() -> None:
    stream = io.StringIO()
    publisher = StdoutPublisher(site="kitchen", model="m", stream=stream)
    task = asyncio.create_task(publisher.run())
    sent = [publisher.publish_detection(DET) for _ in range(3)]
    await publisher.flush()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [p.to_dict() for p in sent]
    assert set(json.loads(lines[0])) == set(DetectionPayload.__dataclass_fields__)


async def test_stdout_publisher_never_blocks_the_loop_on_a_stalled_reader() -> None:
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w", encoding="utf-8")
    publisher = StdoutPublisher(site="kitchen", model="m", stream=stream, max_queued=10)
    task = asyncio.create_task(publisher.run())
    last = None
    for n in range(2000):  # ~500 kB: far more than the pipe buffer holds
        last = publisher.publish_detection(DET)
        if n % 20 == 0:
            await asyncio.sleep(0)  # the loop keeps running while the writer is stuck
    assert publisher.dropped > 0
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read_all(read_fd)))
    reader.start()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)  # writes what is left, then stops
    stream.close()
    await asyncio.to_thread(reader.join)
    lines = received[0].decode().splitlines()
    assert len(lines) == publisher.written == 2000 - publisher.dropped
    assert last is not None and json.loads(lines[-1])["id"] == last.id  # newest kept


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)
