"""The JSON payloads kwsd publishes: detections, the keyword list, command replies."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from kwsd.detection import Detection
from kwsd.keywords.spec import KeywordSpec
from kwsd.mqtt import CommandReply, DetectionPayload, KeywordsPayload

DET = Detection(
    "LIGHT_UP", "LIGHT UP", ("▁", "L", "IGHT", "▁UP"), 3.0400000000000005, 3.2, 0.83, 80
)


def test_detection_payload_rounds_times_and_stamps_utc() -> None:
    when = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    payload = DetectionPayload.from_detection(DET, site="kitchen", model="m", when=when)
    assert (payload.start, payload.end, payload.score) == (3.04, 3.2, 0.83)
    assert payload.time == "2024-05-01T12:30:15.123Z"
    assert DetectionPayload.from_json(payload.to_json()) == payload
    assert json.loads(payload.to_json())["tokens"] == ["▁", "L", "IGHT", "▁UP"]


def test_keywords_payload_and_reply_round_trip() -> None:
    kws = KeywordsPayload(
        "a1", (KeywordSpec(phrase="LIGHT UP", alternates=(("▁LI", "GHT", "▁UP"),)),), True
    )
    data = json.loads(kws.to_json())
    assert data["keywords"] == [{"phrase": "LIGHT UP", "alternates": [["▁LI", "GHT", "▁UP"]]}]
    assert KeywordsPayload.from_json(kws.to_json()) == kws
    reply = CommandReply("keywords/add", False, "unknown piece", 4, "x", ("weak keyword",))
    assert CommandReply.from_json(reply.to_json()) == reply
