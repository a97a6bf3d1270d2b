"""Rhasspy Hermes hotword against a real mosquitto: detected messages and toggles."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from async_support import wait_until
from mqtt_broker import Mosquitto, link_options, running

from kwsd.detection import Detection
from kwsd.integrations.hermes import HermesHotword, wakeword_id
from kwsd.mqtt import MqttLink
from kwsd.mute import HERMES, MuteState

HEY = Detection("HEY COMPUTER", "HEY COMPUTER", ("▁HE", "Y", "▁COMPUTER"), 0.4, 0.76, 0.59, 19)


@pytest.fixture
def site_id() -> str:
    """Hermes topics are global: each test is its own site so toggles never cross."""
    return f"room-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def hermes(
    mosquitto: Mosquitto, base: str, site_id: str
) -> AsyncIterator[tuple[HermesHotword, MuteState]]:
    link = MqttLink(link_options(mosquitto, base), site=site_id, model="m")
    mute = MuteState()
    hotword = HermesHotword(link, site_id, mute, model_version="0.1.0")
    async with running(link):
        yield hotword, mute


def toggle(site_id: str | None, reason: str | None) -> bytes:
    body = {}
    if site_id is not None:
        body["siteId"] = site_id
    if reason is not None:
        body["reason"] = reason
    return json.dumps(body).encode()


def test_wakeword_id() -> None:
    assert wakeword_id("HEY COMPUTER") == "hey_computer"
    assert wakeword_id("LIGHT_UP") == "light_up"
    assert wakeword_id(" a/b+#c ") == "a_b_c"


async def test_detected_topic_and_payload(
    mosquitto: Mosquitto, mqtt_base_topic: str, site_id: str
) -> None:
    async with (
        hermes(mosquitto, mqtt_base_topic, site_id) as (hotword, _),
        mosquitto.subscriber("hermes/hotword/+/detected") as sub,
    ):
        hotword.on_detection(HEY)
        message = await sub.wait_for(lambda m: json.loads(m.payload)["siteId"] == site_id)
    assert message.topic.value == "hermes/hotword/hey_computer/detected"
    assert not message.retain
    assert json.loads(message.payload) == {
        "modelId": "HEY COMPUTER",
        "modelVersion": "0.1.0",
        "modelType": "universal",
        "currentSensitivity": 0.5,
        "siteId": site_id,
    }


async def test_toggle_reasons_are_a_set_and_other_sites_are_ignored(
    mosquitto: Mosquitto, mqtt_base_topic: str, site_id: str
) -> None:
    off, on = "hermes/hotword/toggleOff", "hermes/hotword/toggleOn"

    async def reasons_become(expected: set[str]) -> None:
        await wait_until(
            lambda: {r for s, r in mute.reasons if s == HERMES} == expected,
            what=f"hermes reasons {expected}",
        )

    async with hermes(mosquitto, mqtt_base_topic, site_id) as (_, mute):
        await mosquitto.publish(off, toggle("elsewhere", "ttsSay"))
        await mosquitto.publish(off, toggle(site_id, "ttsSay"))
        await mosquitto.publish(off, toggle(site_id, "playAudio"))
        await reasons_become({"ttsSay", "playAudio"})
        assert mute.muted

        await mosquitto.publish(on, toggle(site_id, "ttsSay"))
        await reasons_become({"playAudio"})
        assert mute.muted  # playAudio still holds it

        await mosquitto.publish(on, toggle("elsewhere", ""))  # not our site: no effect
        await mosquitto.publish(on, toggle(site_id, "playAudio"))
        await reasons_become(set())
        assert not mute.muted

        # An empty reason on toggleOn clears every Hermes reason, never an MQTT pause.
        mute.pause("user")
        await mosquitto.publish(off, toggle(site_id, "dialogueSession"))
        await mosquitto.publish(off, toggle(site_id, ""))
        await reasons_become({"dialogueSession", ""})
        await mosquitto.publish(on, toggle(site_id, None))
        await reasons_become(set())
        assert mute.muted and mute.paused


async def test_missing_site_id_means_default(mosquitto: Mosquitto, mqtt_base_topic: str) -> None:
    async with hermes(mosquitto, mqtt_base_topic, "default") as (_, mute):
        await mosquitto.publish("hermes/hotword/toggleOff", toggle(None, "ttsSay"))
        await wait_until(lambda: mute.muted)
        await mosquitto.publish("hermes/hotword/toggleOn", b"")
        await wait_until(lambda: not mute.muted)


async def test_bad_toggle_payload_reports_error_and_keeps_state(
    mosquitto: Mosquitto, mqtt_base_topic: str, site_id: str
) -> None:
    async with (
        hermes(mosquitto, mqtt_base_topic, site_id) as (_, mute),
        mosquitto.subscriber("hermes/error/hotword") as errors,
    ):
        await mosquitto.publish("hermes/hotword/toggleOff", toggle(site_id, "ttsSay"))
        await wait_until(lambda: mute.muted)
        await mosquitto.publish("hermes/hotword/toggleOn", b"{not json")
        await mosquitto.publish("hermes/hotword/toggleOn", b'{"siteId": 5}')
        first = await errors.wait_for(lambda m: json.loads(m.payload)["siteId"] == site_id)
        second = await errors.wait_for(lambda m: json.loads(m.payload)["siteId"] == site_id)
        assert "not JSON" in json.loads(first.payload)["error"]
        assert "must be strings" in json.loads(second.payload)["error"]
        assert mute.reasons == {(HERMES, "ttsSay")}
