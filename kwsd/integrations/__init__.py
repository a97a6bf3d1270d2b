"""Integrations the daemon plugs in beside its own MQTT topics.

- `HomeAssistantDiscovery` (homeassistant.py): MQTT discovery of the site as an HA device.
- `HermesHotword` (hermes.py): the Rhasspy Hermes hotword protocol.
- `MuteWhileTopic` (mute_topic.py): mute while an MQTT topic's last payload is truthy.

The first two are daemon outputs (kwsd/outputs.py). The mute state they share, and the
detection gate that applies it, live in the core: kwsd/mute.py and kwsd/gate.py.
"""

from kwsd.integrations.hermes import HermesHotword, wakeword_id
from kwsd.integrations.homeassistant import HomeAssistantDiscovery
from kwsd.integrations.mute_topic import MuteWhileTopic, is_truthy

__all__ = [
    "HermesHotword",
    "HomeAssistantDiscovery",
    "MuteWhileTopic",
    "is_truthy",
    "wakeword_id",
]
