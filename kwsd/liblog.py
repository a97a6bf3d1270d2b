"""Log lines of the modules a library user imports, with structlog loaded on first use.

`import structlog` imports asyncio and, through it, OpenSSL: about 7 MiB of resident
memory in a program that only spots keywords and, with the default (library) logging,
never writes a line from kwsd: `model_loaded` and the like are INFO, and the standard
`logging` module drops INFO unless the program asks for it. So the spotter, the model
loader and the voice gate log through `LibraryLogger`, which asks `logging` first while
structlog has not been imported by anyone. Nothing is lost by asking: in that state
structlog cannot have been configured, so the line would go through the library
configuration below, whose first step is that same `logging` level check. Once
structlog is imported (the kwsd commands, or a program that uses it), every line goes
straight to it, configured as that program or `kwsd.log.configure_logging` set it up.
"""

from __future__ import annotations

import logging
import sys
from typing import Any


def configure_library_logging() -> None:
    """A program that embeds kwsd without setting up structlog gets kwsd's log lines
    through the standard `logging` module, as from any library: warnings on stderr, the
    rest when the program asks (`logging.basicConfig(level=logging.INFO)`). Unconfigured
    structlog would print every line to stdout, into the program's own output. The kwsd
    commands configure logging themselves (`kwsd.log.configure_logging`)."""
    import structlog

    from kwsd.log import strip_audio

    if not structlog.is_configured():
        structlog.configure(
            processors=[
                structlog.stdlib.filter_by_level,
                strip_audio,
                structlog.processors.KeyValueRenderer(key_order=["event"]),
            ],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=False,
        )


class LibraryLogger:
    """`structlog.get_logger(name)` for debug/info/warning lines, created when a line
    is first written (see the module docstring)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: Any = None  # what structlog.get_logger returns (typed Any there)

    def debug(self, event: str, **fields: object) -> None:
        self._write(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: object) -> None:
        self._write(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: object) -> None:
        self._write(logging.WARNING, "warning", event, fields)

    def _write(self, level: int, method: str, event: str, fields: dict[str, object]) -> None:
        logger = self._logger
        if logger is None:
            if "structlog" not in sys.modules and not logging.getLogger(self.name).isEnabledFor(
                level
            ):
                return
            configure_library_logging()
            import structlog

            logger = self._logger = structlog.get_logger(self.name)
        getattr(logger, method)(event, **fields)
