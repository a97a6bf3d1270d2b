"""Parsing MQTT command payloads: the shapes accepted and the errors for the rest."""

from __future__ import annotations

import pytest

from kwsd.keywords.spec import KeywordSpec
from kwsd.mqtt import CommandError, parse_command


def test_parse_keyword_command_shapes() -> None:
    command = parse_command(
        "keywords/add",
        '{"id": 9, "keywords": ["LIGHT UP", {"pieces": "▁ L IGHT ▁UP", "boost": "2"}]}'.encode(),
    )
    assert (command.name, command.id) == ("add", "9")
    assert command.entries == (
        KeywordSpec(phrase="LIGHT UP"),
        KeywordSpec(pieces=("▁", "L", "IGHT", "▁UP"), boost=2.0),
    )
    assert parse_command("keywords/set", b'"GOOD NIGHT"').entries == (
        KeywordSpec(phrase="GOOD NIGHT"),
    )
    assert parse_command("keywords/set", b"[]").entries == ()  # clears the list
    removal = parse_command("keywords/remove", b'[" LIGHT_UP ", {"phrase": "X"}]')
    assert removal.entries == ("LIGHT_UP", KeywordSpec(phrase="X"))


def test_parse_state_commands() -> None:
    assert parse_command("pause", b"{}").reason is None
    assert parse_command("pause", b" {} \n").name == "pause"
    for empty in (b"", b"  \n"):  # clearing a retained message, not a command
        with pytest.raises(CommandError, match="an empty payload is not a command"):
            parse_command("pause", empty)
    resume = parse_command("resume", b'{"reason": "tv", "id": "a"}')
    assert (resume.name, resume.reason, resume.id) == ("resume", "tv", "a")


@pytest.mark.parametrize(
    ("verb", "payload", "message"),
    [
        ("keywords/set", b'{"keywords": 5, "id": "7"}', "JSON list of keywords"),
        ("keywords/set", b'{"keywords": [], "extra": 1}', "unknown field(s) ['extra']"),
        ("keywords/add", b'[{"phrase": "X", "threshold": 2}]', "`threshold`"),
        ("keywords/add", b"[null]", "got null"),
        ("keywords/remove", b'["  "]', "keyword 1: an empty name"),
        ("keywords/add", b"[Infinity]", "Infinity is not a number"),
        ("resume", b'{"reason": 5}', "`reason` must be a string"),
        ("resume", b'{"why": "x"}', "unknown field(s) ['why']"),
        ("keywords/set", b"\xff\xfe", "byte 0xff at offset 0"),
    ],
)
def test_parse_command_errors(verb: str, payload: bytes, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(verb, payload)
    assert message in str(info.value)


def test_command_error_keeps_the_request_id() -> None:
    with pytest.raises(CommandError) as info:
        parse_command("keywords/add", b'{"id": "req-5", "keywords": [42]}')
    assert info.value.command_id == "req-5"


def test_size_limit_is_checked_before_decoding() -> None:
    with pytest.raises(CommandError, match="over the 100-byte limit"):
        parse_command("keywords/set", b"\xff" * 101, max_bytes=100)
