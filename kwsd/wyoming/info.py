"""describe → info: what this server offers, so Home Assistant can list the wake words.

Each active keyword is one wake model. Home Assistant shows `phrase` to the user and
sends the model `name` back in `detect`, so `name` is the keyword's display name (the
same string as `keyword` in kwsd's MQTT detections and the HA event type).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from kwsd.wyoming.event import Event

DESCRIBE: Final = "describe"
INFO: Final = "info"
ATTRIBUTION: Final = {"name": "kwsd", "url": "https://github.com/k2-fsa/icefall"}


@dataclass(frozen=True, slots=True)
class WakeModel:
    name: str  # the id Home Assistant sends back in `detect`
    phrase: str  # what the user says, shown in the UI


def info_event(models: Sequence[WakeModel], *, version: str) -> Event:
    wake_models: list[dict[str, Any]] = [
        {
            "name": m.name,
            "attribution": ATTRIBUTION,
            "installed": True,
            "description": m.phrase.title(),
            "version": version,
            "languages": ["en"],
            "phrase": m.phrase,
        }
        for m in models
    ]
    program = {
        "name": "kwsd",
        "attribution": ATTRIBUTION,
        "installed": True,
        "description": "Open-vocabulary keyword spotting (icefall KWS Zipformer2)",
        "version": version,
        "models": wake_models,
    }
    return Event(INFO, {"wake": [program]})
