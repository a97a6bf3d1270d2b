"""Integrations the daemon plugs in beside its own MQTT topics.

- `MuteState` (mute.py): why spotting is muted right now (a set of reasons).
- `MuteWhileTopic` (mute.py): mute while an MQTT topic's last payload is truthy.
- `Refractory` (refractory.py): drops repeats of one keyword within a short window.
- `HomeAssistantDiscovery` (homeassistant.py): MQTT discovery of the site as an HA device.
- `HermesHotword` (hermes.py): the Rhasspy Hermes hotword protocol.
"""

from kwsd.integrations.hermes import HermesHotword, wakeword_id
from kwsd.integrations.homeassistant import HomeAssistantDiscovery
from kwsd.integrations.mute import MuteState, MuteWhileTopic, is_truthy
from kwsd.integrations.refractory import Refractory

__all__ = [
    "HermesHotword",
    "HomeAssistantDiscovery",
    "MuteState",
    "MuteWhileTopic",
    "Refractory",
    "is_truthy",
    "wakeword_id",
]
