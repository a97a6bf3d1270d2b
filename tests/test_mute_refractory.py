"""Anti-retrigger (refractory per keyword) and the global mute with its reasons."""

from __future__ import annotations

import uuid

import pytest
from async_support import wait_until
from mqtt_broker import Mosquitto, link_options, running

from kwsd.detection import Detection
from kwsd.integrations.mute_topic import MuteWhileTopic, is_truthy
from kwsd.mqtt import MqttLink
from kwsd.mute import PAUSE, TOPIC, MuteState
from kwsd.refractory import Refractory


def det(keyword: str, end: float) -> Detection:
    return Detection(keyword, keyword, ("▁X",), end - 0.3, end, 0.6, round(end / 0.04))


def test_refractory_drops_repeats_of_the_same_keyword_within_the_window() -> None:
    gate = Refractory(1.0)
    assert gate.allow(det("HEY COMPUTER", 2.0))
    assert not gate.allow(det("HEY COMPUTER", 2.5))
    assert not gate.allow(det("HEY COMPUTER", 2.96))
    assert gate.allow(det("HEY COMPUTER", 3.0))  # exactly one second later
    assert not gate.allow(det("HEY COMPUTER", 3.4))
    assert gate.suppressed == 3


def test_refractory_is_per_keyword() -> None:
    gate = Refractory(1.0)
    assert gate.allow(det("HEY COMPUTER", 2.0))
    assert gate.allow(det("LIGHTS ON", 2.2))
    assert not gate.allow(det("LIGHTS ON", 2.5))


def test_suppressed_repeats_do_not_extend_the_window() -> None:
    gate = Refractory(1.0)
    assert gate.allow(det("A", 1.0))
    assert not gate.allow(det("A", 1.9))
    assert gate.allow(det("A", 2.1))


def test_refractory_restarted_stream_and_zero_window_and_reset() -> None:
    gate = Refractory(1.0)
    assert gate.allow(det("A", 10.0))
    assert gate.allow(det("A", 0.5))  # a new stream starts at 0 again
    assert Refractory(0.0).allow(det("A", 1.0))
    zero = Refractory(0.0)
    assert zero.allow(det("A", 1.0)) and zero.allow(det("A", 1.0))
    gate.reset()
    assert gate.allow(det("A", 0.6))
    with pytest.raises(ValueError):
        Refractory(-1)


def test_mute_is_a_set_of_reasons() -> None:
    mute = MuteState()
    changes: list[bool] = []
    mute.add_listener(lambda state: changes.append(state.muted))
    mute.pause("tv")
    mute.pause("night")
    assert mute.muted and mute.paused
    mute.resume("tv")
    assert mute.muted
    mute.add("hermes", "ttsSay")
    mute.resume()  # without a reason: every pause ends, Hermes still mutes
    assert mute.muted and not mute.paused
    mute.remove("hermes", "other")  # unknown reason: no change, no notification
    mute.remove("hermes", "ttsSay")
    assert not mute.muted
    assert changes == [True, True, True, True, True, False]


def test_a_failing_listener_does_not_break_muting() -> None:
    mute = MuteState()

    def broken(_: MuteState) -> None:
        raise RuntimeError("boom")

    seen: list[frozenset[tuple[str, str]]] = []
    mute.add_listener(broken)
    mute.add_listener(lambda state: seen.append(state.reasons))
    mute.pause()
    assert seen == [frozenset({(PAUSE, "")})]
    mute.clear()
    assert not mute.muted


@pytest.mark.parametrize(
    ("payload", "truthy"),
    [
        (b"ON", True),
        (b"true", True),
        (b" 1\n", True),
        (b"playing", True),
        (b'"on"', True),
        (b"OFF", False),
        (b"0", False),
        (b"idle", False),
        (b"", False),
        (b"\xff\xfe", False),
    ],
)
def test_truthy_payloads(payload: bytes, truthy: bool) -> None:
    assert is_truthy(payload) is truthy


async def test_mute_while_topic_follows_a_retained_state(
    mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    topic = f"test-media/{uuid.uuid4().hex[:8]}/state"
    await mosquitto.publish(topic, b"playing", retain=True)  # already playing at start
    link = MqttLink(link_options(mosquitto, mqtt_base_topic), site="s", model="m")
    mute = MuteState()
    MuteWhileTopic(link, topic, mute)
    async with running(link):
        await wait_until(lambda: mute.reasons == {(TOPIC, topic)}, what="mute at start")
        await mosquitto.publish(topic, b"idle", retain=True)
        await wait_until(lambda: not mute.muted, what="unmute")
        await mosquitto.publish(topic, b"ON")
        await wait_until(lambda: mute.muted, what="mute again")
    await mosquitto.publish(topic, None, retain=True)
