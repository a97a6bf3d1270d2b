"""The systemd notification protocol (sd_notify), spoken directly over a datagram.

systemd's `Type=notify` services report readiness and liveness by sending
newline-separated `KEY=VALUE` datagrams to the AF_UNIX socket named by `$NOTIFY_SOCKET`
(a filesystem path, or `@name` for the Linux abstract namespace). The protocol is a few
lines, so we implement it instead of adding a dependency. Outside systemd (no
`$NOTIFY_SOCKET`, e.g. under launchd or in a terminal) every call is a cheap no-op, so
the daemon can call these unconditionally.

Sends never block: the socket is non-blocking, and a full or vanished receiver is
logged once and otherwise ignored, because a notification failure must never take the
audio pipeline down with it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)


def parse_address(value: str) -> bytes | None:
    """`$NOTIFY_SOCKET` → a socket address, or None if we cannot speak to it.

    Only absolute paths and `@abstract` names are AF_UNIX; systemd 253+ may also hand
    out `vsock:` addresses to virtual machines, which we do not support (and say so).
    """
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    return None


def parse_watchdog(environ: Mapping[str, str], pid: int) -> float | None:
    """The watchdog timeout in seconds, or None if systemd does not watch this process.

    `$WATCHDOG_PID`, when present, names the process the watchdog is meant for; a
    child that inherited the environment must not send pings for its parent.
    """
    usec_text = environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        log.warning("ignoring invalid WATCHDOG_USEC", value=usec_text)
        return None
    if usec <= 0:
        return None
    pid_text = environ.get("WATCHDOG_PID")
    if pid_text:
        try:
            if int(pid_text) != pid:
                return None
        except ValueError:
            log.warning("ignoring invalid WATCHDOG_PID", value=pid_text)
            return None
    return usec / 1_000_000


def _one_line(text: str) -> str:
    """Values end at a newline in this protocol; keep status text on one line."""
    return " ".join(text.splitlines()).strip()


class Notifier:
    """Sends state changes to the service manager; a no-op when there is none."""

    def __init__(self, address: bytes | None, watchdog_interval: float | None = None) -> None:
        self._address = address
        # Without a socket to ping, a watchdog interval means nothing.
        self.watchdog_interval = watchdog_interval if address is not None else None
        self._warned = False

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None
    ) -> Notifier:
        """Build from `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET")
        if not raw:
            return cls(None)
        address = parse_address(raw)
        if address is None:
            log.warning(
                "NOTIFY_SOCKET is not a unix socket address kwsd can use; "
                "service notifications are off",
                value=raw,
            )
            return cls(None)
        return cls(address, parse_watchdog(env, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` lines in one datagram; True if it was handed to the kernel."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode("utf-8")
        try:
            # Python sockets are close-on-exec already (PEP 446).
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError as exc:
            if not self._warned:
                # Once: a dead receiver would otherwise log on every watchdog tick.
                log.warning("service manager notification failed", error=str(exc))
                self._warned = True
            return False
        self._warned = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: the model is loaded and audio flows; systemd finishes the start job."""
        fields = ["READY=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self.notify(*fields)

    def reloading(self) -> bool:
        """RELOADING=1 before applying a new configuration; follow with `ready()`."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> bool:
        """STOPPING=1 when shutdown begins, so systemd does not read silence as a hang."""
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        """Free-form text shown by `systemctl status kwsd`."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: a keep-alive ping; only send while the pipeline makes progress."""
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more time in the current start/stop phase (e.g. a slow model load)."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")
