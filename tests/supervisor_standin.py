"""A stand-in for the Home Assistant Supervisor: the endpoints the kwsd add-on calls.

A real HTTP server on a free loopback port, serving `GET /services/mqtt` (a broker,
or HTTP 400 "no provider" as the Supervisor answers without one) and recording
`POST /discovery`, both behind the bearer token. Used by the add-on tests and by
scripts/container-check, where the add-on container reaches it over the host network.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SUPERVISOR_TOKEN = "stand-in-supervisor-token"


class StandInSupervisor:
    def __init__(self, mqtt: dict[str, Any] | None) -> None:
        """`mqtt`: the service data to offer (host, port, username, ...), None for none."""
        self.discovery: list[dict[str, Any]] = []
        self.mqtt_requests = 0
        self.refused: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") == f"Bearer {SUPERVISOR_TOKEN}":
                    return True
                outer.refused.append(self.path)
                self._reply(401, {"result": "error", "message": "Invalid token"})
                return False

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                if self.path != "/services/mqtt":
                    self._reply(404, {"result": "error", "message": "not found"})
                    return
                outer.mqtt_requests += 1
                if mqtt is None:
                    self._reply(400, {"result": "error", "message": "Service not enabled"})
                else:
                    self._reply(200, {"result": "ok", "data": {"addon": "core_mosquitto", **mqtt}})

            def do_POST(self) -> None:
                if not self._authorised():
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path != "/discovery":
                    self._reply(404, {"result": "error", "message": "not found"})
                    return
                outer.discovery.append(body)
                self._reply(200, {"result": "ok", "data": {"uuid": f"uuid-{len(outer.discovery)}"}})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
