"""Home Assistant discovery against a real mosquitto: exact documents, retain flags, clean-up."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import pytest
from async_support import wait_until
from mqtt_broker import Mosquitto, Subscriber, link_options, running
from paho.mqtt.subscribeoptions import SubscribeOptions

from kwsd.config import HomeAssistantSettings
from kwsd.detection import Detection
from kwsd.integrations.homeassistant import HomeAssistantDiscovery, slug
from kwsd.mqtt import Command, CommandChannel, CommandResult, MqttLink, MqttOptions
from kwsd.mute import MuteState

VERSION = "1.2.3"
HEY = Detection("HEY COMPUTER", "HEY COMPUTER", ("▁HE", "Y", "▁COMPUTER"), 0.4, 0.76, 0.59, 19)


class PauseHandler:
    """The daemon's side of cmd/pause|resume, reduced to what the switch needs."""

    def __init__(self, mute: MuteState) -> None:
        self.mute = mute

    async def handle(self, command: Command) -> CommandResult:
        if command.name == "pause":
            self.mute.pause(command.reason)
        elif command.name == "resume":
            self.mute.resume(command.reason)
        return CommandResult(ok=True)


@pytest.fixture
def prefix() -> str:
    """A discovery prefix of the test's own, so retained configs never leak between tests."""
    return f"ha-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def site(
    mosquitto: Mosquitto, base: str, prefix: str, *, mute: MuteState | None = None
) -> AsyncIterator[tuple[MqttLink, HomeAssistantDiscovery]]:
    link = MqttLink(link_options(mosquitto, base), site="kitchen", model="m")
    CommandChannel(link, PauseHandler(mute) if mute is not None else None)
    settings = HomeAssistantSettings(discovery_prefix=prefix, node_id="kitchen")
    ha = HomeAssistantDiscovery(link, settings, "kitchen", VERSION, mute=mute)
    async with running(link):
        yield link, ha


@asynccontextmanager
async def watch(mosquitto: Mosquitto, topic_filter: str) -> AsyncIterator[Subscriber]:
    """A subscriber that sees each message's real retain flag (MQTT 5 retain-as-published)."""
    async with mosquitto.client() as client:
        sub = Subscriber(client, topic_filter)
        await client.subscribe(
            topic_filter, options=SubscribeOptions(qos=1, retainAsPublished=True)
        )
        pump = asyncio.create_task(sub.pump())
        try:
            yield sub
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)


def device() -> dict[str, Any]:
    return {
        "identifiers": ["kwsd_kitchen"],
        "name": "kwsd kitchen",
        "manufacturer": "kwsd",
        "model": "kwsd",
        "sw_version": VERSION,
    }


ORIGIN = {"name": "kwsd", "sw_version": VERSION}


