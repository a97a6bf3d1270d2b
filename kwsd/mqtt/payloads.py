"""The JSON documents kwsd publishes, as dataclasses with a stable wire form.

Consumers (Home Assistant, Node-RED, scripts) depend on these field names; keeping the
encoding and decoding next to the fields makes a rename impossible to do half-way.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kwsd.detection import Detection
from kwsd.keywords.spec import KeywordSpec

if TYPE_CHECKING:
    from kwsd.registry import RegistryState


def _loads_object(data: bytes | str, what: str) -> dict[str, Any]:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError(f"a {what} payload must be a JSON object, got {type(value).__name__}")
    return value


def _dumps(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def utc_timestamp(when: datetime | None = None) -> str:
    """ISO-8601 in UTC with milliseconds and a `Z`, the form every JSON consumer parses."""
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class DetectionPayload:
    """One detection as published on `<base>/detection` (and printed by the stdout publisher).

    `id` lets consumers drop the duplicates that at-least-once delivery can produce
    after a reconnect; `time` is when it was spotted, not when it was delivered.
    """

    id: str
    keyword: str
    phrase: str
    tokens: tuple[str, ...]
    score: float
    start: float
    end: float
    time: str
    site: str
    model: str

    @classmethod
    def from_detection(
        cls, det: Detection, *, site: str, model: str, when: datetime | None = None
    ) -> DetectionPayload:
        return cls(
            id=str(uuid.uuid4()),
            keyword=det.keyword,
            phrase=det.phrase,
            tokens=tuple(det.tokens),
            # Frame times are multiples of 40 ms: rounding hides float noise like 3.0400000001.
            score=round(float(det.score), 4),
            start=round(float(det.start), 3),
            end=round(float(det.end), 3),
            time=utc_timestamp(when),
            site=site,
            model=model,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "keyword": self.keyword,
            "phrase": self.phrase,
            "tokens": list(self.tokens),
            "score": self.score,
            "start": self.start,
            "end": self.end,
            "time": self.time,
            "site": self.site,
            "model": self.model,
        }

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> DetectionPayload:
        obj = _loads_object(data, "detection")
        return cls(
            id=str(obj["id"]),
            keyword=str(obj["keyword"]),
            phrase=str(obj["phrase"]),
            tokens=tuple(str(t) for t in obj["tokens"]),
            score=float(obj["score"]),
            start=float(obj["start"]),
            end=float(obj["end"]),
            time=str(obj["time"]),
            site=str(obj["site"]),
            model=str(obj["model"]),
        )


@dataclass(frozen=True, slots=True)
class KeywordsPayload:
    """The active keyword list, retained on `<base>/keywords`.

    `version` changes with every accepted change, so a client that sent a command can
    tell whether the retained list already reflects it (command replies carry it too).
    """

    version: int | str
    keywords: tuple[KeywordSpec, ...]
    paused: bool = False
    warnings: tuple[str, ...] = field(default=())

    @classmethod
    def from_state(cls, state: RegistryState) -> KeywordsPayload:
        return cls(
            version=state.version,
            keywords=state.specs,
            paused=state.paused,
            warnings=state.keyword_set.warnings,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "paused": self.paused,
            "keywords": [spec.to_dict() for spec in self.keywords],
            "warnings": list(self.warnings),
        }

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> KeywordsPayload:
        obj = _loads_object(data, "keywords")
        version = obj["version"]
        if not isinstance(version, int | str) or isinstance(version, bool):
            raise ValueError("`version` must be an integer or a string")
        return cls(
            version=version,
            keywords=tuple(KeywordSpec.from_mapping(k) for k in obj["keywords"]),
            paused=bool(obj.get("paused", False)),
            warnings=tuple(str(w) for w in obj.get("warnings", ())),
        )


@dataclass(frozen=True, slots=True)
class CommandReply:
    """The answer to one command, on `<base>/cmd/result` and the MQTT 5 response topic."""

    command: str
    ok: bool
    error: str | None = None
    keywords_version: int | str | None = None
    id: str | None = None
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "id": self.id,
            "ok": self.ok,
            "error": self.error,
            "keywords_version": self.keywords_version,
            "warnings": list(self.warnings),
        }

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str) -> CommandReply:
        obj = _loads_object(data, "command reply")
        ok = obj["ok"]
        if not isinstance(ok, bool):
            raise ValueError("`ok` must be true or false")
        error = obj.get("error")
        version = obj.get("keywords_version")
        ident = obj.get("id")
        return cls(
            command=str(obj["command"]),
            ok=ok,
            error=None if error is None else str(error),
            keywords_version=version if isinstance(version, int | str) else None,
            id=None if ident is None else str(ident),
            warnings=tuple(str(w) for w in obj.get("warnings", ())),
        )
