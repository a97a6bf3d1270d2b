"""The container HEALTHCHECK: is the service the entrypoint started answering?

The entrypoint knows what it started (`kwsd run` with its /healthz endpoint, a Wyoming
server, or nothing because the add-on's options were rejected) and writes that to a
small state file; this probe reads it and asks each target. It imports only the
standard library, because it runs every 30 seconds and kwsd's own modules (pydantic,
numpy) would cost a second of CPU each time.

Exit 0 when healthy, 1 otherwise, with one line saying why (Docker and podman keep it
in `inspect`'s health log).
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

TargetKind = Literal["http", "wyoming"]
TIMEOUT_SECONDS = 5.0
MAX_LINE_BYTES = 64 * 1024


def default_state_file() -> Path:
    return Path(tempfile.gettempdir()) / "kwsd-container-health.json"


@dataclass(frozen=True)
class Target:
    """One thing to ask: an HTTP /healthz URL, or a Wyoming server's tcp:// or unix:// URI."""

    kind: TargetKind
    address: str


@dataclass(frozen=True)
class HealthState:
    targets: tuple[Target, ...] = ()
    error: str | None = None  # set while the entrypoint holds in an error state


def write_state(state: HealthState, path: Path | None = None) -> None:
    path = path or default_state_file()
    payload = {"targets": [asdict(t) for t in state.targets], "error": state.error}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    tmp.replace(path)


def read_state(path: Path | None = None) -> HealthState | None:
    path = path or default_state_file()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    targets = tuple(
        Target(kind=t["kind"], address=str(t["address"])) for t in raw.get("targets", [])
    )
    error = raw.get("error")
    return HealthState(targets, str(error) if error else None)


def check_http(url: str, timeout: float) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            response.read()
        return None
    except urllib.error.HTTPError as exc:
        try:
            reasons = json.loads(exc.read().decode("utf-8")).get("reasons") or []
        except (ValueError, OSError):
            reasons = []
        return f"{url}: HTTP {exc.code}" + (f" ({'; '.join(map(str, reasons))})" if reasons else "")
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return f"{url}: {reason}"


def _wyoming_socket(address: str, timeout: float) -> socket.socket:
    if address.startswith("unix://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(address.removeprefix("unix://"))
        return sock
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def check_wyoming(address: str, timeout: float) -> str | None:
    """A Wyoming `ping` must come back as `pong`: the server is up and its loop is alive."""
    try:
        with _wyoming_socket(address, timeout) as sock:
            sock.sendall(b'{"type": "ping", "version": "1.5.2"}\n')
            line = b""
            while b"\n" not in line and len(line) < MAX_LINE_BYTES:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                line += chunk
    except OSError as exc:
        return f"Wyoming server {address}: {exc.strerror or exc}"
    try:
        reply = json.loads(line.split(b"\n", 1)[0])
    except ValueError:
        return f"Wyoming server {address}: no valid reply to ping"
    if reply.get("type") != "pong":
        return f"Wyoming server {address}: answered {reply.get('type')!r} to ping"
    return None


def probe(path: Path | None = None, timeout: float = TIMEOUT_SECONDS) -> list[str]:
    """The reasons the container is unhealthy; empty when it is healthy."""
    state = read_state(path)
    if state is None:
        return ["kwsd has not started yet (no health state written by the entrypoint)"]
    if state.error:
        return [state.error]
    problems = []
    for target in state.targets:
        check = check_http if target.kind == "http" else check_wyoming
        problem = check(target.address, timeout)
        if problem:
            problems.append(problem)
    return problems


def main() -> int:
    problems = probe()
    if problems:
        print("unhealthy: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("healthy")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
