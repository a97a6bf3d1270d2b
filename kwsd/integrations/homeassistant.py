"""Home Assistant MQTT discovery: each kwsd site appears as one device, no YAML needed.

What HA gets for a site (node id `<node>`, base topic `<base>`):

- an `event` entity "Keyword" whose event types are the active keywords' display names,
  fed from `<base>/event` (`{"event_type": <keyword>, ...detection fields}`), never
  retained: HA would replay a retained event as a new detection after its restart;
- one device trigger per keyword on the same topic, so "when kwsd kitchen hears HEY
  COMPUTER" is a point-and-click automation;
- a `switch` entity "Paused", which relays to `<base>/cmd/pause` / `cmd/resume` (so a
  pause from HA is the same command, with the same reply, as one from anywhere else)
  and shows the retained pause state from `<base>/paused`;
- availability from kwsd's retained `<base>/status` (last will `offline`).

Discovery configs are retained and re-sent when HA announces `online` on
`<prefix>/status` (a restarted HA with a non-persistent broker forgets them). Triggers
of removed keywords are deleted with an empty retained config, including ones left
behind by an earlier run with another keyword list.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import structlog

from kwsd.config import HomeAssistantSettings
from kwsd.detection import Detection
from kwsd.keywords import KeywordSet
from kwsd.mqtt.link import MqttLink
from kwsd.mqtt.messages import InboundMessage
from kwsd.mute import MuteState
from kwsd.registry import RegistryState

log = structlog.get_logger("kwsd.homeassistant")

ON: Final = "ON"
OFF: Final = "OFF"
TRIGGER_TYPE: Final = "detected"
_TRIGGER_PREFIX: Final = "keyword_"


def slug(text: str) -> str:
    """A discovery object id fragment: lower-case letters, digits and `_`."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "keyword"


