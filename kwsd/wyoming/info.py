"""describe → info: what this server offers, so Home Assistant can list the wake words.

Each active keyword is one wake model. Home Assistant stores the model `name` as the
wake word id, sends it back in `detect` and shows `description` in its wake word list.
The id is the keyword's phrase as a slug (`HEY COMPUTER` → `hey_computer`, the style of
openWakeWord's `ok_nabu`): it is what the user says, so it survives renaming the
keyword's label (`display`), which only changes the description Home Assistant shows.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from kwsd.keywords import Keyword
from kwsd.wyoming.event import Event
from kwsd.wyoming.wake import normalise_name

DESCRIBE: Final = "describe"
INFO: Final = "info"
ATTRIBUTION: Final = {"name": "kwsd", "url": "https://github.com/k2-fsa/icefall"}


@dataclass(frozen=True, slots=True)
class WakeModel:
    name: str  # the id Home Assistant stores and sends back in `detect`
    phrase: str  # what the user says
    description: str  # the label Home Assistant shows: the keyword's display name

    @property
    def listing(self) -> str:
        """The id, with the label when the label is more than the id spelled out."""
        if normalise_name(self.description) == self.name:
            return self.name
        return f"{self.name} ({self.description})"

    @property
    def keys(self) -> tuple[str, str, str]:
        """Every name a `detect` may use for this model, the advertised one first."""
        return (self.name, self.description, self.phrase)


def wake_models(keywords: Sequence[Keyword]) -> list[WakeModel]:
    """One model per keyword; a phrase listed twice gets `_2`, `_3`... so ids stay unique."""
    models: list[WakeModel] = []
    taken: set[str] = set()
    for keyword in keywords:
        base = normalise_name(keyword.phrase)
        name, count = base, 1
        while name in taken:
            count += 1
            name = f"{base}_{count}"
        taken.add(name)
        # An unset display is the upper-case phrase: show it as words, not shouting.
        label = keyword.display
        if label == keyword.phrase:
            label = string.capwords(keyword.phrase.lower())
        models.append(WakeModel(name=name, phrase=keyword.phrase, description=label))
    return models


def info_event(models: Sequence[WakeModel], *, version: str) -> Event:
    wake_models: list[dict[str, Any]] = [
        {
            "name": m.name,
            "attribution": ATTRIBUTION,
            "installed": True,
            "description": m.description,
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
