"""MqttLink and its CommandChannel against a real mosquitto: payloads, retained state,
commands, bad input."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiomqtt
import pytest
from async_support import wait_until
from mqtt_broker import Mosquitto, link_options, running
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from kwsd.detection import Detection
from kwsd.errors import KeywordError
from kwsd.keywords.spec import KeywordSpec
from kwsd.mqtt import (
    Command,
    CommandChannel,
    CommandReply,
    CommandResult,
    DetectionPayload,
    InboundMessage,
    KeywordsPayload,
    MessageCallback,
    MqttLink,
)

LIGHT_UP = Detection(
    keyword="LIGHT_UP",
    phrase="LIGHT UP",
    tokens=("▁", "L", "IGHT", "▁UP"),
    start=3.04,
    end=3.2,
    score=0.8312,
    frame=80,
)


class KeywordListHandler:
    """Test double of the daemon's keyword registry (the broker and link are real).

    Checks explicit pieces against the real model's tokens.txt, keeps a list and a
    version, and publishes the retained keyword list the way the registry will.
    """

    def __init__(self, link: MqttLink, tokens_file: Path) -> None:
        self.link = link
        self.vocabulary = {
            line.split()[0] for line in tokens_file.read_text(encoding="utf-8").splitlines() if line
        }
        self.keywords: list[KeywordSpec] = [KeywordSpec(phrase="HEY COMPUTER")]
        self.version = 1
        self.paused = False
        self.calls: list[Command] = []
        self.publish()

    def publish(self) -> None:
        self.link.publish_keywords(
            KeywordsPayload(self.version, tuple(self.keywords), paused=self.paused)
        )

    async def handle(self, command: Command) -> CommandResult:
        self.calls.append(command)
        specs = [e for e in command.entries if isinstance(e, KeywordSpec)]
        for spec in specs:
            for piece in [*(spec.pieces or ()), *(p for alt in spec.alternates for p in alt)]:
                if piece not in self.vocabulary:
                    return CommandResult(
                        ok=False,
                        error=f"unknown piece {piece!r}: not in the model's tokens.txt",
                        keywords_version=self.version,
                    )
        if command.name == "set":
            self.keywords = specs
        elif command.name == "add":
            self.keywords += specs
        elif command.name == "remove":
            names = {e for e in command.entries if isinstance(e, str)}
            kept = [k for k in self.keywords if k.phrase not in names and k.display not in names]
            if len(kept) == len(self.keywords):
                raise KeywordError(f"no keyword named {sorted(names)}")
            self.keywords = kept
        else:
            self.paused = command.name == "pause"
        self.version += 1
        self.publish()
        return CommandResult(ok=True, keywords_version=self.version)


@pytest.fixture
def tokens_file(assets: Path) -> Path:
    return assets / "model" / "tokens.txt"


def make_link(broker: Mosquitto, base: str, **overrides: object) -> MqttLink:
    return MqttLink(link_options(broker, base, **overrides), site="kitchen", model="test-model")


def v5_request(response_topic: str, correlation: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    return props


async def test_detection_payload_fields_qos1_not_retained(
    mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    link = make_link(mosquitto, mqtt_base_topic)
    topic = f"{mqtt_base_topic}/detection"
    async with running(link), mosquitto.subscriber(topic) as sub:
        before = datetime.now(UTC)
        first = link.publish_detection(LIGHT_UP)
        second = link.publish_detection(LIGHT_UP)
        messages = await sub.take(2)

    raw = json.loads(messages[0].payload)
    assert set(raw) == {
        "id", "keyword", "phrase", "tokens", "score", "start", "end", "time", "site", "model",
    }  # fmt: skip
    assert raw["id"] == first.id and uuid.UUID(raw["id"]).version == 4
    assert (raw["keyword"], raw["phrase"]) == ("LIGHT_UP", "LIGHT UP")
    assert raw["tokens"] == ["▁", "L", "IGHT", "▁UP"]
    assert (raw["start"], raw["end"], raw["score"]) == (3.04, 3.2, 0.8312)
    assert (raw["site"], raw["model"]) == ("kitchen", "test-model")
    spotted = datetime.fromisoformat(raw["time"])
    assert spotted.utcoffset() == timedelta(0)
    assert abs((spotted - before).total_seconds()) < 60
    assert json.loads(messages[1].payload)["id"] == second.id != first.id
    assert [m.qos for m in messages] == [1, 1]  # QoS 1 end to end (subscribed with QoS 1)

    # Not retained: a new subscriber sees our probe first, no replayed detection before it.
    async with mosquitto.subscriber(topic) as late:
        await mosquitto.publish(topic, b"probe", qos=1)
        assert (await late.next()).payload == b"probe"


async def test_status_online_retained_then_offline_on_clean_shutdown(
    mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    link = make_link(mosquitto, mqtt_base_topic)
    status = f"{mqtt_base_topic}/status"
    async with mosquitto.subscriber(status) as watcher:
        async with running(link):
            async with mosquitto.subscriber(status) as late:
                retained = await late.next()
            assert (retained.payload, retained.retain) == (b"online", True)
            assert link.status.connected and link.status.last_error is None
        # Leaving `running` cancelled run(): it must say goodbye before disconnecting.
        await watcher.wait_for(lambda m: m.payload == b"offline")
    assert not link.connected
    async with mosquitto.subscriber(status) as after:
        message = await after.next()
    assert (message.payload, message.retain) == (b"offline", True)


async def test_stop_delivers_queued_detections_then_goes_offline(
    mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    link = make_link(mosquitto, mqtt_base_topic)
    async with mosquitto.subscriber(f"{mqtt_base_topic}/#") as sub:
        task = asyncio.create_task(link.run())
        await wait_until(lambda: link.connected)
        sent = [link.publish_detection(LIGHT_UP).id for _ in range(5)]
        link.stop()
        await asyncio.wait_for(task, 10)  # returns normally after stop()
        await sub.wait_for(lambda m: m.payload == b"offline")
    seen = [(m.topic.value.rsplit("/", 1)[1], m.payload) for m in sub.messages]
    assert seen[-1] == ("status", b"offline")
    ids = [json.loads(payload)["id"] for topic, payload in seen if topic == "detection"]
    assert ids == sent  # all delivered, in order, before `offline`


async def test_keywords_retained_with_version(mosquitto: Mosquitto, mqtt_base_topic: str) -> None:
    link = make_link(mosquitto, mqtt_base_topic)
    topic = f"{mqtt_base_topic}/keywords"
    first = KeywordsPayload(7, (KeywordSpec(phrase="LIGHT UP", boost=2.0),))
    link.publish_keywords(first)
    async with running(link):
        await link.flush()
        async with mosquitto.subscriber(topic) as sub:
            message = await sub.next()
        assert message.retain
        raw = json.loads(message.payload)
        assert raw["version"] == 7
        assert raw["keywords"] == [{"phrase": "LIGHT UP", "boost": 2.0}]
        assert KeywordsPayload.from_json(message.payload) == first

        second = KeywordsPayload(
            8, (KeywordSpec(pieces=("▁", "L", "IGHT", "▁UP"), display="LIGHT_UP"),)
        )
        link.publish_keywords(second)
        await link.flush()
        async with mosquitto.subscriber(topic) as sub:
            message = await sub.next()
        assert message.retain and KeywordsPayload.from_json(message.payload) == second
        assert json.loads(message.payload)["keywords"][0]["pieces"] == ["▁", "L", "IGHT", "▁UP"]


async def test_set_command_replies_on_result_and_response_topic(
    mosquitto: Mosquitto, mqtt_base_topic: str, tokens_file: Path
) -> None:
    link = make_link(mosquitto, mqtt_base_topic)
    handler = KeywordListHandler(link, tokens_file)
    CommandChannel(link, handler)
    reply_to = f"{mqtt_base_topic}-replies/client-1"
    body = json.dumps(
        {"id": "req-1", "keywords": ["GOOD NIGHT", {"pieces": "▁ L IGHT ▁UP", "boost": 2.0}]}
    )
    async with (
        running(link),
        mosquitto.subscriber(f"{mqtt_base_topic}/cmd/result") as results,
        mosquitto.subscriber(reply_to) as responses,
    ):
        await mosquitto.publish(
            f"{mqtt_base_topic}/cmd/keywords/set",
            body,
            properties=v5_request(reply_to, b"\x00corr-\xff"),
        )
        result = await results.next()
        response = await responses.next()
        await link.flush()
        async with mosquitto.subscriber(f"{mqtt_base_topic}/keywords") as kw:
            retained = KeywordsPayload.from_json((await kw.next()).payload)

    reply = CommandReply.from_json(result.payload)
    assert reply == CommandReply(command="keywords/set", ok=True, keywords_version=2, id="req-1")
    assert json.loads(result.payload)["error"] is None
    assert response.payload == result.payload
    assert response.properties is not None
    assert getattr(response.properties, "CorrelationData", None) == b"\x00corr-\xff"
    [call] = handler.calls
    assert call.name == "set" and call.id == "req-1"
    assert call.entries == (
        KeywordSpec(phrase="GOOD NIGHT"),
        KeywordSpec(pieces=("▁", "L", "IGHT", "▁UP"), boost=2.0),
    )
    assert retained.version == 2 and retained.keywords == call.entries


async def test_add_remove_pause_resume(
    mosquitto: Mosquitto, mqtt_base_topic: str, tokens_file: Path
) -> None:
    link = make_link(mosquitto, mqtt_base_topic)
    handler = KeywordListHandler(link, tokens_file)
    CommandChannel(link, handler)
    cmd = f"{mqtt_base_topic}/cmd"
    async with running(link), mosquitto.subscriber(f"{cmd}/result") as results:
        steps = [
            ("keywords/add", '["LIGHTS OFF"]', 2),
            ("keywords/add", '{"phrase": "OPEN THE GARAGE", "display": "GARAGE"}', 3),
            ("keywords/remove", '["HEY COMPUTER", "GARAGE"]', 4),
            ("pause", "{}", 5),
            ("resume", '{"reason": "tv off", "id": 9}', 6),
        ]
        for verb, payload, version in steps:
            await mosquitto.publish(f"{cmd}/{verb}", payload)
            reply = CommandReply.from_json((await results.next()).payload)
            assert (reply.command, reply.ok, reply.keywords_version) == (verb, True, version)
    assert handler.keywords == [KeywordSpec(phrase="LIGHTS OFF")]
    assert [c.name for c in handler.calls] == ["add", "add", "remove", "pause", "resume"]
    assert handler.calls[-1].reason == "tv off" and handler.calls[-1].id == "9"
    assert not handler.paused


BAD_COMMANDS = [
    pytest.param("keywords/set", b"LIGHT UP", "not valid JSON", id="not-json"),
    pytest.param("keywords/set", b"42", "got a number", id="number"),
    pytest.param("keywords/add", b"[1, 2]", "keyword 1: expected a phrase", id="list-of-numbers"),
    pytest.param(
        "keywords/add", b'[{"phrase": "X", "boost": "high"}]', "`boost`", id="wrong-field-type"
    ),
    pytest.param(
        "keywords/add", b'[{"phrase": "X", "colour": "red"}]', "unknown field `colour`", id="extra"
    ),
    pytest.param("keywords/add", b'[{"boost": 1.0}]', "needs a non-empty `phrase`", id="no-phrase"),
    pytest.param(
        "keywords/add", b'[{"phrase": "X", "boost": NaN}]', "NaN is not a number", id="nan"
    ),
    pytest.param(
        "keywords/add",
        '[{"pieces": "▁ L IGHT ▁QWZX"}]'.encode(),
        "unknown piece '▁QWZX'",
        id="piece",
    ),
    pytest.param(
        "keywords/set", b"[" + b'"A",' * 262_143 + b'"A"]', "over the 65536-byte limit", id="1MB"
    ),
    pytest.param("keywords/set", bytes(range(256)) * 4, "not UTF-8", id="binary-junk"),
    pytest.param("keywords/set", '["LIGHT UP"]'.encode("utf-16"), "not UTF-8", id="utf16"),
    pytest.param("keywords/set", b"[" * 5000 + b"]" * 5000, "nested too deeply", id="deep"),
    pytest.param("keywords/add", b"[]", "at least one keyword", id="empty-list"),
    pytest.param("keywords/remove", b'["NOT THERE"]', "no keyword named", id="remove-unknown"),
    pytest.param("keywords/del", b'["X"]', "unknown command `cmd/keywords/del`", id="bad-verb"),
    pytest.param("pause", b"[1]", "takes `{}` or a JSON object", id="pause-list"),
    pytest.param("keywords/set", b'{"keywords": [], "id": [1]}', "`id` must be", id="bad-id"),
]


@pytest.mark.parametrize(("verb", "payload", "expected"), BAD_COMMANDS)
async def test_bad_command_gets_error_reply_and_link_keeps_working(
    mosquitto: Mosquitto,
    mqtt_base_topic: str,
    tokens_file: Path,
    verb: str,
    payload: bytes,
    expected: str,
) -> None:
    link = make_link(mosquitto, mqtt_base_topic)
    handler = KeywordListHandler(link, tokens_file)
    CommandChannel(link, handler)
    cmd = f"{mqtt_base_topic}/cmd"
    async with running(link), mosquitto.subscriber(f"{cmd}/result") as results:
        await mosquitto.publish(f"{cmd}/{verb}", payload)
        bad = CommandReply.from_json((await results.next()).payload)
        assert not bad.ok
        assert bad.error is not None and expected in bad.error
        assert bad.keywords_version == 1  # unchanged
        assert handler.keywords == [KeywordSpec(phrase="HEY COMPUTER")]

        await mosquitto.publish(f"{cmd}/keywords/add", b'["LIGHTS OFF"]')
        good = CommandReply.from_json((await results.next()).payload)
        assert (good.ok, good.keywords_version) == (True, 2)
        link.publish_detection(LIGHT_UP)
        async with mosquitto.subscriber(f"{mqtt_base_topic}/detection") as det:
            link.publish_detection(LIGHT_UP)
            assert DetectionPayload.from_json((await det.next()).payload).keyword == "LIGHT_UP"
    assert handler.keywords[-1] == KeywordSpec(phrase="LIGHTS OFF")


async def test_handler_crash_and_missing_handler_are_error_replies(
    mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    class Crashing:
        async def handle(self, command: Command) -> CommandResult:
            raise RuntimeError("boom")

    link = make_link(mosquitto, mqtt_base_topic)
    channel = CommandChannel(link)
    cmd = f"{mqtt_base_topic}/cmd"
    async with running(link), mosquitto.subscriber(f"{cmd}/result") as results:
        await mosquitto.publish(f"{cmd}/pause", b"{}")
        reply = CommandReply.from_json((await results.next()).payload)
        assert not reply.ok and reply.error is not None
        assert "does not accept commands" in reply.error
        channel.handler = Crashing()
        await mosquitto.publish(f"{cmd}/resume", b"{}")
        reply = CommandReply.from_json((await results.next()).payload)
        assert not reply.ok and reply.error is not None
        assert "internal error (RuntimeError: boom)" in reply.error
        assert link.connected


async def test_retained_command_is_not_applied(
    mosquitto: Mosquitto, mqtt_base_topic: str, tokens_file: Path
) -> None:
    cmd = f"{mqtt_base_topic}/cmd"
    await mosquitto.publish(f"{cmd}/keywords/set", b'["STALE"]', retain=True)
    link = make_link(mosquitto, mqtt_base_topic)
    handler = KeywordListHandler(link, tokens_file)
    CommandChannel(link, handler)
    try:
        async with running(link), mosquitto.subscriber(f"{cmd}/result") as results:
            await mosquitto.publish(f"{cmd}/keywords/add", b'["FRESH"]')
            message = await results.wait_for(lambda m: CommandReply.from_json(m.payload).ok)
            reply = CommandReply.from_json(message.payload)
        assert reply.command == "keywords/add"
        assert [c.entries for c in handler.calls] == [(KeywordSpec(phrase="FRESH"),)]
    finally:
        await mosquitto.publish(f"{cmd}/keywords/set", b"", retain=True)


async def test_mqtt_311_detection_status_and_commands(
    mosquitto: Mosquitto, mqtt_base_topic: str, tokens_file: Path
) -> None:
    link = make_link(mosquitto, mqtt_base_topic, protocol="3.1.1")
    handler = KeywordListHandler(link, tokens_file)
    CommandChannel(link, handler)
    v311 = aiomqtt.ProtocolVersion.V311
    async with running(link), mosquitto.subscriber(f"{mqtt_base_topic}/#", protocol=v311) as sub:
        sent = link.publish_detection(LIGHT_UP)
        detection = await sub.wait_for(lambda m: m.topic.value.endswith("/detection"))
        assert DetectionPayload.from_json(detection.payload) == sent
        await mosquitto.publish(f"{mqtt_base_topic}/cmd/keywords/add", b'["LIGHTS OFF"]')
        result = await sub.wait_for(lambda m: m.topic.value.endswith("/cmd/result"))
        assert CommandReply.from_json(result.payload).ok
        async with mosquitto.subscriber(f"{mqtt_base_topic}/status", protocol=v311) as status:
            assert (await status.next()).payload == b"online"
    async with mosquitto.subscriber(f"{mqtt_base_topic}/status", protocol=v311) as status:
        assert (await status.next()).payload == b"offline"


async def test_extra_subscriptions_and_publish_share_the_connection(
    mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    """The hook later integrations (HA discovery, Hermes toggles) build on."""
    link = make_link(mosquitto, mqtt_base_topic)
    ha_status = f"{mqtt_base_topic}-ha/status"
    toggles = f"{mqtt_base_topic}-hermes/hotword/+"
    seen: list[InboundMessage] = []

    async def on_ha(message: InboundMessage) -> None:
        if message.payload == b"explode":
            raise ValueError("a broken integration must not take the link down")
        seen.append(message)
        link.publish(f"{mqtt_base_topic}-ha/config", b'{"n": %d}' % len(seen), retain=True)

    link.subscribe(ha_status, on_ha)  # registered before connecting
    async with running(link):
        link.subscribe(toggles, _collector(seen))  # and while connected
        await wait_until(lambda: link.status.connects == 1)
        await mosquitto.publish(ha_status, b"explode")
        await mosquitto.publish(ha_status, b"online")
        await wait_until(lambda: len(seen) == 1, what="the HA status callback")
        await link.flush()
        async with mosquitto.subscriber(f"{mqtt_base_topic}-ha/config") as cfg:
            retained = await cfg.next()
        assert (retained.payload, retained.retain) == (b'{"n": 1}', True)

        await _eventually_delivered(mosquitto, f"{mqtt_base_topic}-hermes/hotword/toggleOff", seen)
        assert seen[-1].topic == f"{mqtt_base_topic}-hermes/hotword/toggleOff"
        link.publish(f"{mqtt_base_topic}-hermes/error", "plain text event")
        async with mosquitto.subscriber(f"{mqtt_base_topic}-hermes/error") as err:
            link.publish(f"{mqtt_base_topic}-hermes/error", "second event")
            assert (await err.next()).payload == b"second event"
    with pytest.raises(ValueError, match="wildcards"):
        link.publish(f"{mqtt_base_topic}/+", b"x")
    with pytest.raises(ValueError, match="last one"):
        link.subscribe(f"{mqtt_base_topic}/#/x", on_ha)


def _collector(store: list[InboundMessage]) -> MessageCallback:
    async def collect(message: InboundMessage) -> None:
        store.append(message)

    return collect


async def _eventually_delivered(broker: Mosquitto, topic: str, seen: list[InboundMessage]) -> None:
    """A subscription made while connected is live once its SUBACK is back; retry until then."""
    count = len(seen)
    deadline = asyncio.get_running_loop().time() + 10
    while len(seen) == count:
        assert asyncio.get_running_loop().time() < deadline, f"nothing arrived on {topic}"
        await broker.publish(topic, b'{"siteId": "kitchen", "reason": "dialogue"}')
        await asyncio.sleep(0.05)
