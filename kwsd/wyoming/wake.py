"""detect / detection / not-detected, and which keywords a `detect` selects.

Home Assistant sends `detect {"names": [...]}` with the wake word id the user picked
(our model `name`). Matching is forgiving (case, spaces vs underscores, the phrase
itself), because users also type these names by hand in satellite configs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, TypeVar

from kwsd.wyoming.event import Event, ProtocolError

DETECT: Final = "detect"
DETECTION: Final = "detection"
NOT_DETECTED: Final = "not-detected"
ERROR: Final = "error"
PING: Final = "ping"
PONG: Final = "pong"

T = TypeVar("T")


def normalise_name(name: str) -> str:
    return "_".join(name.replace("-", " ").replace("_", " ").split()).lower()


def parse_detect(data: dict[str, Any]) -> tuple[str, ...] | None:
    """The requested names, or None for "every keyword"."""
    names = data.get("names")
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ProtocolError("`detect` needs `names` as a list of strings")
    return tuple(names) or None


def select(
    items: Sequence[T], names: Sequence[str] | None, keys: Sequence[tuple[str, ...]]
) -> tuple[list[T], list[str]]:
    """The items any of whose `keys` matches a requested name, and the names matching none."""
    if names is None:
        return list(items), []
    wanted = {normalise_name(n): n for n in names}
    chosen: list[T] = []
    seen: set[str] = set()
    for item, item_keys in zip(items, keys, strict=True):
        hits = {normalise_name(k) for k in item_keys} & wanted.keys()
        if hits:
            chosen.append(item)
            seen |= hits
    return chosen, [original for key, original in wanted.items() if key not in seen]


def detection_event(name: str, timestamp_ms: int) -> Event:
    return Event(DETECTION, {"name": name, "timestamp": timestamp_ms})


def not_detected_event() -> Event:
    return Event(NOT_DETECTED)


def error_event(text: str, code: str) -> Event:
    return Event(ERROR, {"text": text, "code": code})
