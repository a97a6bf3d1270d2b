"""Logging: structlog on stderr, readable on a terminal, JSON lines under a service manager.

stdout belongs to detection JSON lines, so every log line goes to stderr. stdlib loggers
(aiomqtt, asyncio, onnxruntime wrappers) are routed through the same structlog formatter,
so journald or Docker sees one consistent format. Audio never reaches a log line: a guard
processor replaces arrays and large byte strings with a size marker, because one stray
`log.debug("block", samples=block)` would otherwise write megabytes of PCM per minute.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO

import numpy as np
import structlog
from structlog.typing import EventDict, Processor

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "console", "json"]

# Byte strings and sequences up to this size are harmless (ids, short payloads).
MAX_INLINE_BYTES = 256
MAX_INLINE_ITEMS = 64
MAX_INLINE_ARRAY_ELEMENTS = 16
# A message string this long is almost certainly a formatted buffer, not prose.
MAX_INLINE_CHARS = 4096

_HANDLER_NAME = "kwsd"
_LEADING_KEYS = ("timestamp", "level", "logger", "event")
# Their info-level chatter (connection details, file-change notices) is noise for users.
_CHATTY_LIBRARIES = ("asyncio", "aiomqtt", "urllib3", "huggingface_hub", "filelock", "watchfiles")


def _omit(value: Any) -> Any:
    """The value itself if small, else a marker saying what was left out."""
    if isinstance(value, np.ndarray):
        if value.size <= MAX_INLINE_ARRAY_ELEMENTS:
            return value.tolist()
        return f"<{value.nbytes} bytes omitted: array {value.dtype} shape {value.shape}>"
    if isinstance(value, str) and len(value) > MAX_INLINE_CHARS:
        return f"{value[:200]}...<{len(value) - 200} chars omitted>"
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes | bytearray | memoryview):
        size = value.nbytes if isinstance(value, memoryview) else len(value)
        if size <= MAX_INLINE_BYTES:
            return bytes(value)
        return f"<{size} bytes omitted>"
    if isinstance(value, list | tuple):
        if len(value) > MAX_INLINE_ITEMS:
            return f"<{len(value)} items omitted>"
        return type(value)(_omit(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _omit(v) for k, v in value.items()}
    return value


def strip_audio(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: replace arrays and large buffers with a "<N bytes omitted>" marker."""
    for key, value in event_dict.items():
        if key.startswith("_"):  # structlog's own record plumbing
            continue
        event_dict[key] = _omit(value)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        strip_audio,
    ]


def _renderers(fmt: str, stream: TextIO) -> list[Processor]:
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    if fmt == "json" or (fmt == "auto" and not is_tty):
        return [
            # Never show_locals: a frame's locals hold audio buffers and passwords.
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            ),
            _leading_keys,
            structlog.processors.JSONRenderer(default=_json_default),
        ]
    colors = is_tty and not os.environ.get("NO_COLOR")  # https://no-color.org
    return [
        structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
    ]


def _leading_keys(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """timestamp, level, logger, event first: that is how people scan a JSON log line."""
    head = {k: event_dict.pop(k) for k in _LEADING_KEYS if k in event_dict}
    return {**head, **event_dict}


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return repr(value)


def configure_logging(
    level: LogLevel | str = "info", fmt: LogFormat | str = "auto", stream: TextIO | None = None
) -> None:
    """Set up structlog and stdlib logging once per process (calling again reconfigures).

    `fmt="auto"` picks the console renderer when `stream` (default: stderr) is a terminal
    and JSON lines otherwise, which is what journald, Docker and log shippers want.
    """
    out = stream if stream is not None else sys.stderr
    numeric = logging.getLevelName(str(level).upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}; use debug, info, warning or error")
    if fmt not in ("auto", "console", "json"):
        raise ValueError(f"unknown log format {fmt!r}; use auto, console or json")

    shared = _shared_processors()
    render = _renderers(fmt, out)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # Chatty libraries stay at warning unless the user asked for debug output.
    library_level = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(library_level)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        # Loggers re-read the stdlib level on each call, so reconfiguring stays effective.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger that goes through the stdlib handler set up by configure_logging."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


__all__ = ["configure_logging", "get_logger", "strip_audio"]