def _dumps(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class HomeAssistantDiscovery:
    """Publishes and maintains the discovery documents of one kwsd site.

    A daemon Output (kwsd/outputs.py) riding on the MQTT link, which the MQTT output
    runs: construct it once the link exists (it subscribes at once; messages flow when
    the link runs). `on_keywords` (re)publishes discovery when the list changes (or
    call `publish(keyword_set)`), and `on_detection(det)` fires the event for every
    detection that passed the detection gate. Pass the daemon's `mute` (whose pause
    the `cmd/pause|resume` handler sets) to get the pause switch; without it only the
    event entity and triggers are announced.
    """

    def __init__(
        self,
        link: MqttLink,
        settings: HomeAssistantSettings,
        site: str,
        version: str,
        *,
        mute: MuteState | None = None,
    ) -> None:
        self.link = link
        self.prefix = settings.discovery_prefix.rstrip("/")
        self.node = settings.node_id
        self.site = site
        self.version = version
        self.mute = mute
        base = link.topics.base
        self.event_topic = f"{base}/event"
        self.paused_topic = f"{base}/paused"
        self.paused_command_topic = f"{base}/paused/set"
        self._pause_topic = f"{base}/cmd/pause"
        self._resume_topic = f"{base}/cmd/resume"
        self._displays: tuple[str, ...] | None = None  # None until the first publish
        self._version: int | None = None  # keyword list version last published
        self._triggers: dict[str, str] = {}  # config topic -> display name
        self._retained_triggers: set[str] = set()  # our node's trigger configs on the broker
        link.subscribe(f"{self.prefix}/status", self._on_ha_status)
        link.subscribe(f"{self.prefix}/device_automation/{self.node}/+/config", self._on_trigger)
        link.subscribe(self.paused_command_topic, self._on_paused_command)
        if mute is not None:
            mute.add_listener(lambda state: self._publish_paused(state.paused))
            self._publish_paused(mute.paused)

    # ------------------------------------------------------------- documents

    @property
    def device(self) -> dict[str, Any]:
        return {
            "identifiers": [f"kwsd_{self.node}"],
            "name": f"kwsd {self.site}",
            "manufacturer": "kwsd",
            "model": "kwsd",
            "sw_version": self.version,
        }

    @property
    def origin(self) -> dict[str, Any]:
        return {"name": "kwsd", "sw_version": self.version}

    def _availability(self) -> dict[str, Any]:
        return {
            "availability_topic": self.link.topics.status,
            "payload_available": "online",
            "payload_not_available": "offline",
        }

    @property
    def event_config_topic(self) -> str:
        return f"{self.prefix}/event/{self.node}/keyword/config"

    @property
    def switch_config_topic(self) -> str:
        return f"{self.prefix}/switch/{self.node}/paused/config"

    def trigger_config_topic(self, object_id: str) -> str:
        return f"{self.prefix}/device_automation/{self.node}/{object_id}/config"

    def event_config(self, displays: Iterable[str]) -> dict[str, Any]:
        return {
            "name": "Keyword",
            "unique_id": f"kwsd_{self.node}_keyword",
            "state_topic": self.event_topic,
            "event_types": list(displays),
            "icon": "mdi:account-voice",
            "qos": 1,
            **self._availability(),
            "device": self.device,
            "origin": self.origin,
        }

    def switch_config(self) -> dict[str, Any]:
        return {
            "name": "Paused",
            "unique_id": f"kwsd_{self.node}_paused",
            "command_topic": self.paused_command_topic,
            "state_topic": self.paused_topic,
            "payload_on": ON,
            "payload_off": OFF,
            "icon": "mdi:microphone-off",
            "qos": 1,
            **self._availability(),
            "device": self.device,
            "origin": self.origin,
        }

    def trigger_config(self, display: str) -> dict[str, Any]:
        return {
            "automation_type": "trigger",
            "topic": self.event_topic,
            "type": TRIGGER_TYPE,
            "subtype": display,
            "payload": display,
            "value_template": "{{ value_json.event_type }}",
            "qos": 1,
            "device": self.device,
            "origin": self.origin,
        }

    def trigger_object_ids(self, displays: Iterable[str]) -> dict[str, str]:
        """display → object id; a hash suffix keeps ids unique when slugs collide."""
        displays = list(dict.fromkeys(displays))
        counts: dict[str, int] = {}
        for display in displays:
            counts[slug(display)] = counts.get(slug(display), 0) + 1
        ids = {}
        for display in displays:
            base = slug(display)
            if counts[base] > 1:
                base += "_" + hashlib.sha1(display.encode()).hexdigest()[:6]
            ids[display] = _TRIGGER_PREFIX + base
        return ids

    # ---------------------------------------------------------------- Output

    async def start(self) -> None:
        """Nothing to start: the link is run by the MQTT output."""

    async def close(self) -> None:
        """Nothing to close: the discovery documents stay retained on purpose."""

    def on_keywords(self, state: RegistryState) -> None:
        # Pause and resume notify too; the pause switch follows `mute` on its own.
        if state.version != self._version:
            self._version = state.version
            self.publish(state.keyword_set)

    # ------------------------------------------------------------ publishing

    def publish(self, keywords: KeywordSet | Iterable[str]) -> None:
        """(Re)publish discovery for the active keywords; delete triggers of removed ones."""
        displays = tuple(
            dict.fromkeys(keywords.displays() if isinstance(keywords, KeywordSet) else keywords)
        )
        self._displays = displays
        self._publish_all()

    def _publish_all(self) -> None:
        displays = self._displays
        if displays is None:
            return
        link = self.link
        link.publish(self.event_config_topic, _dumps(self.event_config(displays)), retain=True)
        if self.mute is not None:  # the switch shows the pause state, so it needs one
            link.publish(self.switch_config_topic, _dumps(self.switch_config()), retain=True)
        triggers = {
            self.trigger_config_topic(object_id): display
            for display, object_id in self.trigger_object_ids(displays).items()
        }
        for topic, display in triggers.items():
            link.publish(topic, _dumps(self.trigger_config(display)), retain=True)
        stale = set(self._triggers) - set(triggers)
        self._triggers = triggers
        for topic in sorted(stale):
            self._delete(topic)
        self._delete_strays()
        log.info(
            "Home Assistant discovery published",
            prefix=self.prefix,
            node_id=self.node,
            keywords=list(displays),
            removed_triggers=len(stale),
        )

    def _delete(self, topic: str) -> None:
        self.link.publish(topic, b"", retain=True)

    def _delete_strays(self) -> None:
        """Trigger configs on the broker for keywords we do not spot (an older run's)."""
        if self._displays is None:
            return  # the first publish decides what is current
        for topic in sorted(self._retained_triggers - set(self._triggers)):
            log.info("removing a stale Home Assistant device trigger", topic=topic)
            self._retained_triggers.discard(topic)
            self._delete(topic)

    def on_detection(self, det: Detection) -> None:
        """Fire the event entity and the keyword's device trigger (not retained).

        The document carries the same `id` and `time` as the `<base>/detection` message
        for this detection, so the two can be matched.
        """
        payload = self.link.detection_payload(det)
        document = {"event_type": det.keyword, **payload.to_dict()}
        self.link.publish(self.event_topic, _dumps(document), retain=False)

    def _publish_paused(self, paused: bool) -> None:
        self.link.publish(self.paused_topic, ON if paused else OFF, retain=True)

    # --------------------------------------------------------------- inbound

    async def _on_ha_status(self, message: InboundMessage) -> None:
        if message.payload.strip().lower() == b"online":
            log.info("Home Assistant came online: re-publishing discovery")
            self._publish_all()

    async def _on_trigger(self, message: InboundMessage) -> None:
        if message.payload:
            self._retained_triggers.add(message.topic)
            if message.topic not in self._triggers:
                self._delete_strays()
        else:
            self._retained_triggers.discard(message.topic)

    async def _on_paused_command(self, message: InboundMessage) -> None:
        if message.retain:
            log.warning(
                "ignoring a retained pause switch command; clear it with "
                f"`mosquitto_pub -r -n -t '{message.topic}'`"
            )
            return
        text = message.payload.decode("utf-8", "replace").strip().upper()
        if not text:
            return  # not a command: someone cleared a retained message on the topic
        if text == ON:
            self.link.publish(self._pause_topic, b"{}", retain=False)
        elif text == OFF:
            self.link.publish(self._resume_topic, b"{}", retain=False)
        else:
            log.warning(
                "pause switch command ignored: send ON or OFF",
                topic=message.topic,
                payload=text[:40],
            )
