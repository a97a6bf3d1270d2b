"""Missing-model exit path and the generated deploy/ examples."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import structlog

from kwsd.errors import ExitCode, ModelMissingError
from kwsd.service.examples import render_examples
from kwsd.service.missing_model import report_missing_model
from kwsd.service.notify import Notifier

REPO = Path(__file__).resolve().parents[1]


def test_missing_model_exits_78_and_says_what_to_run() -> None:
    path = Path("/tmp") / f"kwsd-mm-{uuid.uuid4().hex[:12]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": str(path)})
        error = ModelMissingError("no model in /home/ada/.local/share/kwsd/models")
        with structlog.testing.capture_logs() as logs:
            code = report_missing_model(error, notifier, platform="linux")
        assert code == int(ExitCode.NOT_CONFIGURED) == 78
        entry = logs[-1]
        assert entry["log_level"] == "error"
        assert entry["error"] == "no model in /home/ada/.local/share/kwsd/models"
        assert "kwsd models pull" in entry["fix"]
        assert "kwsd service restart" in entry["fix"]
        sock.settimeout(5)
        assert (
            sock.recv(4096).decode().startswith("STATUS=no model installed: run `kwsd models pull`")
        )
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def test_missing_model_hint_on_macos_mentions_automatic_retry() -> None:
    with structlog.testing.capture_logs() as logs:
        assert report_missing_model(ModelMissingError("x"), Notifier(None), platform="darwin") == 78
    assert "retries every 60 s" in logs[-1]["fix"]


def test_deploy_examples_are_generated_from_the_installer() -> None:
    for relative, content in render_examples().items():
        path = REPO / "deploy" / relative
        assert path.is_file(), f"{path} missing; run `python -m kwsd.service.examples deploy`"
        assert path.read_text() == content, (
            f"{path} is stale; run `python -m kwsd.service.examples deploy`"
        )


def test_deploy_examples_carry_the_restart_contract() -> None:
    examples = render_examples()
    assert "RestartPreventExitStatus=2 3 4 5 78" in examples["systemd/kwsd.service"]
    assert "ExecStart=%h/.local/bin/kwsd run" in examples["systemd/kwsd.service"]
    assert (
        "ReadWritePaths=-%h/.local/share/kwsd -%h/.cache/kwsd" in examples["systemd/kwsd.service"]
    )
    assert "DynamicUser=yes" in examples["systemd/kwsd-system.service"]
    assert "<key>ThrottleInterval</key>" in examples["launchd/org.kwsd.daemon.plist"]