def availability(base: str) -> dict[str, Any]:
    return {
        "availability_topic": f"{base}/status",
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def trigger(base: str, display: str) -> dict[str, Any]:
    return {
        "automation_type": "trigger",
        "topic": f"{base}/event",
        "type": "detected",
        "subtype": display,
        "payload": display,
        "value_template": "{{ value_json.event_type }}",
        "qos": 1,
        "device": device(),
        "origin": ORIGIN,
    }


async def retained(mosquitto: Mosquitto, topic_filter: str, count: int) -> dict[str, Any]:
    """What a client connecting now receives as retained on `topic_filter`: topic → JSON."""
    async with mosquitto.subscriber(topic_filter) as sub:
        messages = await sub.take(count)
    assert all(m.retain for m in messages)
    return {m.topic.value: json.loads(m.payload) for m in messages}


def _is_config(message: aiomqtt.Message) -> bool:
    return message.topic.value.endswith("/config")


async def test_discovery_documents_exact_and_retained(
    mosquitto: Mosquitto, mqtt_base_topic: str, prefix: str
) -> None:
    base = mqtt_base_topic
    async with site(mosquitto, base, prefix, mute=MuteState()) as (link, ha):
        ha.publish(["HEY COMPUTER", "LIGHTS OFF"])
        await link.flush()
        docs = await retained(mosquitto, f"{prefix}/#", 4)
    assert docs == {
        f"{prefix}/event/kitchen/keyword/config": {
            "name": "Keyword",
            "unique_id": "kwsd_kitchen_keyword",
            "state_topic": f"{base}/event",
            "event_types": ["HEY COMPUTER", "LIGHTS OFF"],
            "icon": "mdi:account-voice",
            "qos": 1,
            **availability(base),
            "device": device(),
            "origin": ORIGIN,
        },
        f"{prefix}/switch/kitchen/paused/config": {
            "name": "Paused",
            "unique_id": "kwsd_kitchen_paused",
            "command_topic": f"{base}/paused/set",
            "state_topic": f"{base}/paused",
            "payload_on": "ON",
            "payload_off": "OFF",
            "icon": "mdi:microphone-off",
            "qos": 1,
            **availability(base),
            "device": device(),
            "origin": ORIGIN,
        },
        f"{prefix}/device_automation/kitchen/keyword_hey_computer/config": trigger(
            base, "HEY COMPUTER"
        ),
        f"{prefix}/device_automation/kitchen/keyword_lights_off/config": trigger(
            base, "LIGHTS OFF"
        ),
    }


async def test_keyword_change_updates_event_types_and_deletes_removed_triggers(
    mosquitto: Mosquitto, mqtt_base_topic: str, prefix: str
) -> None:
    async with site(mosquitto, mqtt_base_topic, prefix, mute=MuteState()) as (link, ha):
        ha.publish(["HEY COMPUTER", "LIGHTS OFF"])
        await link.flush()
        async with watch(mosquitto, f"{prefix}/#") as sub:
            await sub.take(4)  # the retained configs
            ha.publish(["HEY COMPUTER", "GOOD NIGHT"])
            removed = await sub.wait_for(lambda m: m.payload == b"")
            assert removed.topic.value == (
                f"{prefix}/device_automation/kitchen/keyword_lights_off/config"
            )
            assert removed.retain
        await link.flush()
        docs = await retained(mosquitto, f"{prefix}/#", 4)
    assert sorted(docs) == sorted(
        [
            f"{prefix}/event/kitchen/keyword/config",
            f"{prefix}/switch/kitchen/paused/config",
            f"{prefix}/device_automation/kitchen/keyword_hey_computer/config",
            f"{prefix}/device_automation/kitchen/keyword_good_night/config",
        ]
    )
    assert docs[f"{prefix}/event/kitchen/keyword/config"]["event_types"] == [
        "HEY COMPUTER",
        "GOOD NIGHT",
    ]


async def test_triggers_left_by_an_earlier_run_are_deleted(
    mosquitto: Mosquitto, mqtt_base_topic: str, prefix: str
) -> None:
    old = f"{prefix}/device_automation/kitchen/keyword_open_sesame/config"
    other_node = f"{prefix}/device_automation/garage/keyword_open_sesame/config"
    await mosquitto.publish(old, json.dumps(trigger(mqtt_base_topic, "OPEN SESAME")), retain=True)
    await mosquitto.publish(other_node, b'{"automation_type": "trigger"}', retain=True)
    async with watch(mosquitto, old) as sub, site(mosquitto, mqtt_base_topic, prefix) as (_, ha):
        await sub.next()  # the old retained config
        ha.publish(["HEY COMPUTER"])
        removed = await sub.next()
        assert (removed.payload, removed.retain) == (b"", True)
    # Another site's triggers on the same broker are not ours to delete.
    docs = await retained(mosquitto, other_node, 1)
    assert docs == {other_node: {"automation_type": "trigger"}}


async def test_discovery_republished_when_home_assistant_comes_online(
    mosquitto: Mosquitto, mqtt_base_topic: str, prefix: str
) -> None:
    async with site(mosquitto, mqtt_base_topic, prefix) as (link, ha):
        ha.publish(["HEY COMPUTER"])
        await link.flush()
        async with watch(mosquitto, f"{prefix}/+/kitchen/#") as sub:
            first = await sub.take(2)  # no mute given: event entity and trigger, no switch
            await mosquitto.publish(f"{prefix}/status", b"offline")
            await mosquitto.publish(f"{prefix}/status", b"online")
            again = await sub.take(2)
    assert {m.topic.value for m in first} == {
        f"{prefix}/event/kitchen/keyword/config",
        f"{prefix}/device_automation/kitchen/keyword_hey_computer/config",
    }
    assert {m.topic.value for m in first} == {m.topic.value for m in again}
    assert all(m.retain for m in again)
    assert {m.payload for m in first} == {m.payload for m in again}


async def test_detection_event_not_retained_with_event_type_and_fields(
    mosquitto: Mosquitto, mqtt_base_topic: str, prefix: str
) -> None:
    async with (
        site(mosquitto, mqtt_base_topic, prefix) as (_, ha),
        watch(mosquitto, f"{mqtt_base_topic}/event") as sub,
    ):
        ha.on_detection(HEY)
        message = await sub.next()
    assert message.retain is False
    assert message.qos == 1
    body = json.loads(message.payload)
    assert body["event_type"] == "HEY COMPUTER"
    assert {k: body[k] for k in ("keyword", "phrase", "start", "end", "score", "site")} == {
        "keyword": "HEY COMPUTER",
        "phrase": "HEY COMPUTER",
        "start": 0.4,
        "end": 0.76,
        "score": 0.59,
        "site": "kitchen",
    }
    assert body["tokens"] == ["▁HE", "Y", "▁COMPUTER"] and body["id"] and body["time"]


async def test_pause_switch_relays_to_commands_and_shows_retained_state(
    mosquitto: Mosquitto, mqtt_base_topic: str, prefix: str
) -> None:
    base = mqtt_base_topic
    mute = MuteState()
    async with site(mosquitto, base, prefix, mute=mute) as (link, _):
        async with watch(mosquitto, f"{base}/#") as sub:
            state = await sub.wait_for(lambda m: m.topic.value == f"{base}/paused")
            assert (state.payload, state.retain) == (b"OFF", True)
            await mosquitto.publish(f"{base}/paused/set", b"ON")
            await sub.wait_for(lambda m: m.topic.value == f"{base}/cmd/pause")
            state = await sub.wait_for(lambda m: m.topic.value == f"{base}/paused")
            assert (state.payload, state.retain) == (b"ON", True)
            assert mute.muted and mute.paused
            await mosquitto.publish(f"{base}/paused/set", b"bogus")
            await mosquitto.publish(f"{base}/paused/set", b"OFF")
            await sub.wait_for(lambda m: m.topic.value == f"{base}/cmd/resume")
            state = await sub.wait_for(lambda m: m.topic.value == f"{base}/paused")
            assert state.payload == b"OFF"
            await wait_until(lambda: not mute.muted)
        await link.flush()
        async with mosquitto.subscriber(f"{base}/paused") as fresh:
            last = await fresh.next()
    assert (last.payload, last.retain) == (b"OFF", True)


def test_object_ids_are_unique_and_safe() -> None:
    options = MqttOptions(host="127.0.0.1", port=1, base_topic="kwsd/s")
    link = MqttLink(options, site="s", model="m")
    ha = HomeAssistantDiscovery(link, HomeAssistantSettings(node_id="s"), "s", VERSION)
    ids = ha.trigger_object_ids(["LIGHT UP", "LIGHT_UP", "Grüße/#+"])
    assert len(set(ids.values())) == 3
    assert all(i.startswith("keyword_") and slug(i) == i for i in ids.values())
    assert ids["Grüße/#+"] == "keyword_gr_e"
