"""What a Wyoming client may cost the daemon: connections at once, time, descriptors, log.

Nothing in the protocol ends a connection, and every open one holds a file descriptor
of the process that also talks MQTT, answers /healthz and saves keywords. Unbounded,
1,100 idle connections exhausted a 1024-descriptor kwsd: the health check timed out,
MQTT could not reconnect, keyword saves failed, and the accept loop logged 350,000
errors in 87 s. So:

- at most `max_connections` are served at once; one more gets an `error` event and is
  closed (cheaply: no task, no stream, at most `MAX_LINGERING` waiting to close
  cleanly), and that cap is lowered at start-up if the open-file limit could not hold
  it plus `RESERVED_DESCRIPTORS` for everything else;
- a message must arrive complete within `message_timeout` of its first byte, and a
  connection that sends nothing for `idle_timeout` is closed (see `EventReader`);
- a failure that repeats (refusals, accept errors) is logged once, then summarised at
  most every `SUMMARY_SECONDS` with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import structlog

if TYPE_CHECKING:
    from kwsd.config import WyomingSettings

log = structlog.get_logger("kwsd.wyoming")

# Descriptors kept free for the rest of the daemon: MQTT (re)connects, health requests,
# keyword saves, config reloads, log files.
RESERVED_DESCRIPTORS: Final = 64
# Refused connections waiting for their peer to read the error before closing.
MAX_LINGERING: Final = 16
LINGER_SECONDS: Final = 1.0
SUMMARY_SECONDS: Final = 30.0


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 32
    message_timeout: float | None = 10.0  # first byte to last byte of one message
    idle_timeout: float | None = 600.0  # longest silence between messages

    @classmethod
    def from_settings(cls, settings: WyomingSettings) -> ConnectionLimits:
        return cls(
            max_connections=settings.max_connections,
            message_timeout=settings.message_timeout_seconds,
            idle_timeout=settings.idle_timeout_seconds or None,
        )


class RepeatedWarning:
    """A warning that may fire thousands of times a second: the first occurrence is
    logged in full, later ones are counted and summarised at most every `interval`."""

    def __init__(
        self,
        event: str,
        *,
        interval: float = SUMMARY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event = event
        self.interval = interval
        self.clock = clock
        self.total = 0  # occurrences since the first one of this episode
        self._unreported = 0
        self._last_logged: float | None = None

    def record(self, **fields: Any) -> None:
        now = self.clock()
        self.total += 1
        if self._last_logged is None:
            self._last_logged = now
            log.warning(self.event, **fields)
            return
        self._unreported += 1
        if now - self._last_logged >= self.interval:
            log.warning(
                self.event,
                repeated=self._unreported,
                within_seconds=round(now - self._last_logged, 1),
                **fields,
            )
            self._last_logged = now
            self._unreported = 0

    def resolved(self, message: str) -> None:
        """The condition ended: log `message` with the total, and start a new episode."""
        if self._last_logged is None:
            return
        log.info(message, occurrences=self.total)
        self.total = self._unreported = 0
        self._last_logged = None


def open_descriptors() -> int | None:
    for directory in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            return len(os.listdir(directory))
    return None


def connection_capacity(wanted: int) -> int:
    """`wanted`, or fewer if the open-file limit cannot hold that many connections and
    still leave `RESERVED_DESCRIPTORS` for the rest of the daemon (warned about once)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = open_descriptors()
    if soft == resource.RLIM_INFINITY or in_use is None:
        return wanted
    room = soft - in_use - RESERVED_DESCRIPTORS - MAX_LINGERING
    if room >= wanted:
        return wanted
    capacity = max(1, room)
    log.warning(
        "the open-file limit leaves room for fewer Wyoming connections than configured",
        open_file_limit=soft,
        open_files=in_use,
        max_connections=wanted,
        serving_at_most=capacity,
        fix="raise the limit (LimitNOFILE= in the systemd unit, `ulimit -n`) or lower "
        "wyoming.max_connections",
    )
    return capacity


class Refusals:
    """Turns away connections beyond the cap with one `error` event, then closes them.

    The event is written straight to the new socket (a few hundred bytes always fit in
    its empty send buffer), and the socket is shut down for writing. Closing it at once
    would reset the connection if the client had already sent something (Home
    Assistant sends `detect` right after connecting), and a reset can destroy the
    error before the client reads it; so up to `MAX_LINGERING` refused sockets are
    drained until the client closes or `LINGER_SECONDS` pass, and beyond that they are
    closed at once.
    """

    def __init__(self, error: bytes) -> None:
        self._error = error
        self._lingering: set[asyncio.Task[None]] = set()
        self.warning = RepeatedWarning("Wyoming connection refused: too many at once")
        self.count = 0

    @property
    def lingering(self) -> int:
        return len(self._lingering)

    def refuse(self, conn: socket.socket, peer: str, serving: int) -> None:
        self.count += 1
        self.warning.record(peer=peer, serving=serving)
        try:
            conn.send(self._error)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        if len(self._lingering) >= MAX_LINGERING:
            conn.close()
            return
        task = asyncio.create_task(self._linger(conn))
        self._lingering.add(task)
        task.add_done_callback(self._lingering.discard)

    async def _linger(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                while await loop.sock_recv(conn, 4096):
                    pass
        except (TimeoutError, OSError):
            pass
        finally:
            conn.close()

    async def close(self) -> None:
        for task in list(self._lingering):
            task.cancel()
        await asyncio.gather(*self._lingering, return_exceptions=True)
