"""Mute while an MQTT topic says something is playing (`mute.mute_while_topic`).

A media player or a TV publishes its state (`playing`, `ON`, ...); while that state is
truthy, kwsd adds a `topic` reason to the shared MuteState (kwsd/mute.py), so the
soundtrack cannot trigger automations, and removes it when playback ends.
"""

from __future__ import annotations

from typing import Final

from kwsd.mqtt.link import MqttLink
from kwsd.mqtt.messages import InboundMessage
from kwsd.mute import TOPIC, MuteState

_TRUTHY: Final = frozenset({"on", "true", "1", "yes", "playing", "muted", "active"})


def is_truthy(payload: bytes | str) -> bool:
    """A topic payload that means "mute now": ON/true/1/yes/playing (case-insensitive)."""
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    return text.strip().strip('"').lower() in _TRUTHY


class MuteWhileTopic:
    """Mute while the last payload on an MQTT topic is truthy (`mute.mute_while_topic`).

    Subscribing delivers the retained value at once, so a media player that is already
    playing when kwsd starts mutes it straight away.
    """

    def __init__(self, link: MqttLink, topic: str, mute: MuteState) -> None:
        self.topic = topic
        self.mute = mute
        link.subscribe(topic, self._on_message)

    async def _on_message(self, message: InboundMessage) -> None:
        if is_truthy(message.payload):
            self.mute.add(TOPIC, message.topic)
        else:
            self.mute.remove(TOPIC, message.topic)
