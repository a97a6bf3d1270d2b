"""detect / detection / not-detected, and which keywords a `detect` selects.

Home Assistant sends `detect {"names": [wake_word_id]}` with the id the user picked
(our model `name`) and drops every `detection` whose `name` is not exactly that id.
Matching is forgiving (case, spaces vs underscores, the phrase or label instead of the
id), because users also type these names by hand in satellite configs; the answer is
not: a detection carries the name as the client wrote it, so the client's own
comparison always holds.
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
) -> tuple[list[tuple[T, str]], list[str]]:
    """The items any of whose `keys` matches a requested name, each with the name its
    detections answer with, and the requested names that match nothing.

    An item's first key is its advertised name: the answer when no names were requested.
    Otherwise the answer is the first requested name that matched, exactly as written.
    """
    if names is None:
        return [(item, item_keys[0]) for item, item_keys in zip(items, keys, strict=True)], []
    wanted: dict[str, str] = {}
    for name in names:
        wanted.setdefault(normalise_name(name), name)
    chosen: list[tuple[T, str]] = []
    seen: set[str] = set()
    for item, item_keys in zip(items, keys, strict=True):
        own = {normalise_name(k) for k in item_keys}
        hits = [key for key in wanted if key in own]
        if hits:
            chosen.append((item, wanted[hits[0]]))
            seen.update(hits)
    return chosen, [original for key, original in wanted.items() if key not in seen]


def detection_event(name: str, timestamp_ms: int) -> Event:
    return Event(DETECTION, {"name": name, "timestamp": timestamp_ms})


def not_detected_event() -> Event:
    return Event(NOT_DETECTED)


def error_event(text: str, code: str) -> Event:
    return Event(ERROR, {"text": text, "code": code})
