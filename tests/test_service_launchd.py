"""The LaunchAgent plist and the exact launchctl commands (never run here)."""

from __future__ import annotations

import plistlib
from pathlib import Path

import pytest

from kwsd.service import launchd
from kwsd.service.context import ServiceContext
from kwsd.service.install import ServiceRequest, build_plan
from kwsd.service.plan import Command, MakeDir, RemoveFile, ServiceError, WriteFile

HOME = Path("/Users/ada")
PLIST = HOME / "Library/LaunchAgents/org.kwsd.daemon.plist"
LOG = "/Users/ada/Library/Logs/kwsd/kwsd.log"


def context(config: Path | None = Path("/Users/ada/kwsd.toml")) -> ServiceContext:
    return ServiceContext(
        program=("/Users/ada/.local/bin/kwsd",),
        config=config,
        home=HOME,
        uid=501,
        data_dir=HOME / "Library/Application Support/kwsd",
        cache_dir=HOME / "Library/Caches/kwsd",
    )


def test_plist_parses_and_carries_the_service_contract() -> None:
    data = plistlib.loads(launchd.render_plist(context()).encode())
    assert data["Label"] == "org.kwsd.daemon"
    assert data["ProgramArguments"] == ["/Users/ada/.local/bin/kwsd", "run"]
    assert data["RunAtLoad"] is True
    # Restart after failures only; a clean exit stays down.
    assert data["KeepAlive"] == {"SuccessfulExit": False}
    # launchd cannot exempt exit 78: restarts are spaced out instead of hot-looping.
    assert data["ThrottleInterval"] >= 30
    assert data["LimitLoadToSessionType"] == "Aqua"
    # launchd's default of 256 open files is raised for Wyoming clients.
    assert data["SoftResourceLimits"]["NumberOfFiles"] >= 4096
    assert data["StandardOutPath"] == LOG
    assert data["StandardErrorPath"] == LOG
    env = data["EnvironmentVariables"]
    assert env["KWSD_CONFIG"] == "/Users/ada/kwsd.toml"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].split(":")[0] == "/Users/ada/.local/bin"
    assert "/opt/homebrew/bin" in env["PATH"].split(":")


def test_plist_without_config_leaves_kwsd_config_unset() -> None:
    data = plistlib.loads(launchd.render_plist(context(config=None)).encode())
    assert "KWSD_CONFIG" not in data["EnvironmentVariables"]


def test_plist_with_python_m_and_awkward_paths() -> None:
    ctx = ServiceContext(
        program=("/Users/a & b/venv/bin/python", "-m", "kwsd"),
        config=Path("/Users/a & b/<cfg>.toml"),
        home=Path("/Users/a & b"),
        uid=502,
        data_dir=Path("/x"),
        cache_dir=Path("/y"),
    )
    data = plistlib.loads(launchd.render_plist(ctx).encode())
    assert data["ProgramArguments"] == ["/Users/a & b/venv/bin/python", "-m", "kwsd", "run"]
    assert data["EnvironmentVariables"]["KWSD_CONFIG"] == "/Users/a & b/<cfg>.toml"


def test_plist_comment_explains_restart_policy() -> None:
    text = launchd.render_plist(context())
    assert text.startswith("<?xml")
    assert "ThrottleInterval" in text.split("<plist ")[0]


def test_install_plan() -> None:
    plan = launchd.install_plan(context())
    assert plan.steps[0] == MakeDir(HOME / "Library/Logs/kwsd")
    write = plan.steps[1]
    assert isinstance(write, WriteFile)
    assert write.path == PLIST
    assert plan.commands == [
        ("launchctl", "bootout", "gui/501/org.kwsd.daemon"),
        ("launchctl", "enable", "gui/501/org.kwsd.daemon"),
        ("launchctl", "bootstrap", "gui/501", str(PLIST)),
    ]
    bootout, _, bootstrap = [s for s in plan.steps if isinstance(s, Command)]
    assert bootout.ok_codes is None  # "not loaded" is fine
    assert bootstrap.attempts > 1  # bootout completes asynchronously
    assert not plan.needs_root
    assert any("Microphone" in note for note in plan.notes)


def test_uninstall_status_restart_logs_plans() -> None:
    ctx = context()
    uninstall = launchd.uninstall_plan(ctx)
    assert uninstall.commands == [("launchctl", "bootout", "gui/501/org.kwsd.daemon")]
    assert RemoveFile(PLIST) in uninstall.steps
    assert launchd.status_plan(ctx).commands == [("launchctl", "print", "gui/501/org.kwsd.daemon")]
    assert launchd.restart_plan(ctx).commands == [
        ("launchctl", "kickstart", "-k", "gui/501/org.kwsd.daemon")
    ]
    assert launchd.logs_plan(ctx, 50).commands == [("tail", "-n", "50", LOG)]
    assert launchd.logs_plan(ctx, 20, follow=True).commands == [("tail", "-n", "20", "-F", LOG)]


def test_system_flag_is_refused_on_macos() -> None:
    with pytest.raises(ServiceError, match="LaunchAgent"):
        build_plan(ServiceRequest("install", "launchd", system=True), context())
