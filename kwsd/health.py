"""Optional HTTP endpoint for liveness checks (`/healthz`) and Prometheus (`/metrics`).

Off by default and bound to 127.0.0.1 by default: it reveals which keywords exist, and
home setups rarely want another port on the LAN. It is a deliberately tiny HTTP/1.1
server on `asyncio.start_server` (one request per connection, bounded header size and
read time) rather than a web framework: two read-only endpoints do not justify one.

What "healthy" means is supplied by the daemon as a `HealthSource`, usually built with
`health_source(audio_check(heartbeat), mqtt_check(...))`: audio must be flowing through
the pipeline, and the MQTT link must be up when MQTT is configured. The source runs on
the event loop and must be cheap and non-blocking; rendering metrics runs in a thread.
In the daemon the server is one of its outputs (kwsd/outputs.py): started first and
closed last, so it answers for the whole life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus

import structlog

from kwsd.detection import Detection
from kwsd.errors import ConfigError
from kwsd.heartbeat import Heartbeat
from kwsd.metrics import Metrics
from kwsd.registry import RegistryState

log = structlog.get_logger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9731
DEFAULT_MAX_AUDIO_AGE = 5.0  # chunks arrive every 0.32 s; 5 s without one is not a hiccup
MAX_HEADER_BYTES = 16 * 1024
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    reason: str | None = None  # why it is not ok, in words a user can act on
    detail: Mapping[str, object] = field(default_factory=dict)


Check = Callable[[], CheckResult]


@dataclass(frozen=True)
class HealthReport:
    checks: tuple[CheckResult, ...] = ()

    @property
    def healthy(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def reasons(self) -> list[str]:
        return [c.reason or f"{c.name} check failed" for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, object]:
        return {
            "status": "ok" if self.healthy else "unhealthy",
            "reasons": self.reasons,
            "checks": {c.name: {"ok": c.ok, **c.detail} for c in self.checks},
        }


HealthSource = Callable[[], HealthReport]


@dataclass(frozen=True)
class LinkState:
    """What the MQTT client reports about its connection."""

    connected: bool
    error: str | None = None  # the last connection error, if any


def audio_check(heartbeat: Heartbeat, max_age: float = DEFAULT_MAX_AUDIO_AGE) -> Check:
    def check() -> CheckResult:
        age = heartbeat.age()
        if age is None:
            return CheckResult(
                "audio", False, "no audio processed yet (model loading or no audio input)"
            )
        detail = {"age_s": round(age, 3)}
        if age > max_age:
            return CheckResult("audio", False, f"no audio for {age:.1f} s", detail)
        return CheckResult("audio", True, None, detail)

    check.__name__ = "audio"
    return check


def mqtt_check(state: Callable[[], LinkState]) -> Check:
    def check() -> CheckResult:
        link = state()
        if link.connected:
            return CheckResult("mqtt", True, None, {"connected": True})
        reason = "mqtt disconnected" + (f": {link.error}" if link.error else "")
        return CheckResult("mqtt", False, reason, {"connected": False})

    check.__name__ = "mqtt"
    return check


def health_source(*checks: Check) -> HealthSource:
    """Combine checks; a check that raises is reported as failing, never as a 500."""

    def source() -> HealthReport:
        results = []
        for check in checks:
            try:
                results.append(check())
            except Exception as exc:  # a broken check must not take the endpoint down
                name = getattr(check, "__name__", "check")
                results.append(CheckResult(name, False, f"{name} check raised: {exc}"))
        return HealthReport(tuple(results))

    return source


@dataclass(frozen=True)
class _Response:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()

    def encode(self, include_body: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status.value} {self.status.phrase}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head + self.body if include_body else head


def _text(status: HTTPStatus, text: str, *headers: tuple[str, str]) -> _Response:
    return _Response(status, (text + "\n").encode("utf-8"), headers=headers)


class HealthServer:
    """Serves `/healthz` and (with `metrics`) `/metrics`; use as an async context manager."""

    def __init__(
        self,
        source: HealthSource,
        metrics: Metrics | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.host = host
        self.requested_port = port
        self.request_timeout = request_timeout
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port=0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("health server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every (host, port) actually bound, e.g. to confirm loopback-only."""
        if self._server is None:
            return []
        return [tuple(sock.getsockname()[:2]) for sock in self._server.sockets]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.requested_port, limit=MAX_HEADER_BYTES
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {self.host}:{self.requested_port} for /healthz and "
                f"/metrics ({exc.strerror or exc}); set another port in [health] or "
                "disable it"
            ) from exc
        log.info("health endpoint listening", url=self.url)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def on_detection(self, det: Detection) -> None:
        """Detections reach /metrics through the daemon's Metrics, not through here."""

    def on_keywords(self, state: RegistryState) -> None:
        """The keyword count reaches /metrics through the daemon's Metrics."""

    async def serve(self) -> None:
        """Start, then run until cancelled (for a TaskGroup)."""
        await self.start()
        try:
            await asyncio.Future()
        finally:
            await self.close()

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(self.request_timeout):
                    head = await reader.readuntil(b"\r\n\r\n")
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return  # client went away or never finished its request
            except asyncio.LimitOverrunError:
                response, include_body = _text(HTTPStatus.BAD_REQUEST, "request too large"), True
            else:
                try:
                    response, include_body = await self._dispatch(head)
                except Exception:  # a bug in a health source or collector: answer 500
                    log.exception("health endpoint request failed")
                    response = _text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
                    include_body = True
            writer.write(response.encode(include_body))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _dispatch(self, head: bytes) -> tuple[_Response, bool]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _text(HTTPStatus.BAD_REQUEST, "malformed request line"), True
        method, target, _ = parts
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        path = target.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            allow = ("Allow", "GET, HEAD")
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, "use GET", allow), True
        include_body = method == "GET"
        if path == "/healthz":
            return self._healthz(), include_body
        if path == "/metrics" and self.metrics is not None:
            body, content_type = await asyncio.to_thread(self.metrics.render, headers.get("accept"))
            return _Response(HTTPStatus.OK, body, content_type), include_body
        endpoints = "/healthz" + (" and /metrics" if self.metrics is not None else "")
        return _text(HTTPStatus.NOT_FOUND, f"not found; kwsd serves {endpoints}"), include_body

    def _healthz(self) -> _Response:
        report = self.source()
        status = HTTPStatus.OK if report.healthy else HTTPStatus.SERVICE_UNAVAILABLE
        body = json.dumps(report.to_dict()).encode("utf-8")
        return _Response(status, body, "application/json")
