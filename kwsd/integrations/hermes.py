"""The Rhasspy Hermes hotword protocol, so kwsd can be Rhasspy's wake word service.

Out: `hermes/hotword/<wakewordId>/detected` per detection. In: `hermes/hotword/toggleOff`
and `toggleOn` (`{"siteId", "reason"}`), which Rhasspy's dialogue manager sends around
every session and TTS playback so the satellite does not wake itself up. Each toggleOff
reason is tracked separately in the shared MuteState (an overlapping `ttsSay` and
`playAudio` both have to end); a toggleOn with an empty reason clears them all.
Messages for other sites are ignored, as a multi-room Rhasspy sends them to everyone.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

import structlog

from kwsd.detection import Detection
from kwsd.keywords import KeywordSet
from kwsd.mqtt.link import MqttLink
from kwsd.mqtt.messages import InboundMessage
from kwsd.mute import HERMES, MuteState
from kwsd.registry import RegistryState

log = structlog.get_logger("kwsd.hermes")

TOGGLE_OFF: Final = "hermes/hotword/toggleOff"
TOGGLE_ON: Final = "hermes/hotword/toggleOn"
ERROR_TOPIC: Final = "hermes/error/hotword"
DEFAULT_SITE: Final = "default"  # what Hermes assumes when a message names no siteId


def wakeword_id(display: str) -> str:
    """`HEY COMPUTER` → `hey_computer` (a single MQTT topic level)."""
    cleaned = re.sub(r"[\s/+#]+", "_", display.strip().lower())
    return cleaned.strip("_") or "keyword"


class HermesHotword:
    """Speaks Hermes hotword for one site on the daemon's MQTT link.

    A daemon Output (kwsd/outputs.py) riding on the link the MQTT output runs:
    `on_keywords` (or `set_keywords(keyword_set)`) after every keyword change, for
    sensitivities; `on_detection(det)` for every detection that passed the detection
    gate. `wakeword_ids` overrides the default id of a display name.
    """

    def __init__(
        self,
        link: MqttLink,
        site_id: str,
        mute: MuteState,
        *,
        model_version: str = "",
        wakeword_ids: dict[str, str] | None = None,
    ) -> None:
        self.link = link
        self.site_id = site_id
        self.mute = mute
        self.model_version = model_version
        self.wakeword_ids = dict(wakeword_ids or {})
        self._thresholds: dict[str, float] = {}
        link.subscribe(TOGGLE_OFF, self._on_toggle)
        link.subscribe(TOGGLE_ON, self._on_toggle)

    async def start(self) -> None:
        """Nothing to start: the link is run by the MQTT output."""

    async def close(self) -> None:
        """Nothing to close."""

    def on_keywords(self, state: RegistryState) -> None:
        self.set_keywords(state.keyword_set)

    def set_keywords(self, keywords: KeywordSet) -> None:
        self._thresholds = {k.display: k.threshold for k in keywords.keywords}

    def detected_topic(self, display: str) -> str:
        ident = self.wakeword_ids.get(display) or wakeword_id(display)
        return f"hermes/hotword/{ident}/detected"

    def detected_payload(self, det: Detection) -> dict[str, Any]:
        threshold = self._thresholds.get(det.keyword)
        # Hermes sensitivity grows with recall; kwsd's threshold grows with strictness.
        sensitivity = round(1.0 - threshold, 4) if threshold is not None else 0.5
        return {
            "modelId": det.keyword,
            "modelVersion": self.model_version,
            "modelType": "universal",
            "currentSensitivity": sensitivity,
            "siteId": self.site_id,
        }

    def on_detection(self, det: Detection) -> None:
        payload = json.dumps(self.detected_payload(det), ensure_ascii=False)
        self.link.publish(self.detected_topic(det.keyword), payload, retain=False)

    async def _on_toggle(self, message: InboundMessage) -> None:
        try:
            site, reason = _parse_toggle(message.payload)
        except ValueError as exc:
            log.warning("bad Hermes toggle message", topic=message.topic, error=str(exc))
            self._error(f"bad {message.topic} payload: {exc}", message.payload)
            return
        if site != self.site_id:
            return
        if message.topic == TOGGLE_OFF:
            self.mute.add(HERMES, reason)
        elif reason:
            self.mute.remove(HERMES, reason)
        else:
            self.mute.clear(HERMES)

    def _error(self, text: str, context: bytes) -> None:
        payload = {
            "error": text,
            "context": context[:200].decode("utf-8", "replace"),
            "siteId": self.site_id,
            "sessionId": None,
        }
        self.link.publish(ERROR_TOPIC, json.dumps(payload, ensure_ascii=False), retain=False)


def _parse_toggle(payload: bytes) -> tuple[str, str]:
    """(siteId, reason) of a toggle message; an empty payload means the default site."""
    if not payload.strip():
        return DEFAULT_SITE, ""
    try:
        value = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError('expected a JSON object like {"siteId": "default", "reason": "ttsSay"}')
    site = value.get("siteId")
    reason = value.get("reason")
    if site is None:
        site = DEFAULT_SITE
    if reason is None:
        reason = ""
    if not isinstance(site, str) or not isinstance(reason, str):
        raise ValueError("`siteId` and `reason` must be strings")
    return site, reason
