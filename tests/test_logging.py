"""Logging: JSON lines off a terminal, console on one, stderr only, and audio never printed."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime

import numpy as np
import pytest
import structlog

from kwsd.log import configure_logging, get_logger


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Terminal(io.StringIO):
    """A text stream that says it is a terminal, as sys.stderr does in an interactive shell."""

    def isatty(self) -> bool:
        return True


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_when_not_a_tty() -> None:
    stream = io.StringIO()
    configure_logging("info", "auto", stream)
    get_logger("kwsd.test").info("detected", keyword="LIGHT UP", score=0.8)
    logging.getLogger("aiomqtt").warning("broker %s unreachable", "b.local")
    records = json_lines(stream.getvalue())
    assert len(records) == 2
    first, second = records
    assert first["event"] == "detected" and first["level"] == "info"
    assert first["logger"] == "kwsd.test" and first["keyword"] == "LIGHT UP"
    stamp = datetime.fromisoformat(str(first["timestamp"]).replace("Z", "+00:00"))
    offset = stamp.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    # stdlib loggers come out in the same shape
    assert second["event"] == "broker b.local unreachable"
    assert second["level"] == "warning" and second["logger"] == "aiomqtt"
    assert "timestamp" in second


def test_console_on_a_terminal_and_when_asked() -> None:
    for stream, fmt in ((Terminal(), "auto"), (io.StringIO(), "console")):
        configure_logging("info", fmt, stream)
        get_logger("kwsd.test").info("listening", device="USB")
        line = ANSI.sub("", stream.getvalue()).strip()
        assert "listening" in line and "device=USB" in line
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


def test_no_color_is_respected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    stream = Terminal()
    configure_logging("info", "auto", stream)
    get_logger("kwsd.test").info("plain")
    assert "plain" in stream.getvalue() and "\x1b[" not in stream.getvalue()


def test_json_forced_on_a_terminal() -> None:
    stream = Terminal()
    configure_logging("info", "json", stream)
    get_logger("kwsd.test").info("x")
    assert json_lines(stream.getvalue())[0]["event"] == "x"


def test_level_filtering_and_reconfiguration() -> None:
    stream = io.StringIO()
    configure_logging("warning", "json", stream)
    log = get_logger("kwsd.test")
    log.info("hidden")
    log.warning("shown")
    configure_logging("debug", "json", stream)
    log.debug("now shown")
    events = [r["event"] for r in json_lines(stream.getvalue())]
    assert events == ["shown", "now shown"]
    assert (
        len(logging.getLogger().handlers)
        == len([h for h in logging.getLogger().handlers if h.get_name() != "kwsd"]) + 1
    ), "reconfiguring replaces our handler instead of adding a second one"


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    get_logger("kwsd.test").info("to stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json_lines(captured.err)[0]["event"] == "to stderr"


def test_audio_is_never_printed() -> None:
    stream = io.StringIO()
    configure_logging("debug", "json", stream)
    samples = np.full(16000, 0.123456, dtype=np.float32)
    pcm = (samples * 32767).astype("<i2").tobytes()
    get_logger("kwsd.audio").debug(
        "block",
        samples=samples,
        pcm=pcm,
        nested={"chunk": samples.reshape(100, 160), "frames": [samples]},
        as_list=samples.tolist(),
        shape=np.array([45, 80]),
        small=b"ok",
    )
    text = stream.getvalue()
    record = json_lines(text)[0]
    assert "0.123456" not in text and "0.12345" not in text
    assert record["samples"] == "<64000 bytes omitted: array float32 shape (16000,)>"
    assert record["pcm"] == "<32000 bytes omitted>"
    assert record["nested"] == {
        "chunk": "<64000 bytes omitted: array float32 shape (100, 160)>",
        "frames": ["<64000 bytes omitted: array float32 shape (16000,)>"],
    }
    assert record["as_list"] == "<16000 items omitted>"
    assert record["shape"] == [45, 80]  # tiny arrays (shapes, ids) are useful and harmless
    assert record["small"] == "ok"


def test_huge_formatted_strings_are_cut() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    logging.getLogger("somelib").info("payload %r", bytes(100_000))
    record = json_lines(stream.getvalue())[0]
    assert len(str(record["event"])) < 1000 and "chars omitted" in str(record["event"])


def test_exceptions_do_not_dump_local_variables() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    password = "hunter2"
    try:
        raise RuntimeError("broker refused")
    except RuntimeError:
        get_logger("kwsd.mqtt").exception("connect failed")
    text = stream.getvalue()
    assert "broker refused" in text and "RuntimeError" in text
    assert password not in text


def test_bad_level_or_format() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("loud", "json", io.StringIO())
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml", io.StringIO())
