"""The Home Assistant Supervisor calls an add-on makes: the MQTT service and discovery.

An add-on reaches the Supervisor at http://supervisor with the token the Supervisor
puts in $SUPERVISOR_TOKEN. `services: [mqtt:want]` in config.yaml lets the add-on read
the broker the Mosquitto add-on (or another provider) offers, so users never type
broker credentials; `discovery: [wyoming]` lets it announce its Wyoming server, which
Home Assistant's Wyoming integration then offers to set up.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_URL: Final = "http://supervisor"
TIMEOUT_SECONDS: Final = 10.0


class SupervisorError(Exception):
    """The Supervisor could not be asked or said no; the message says which and why."""


@dataclass(frozen=True)
class MqttService:
    """A broker as the Supervisor's `mqtt` service describes it."""

    host: str
    port: int
    ssl: bool = False
    username: str | None = None
    password: str | None = None
    protocol: str | None = None


class Supervisor:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    @classmethod
    def from_env(cls) -> Supervisor:
        """$SUPERVISOR_URL (default http://supervisor; a stand-in's in tests) and the token."""
        return cls(
            os.environ.get("SUPERVISOR_URL") or DEFAULT_URL, os.environ.get("SUPERVISOR_TOKEN")
        )

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if not self.token:
            raise SupervisorError(
                "SUPERVISOR_TOKEN is not set: this is not running as a Home Assistant add-on"
            )
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                reply = json.loads(response.read().decode("utf-8") or "{}")
        except urllib.error.HTTPError as exc:
            raise SupervisorError(f"{method} {path}: HTTP {exc.code} {_message(exc)}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise SupervisorError(f"cannot reach the Supervisor at {self.url}: {reason}") from None
        except ValueError:
            raise SupervisorError(f"{method} {path}: the Supervisor sent no JSON") from None
        if not isinstance(reply, dict) or reply.get("result") != "ok":
            said = reply.get("message") if isinstance(reply, dict) else reply
            raise SupervisorError(f"{method} {path}: {said}")
        return reply.get("data")

    def mqtt_service(self) -> MqttService | None:
        """The broker the Supervisor offers, or None when no add-on provides MQTT."""
        try:
            data = self._call("GET", "/services/mqtt")
        except SupervisorError as exc:
            if "HTTP 400" in str(exc) or "HTTP 404" in str(exc):
                return None  # the Supervisor's answer when no provider is installed
            raise
        if not isinstance(data, dict) or not data.get("host"):
            return None
        try:
            port = int(data.get("port") or 1883)
        except (TypeError, ValueError):
            raise SupervisorError(
                f"the MQTT service has an invalid port {data.get('port')!r}"
            ) from None
        return MqttService(
            host=str(data["host"]),
            port=port,
            ssl=bool(data.get("ssl")),
            username=str(data["username"]) if data.get("username") else None,
            password=str(data["password"]) if data.get("password") else None,
            protocol=str(data["protocol"]) if data.get("protocol") else None,
        )

    def announce(self, service: str, config: dict[str, Any]) -> None:
        """POST a discovery message, e.g. ("wyoming", {"uri": "tcp://host:10400"})."""
        self._call("POST", "/discovery", {"service": service, "config": config})


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read().decode("utf-8"))
    except (ValueError, OSError):
        return ""
    return str(body.get("message") or "") if isinstance(body, dict) else ""
