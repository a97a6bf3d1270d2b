"""The systemd units and the exact systemctl/journalctl commands (never run here)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kwsd.service import systemd
from kwsd.service.context import ServiceContext, resolve_program
from kwsd.service.install import ServiceRequest, build_plan
from kwsd.service.plan import Command, MakeDir, RemoveFile, WriteFile

HOME = Path("/home/ada")


def context(
    program: tuple[str, ...] = ("/home/ada/.local/bin/kwsd",), **changes: object
) -> ServiceContext:
    ctx = ServiceContext(
        program=program,
        config=Path("/home/ada/.config/kwsd/config.toml"),
        home=HOME,
        uid=1000,
        data_dir=HOME / ".local/share/kwsd",
        cache_dir=HOME / ".cache/kwsd",
    )
    return dataclasses.replace(ctx, **changes)  # type: ignore[arg-type]


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A strict reading of the unit syntax: sections, Key=Value lines, comments."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"line {number} is neither a section, comment nor Key=Value: {line!r}"
        assert current is not None, f"line {number} is outside a section"
        assert key == key.strip() and key.isidentifier(), f"bad key on line {number}: {key!r}"
        assert not line.endswith("\\"), "no continuation lines expected"
        current.setdefault(key, []).append(value)
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key} appears {len(values)} times"
    return values[0]


def test_user_unit_contract() -> None:
    unit = parse_unit(systemd.render_user_unit(context()))
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "ExecStart") == "/home/ada/.local/bin/kwsd run"
    assert int(one(unit, "Service", "WatchdogSec")) > 0
    assert one(unit, "Service", "Restart") == "on-failure"
    assert "78" in one(unit, "Service", "RestartPreventExitStatus").split()
    assert "1" not in one(unit, "Service", "RestartPreventExitStatus").split()  # crashes restart
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"  # SIGHUP reloads
    assert unit["Service"]["Environment"] == [
        '"KWSD_CONFIG=/home/ada/.config/kwsd/config.toml"',
        '"PYTHONUNBUFFERED=1"',
    ]
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "ProtectHome") == "read-only"
    assert one(unit, "Service", "PrivateTmp") == "yes"
    assert one(unit, "Service", "ReadWritePaths").split() == [
        "-/home/ada/.local/share/kwsd",
        "-/home/ada/.cache/kwsd",
    ]
    assert one(unit, "Install", "WantedBy") == "default.target"
    assert "DynamicUser" not in unit["Service"]
    # Wyoming clients each hold a descriptor: a fixed budget, not the system default.
    assert int(one(unit, "Service", "LimitNOFILE")) >= 4096


def test_user_unit_without_sandbox_keeps_no_new_privileges() -> None:
    unit = parse_unit(systemd.render_user_unit(context(), sandbox=False))
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths"):
        assert key not in unit["Service"]


def test_system_unit_contract() -> None:
    ctx = context(
        program=("/opt/kwsd/bin/kwsd",), config=Path("/etc/kwsd/config.toml"), system=True
    )
    unit = parse_unit(systemd.render_system_unit(ctx))
    service = unit["Service"]
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert "78" in one(unit, "Service", "RestartPreventExitStatus").split()
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Service", "DynamicUser") == "yes"
    assert one(unit, "Service", "SupplementaryGroups") == "audio"
    assert one(unit, "Service", "StateDirectory") == "kwsd"
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "ProtectHome") == "read-only"
    assert one(unit, "Service", "PrivateTmp") == "yes"
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "DeviceAllow") == "char-alsa rw"
    assert "PrivateDevices" not in service  # would hide /dev/snd
    assert "MemoryDenyWriteExecute" not in service  # would break the audio callback
    assert '"XDG_DATA_HOME=/var/lib"' in service["Environment"]
    assert '"KWSD_CONFIG=/etc/kwsd/config.toml"' in service["Environment"]
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    assert "network-online.target" in one(unit, "Unit", "After")
    assert int(one(unit, "Service", "LimitNOFILE")) >= 4096


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("/usr/bin/kwsd", "/usr/bin/kwsd"),
        ("/opt/my apps/kwsd", '"/opt/my apps/kwsd"'),
        ("/opt/100%/kwsd", "/opt/100%%/kwsd"),
        ("/opt/$HOME/kwsd", "/opt/$$HOME/kwsd"),
        ('say "hi"', '"say \\"hi\\""'),
        ("a\\b", '"a\\\\b"'),
        ("", '""'),
    ],
)
def test_exec_arg_quoting(arg: str, expected: str) -> None:
    assert systemd.quote_exec_arg(arg) == expected


def test_environment_line_escapes_specifiers_and_quotes() -> None:
    line = systemd.environment_line("KWSD_CONFIG", '/cfg/50% "x".toml')
    assert line == 'Environment="KWSD_CONFIG=/cfg/50%% \\"x\\".toml"'


def systemd_analyze_verify(unit_text: str, tmp_path: Path, user: bool) -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt install systemd)")
    path = tmp_path / "kwsd.service"
    path.write_text(unit_text)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "notice"}
    argv = [tool, *(["--user"] if user else []), "verify", str(path)]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, timeout=60)
    if "Failed to initialize manager" in result.stderr or "Failed to lookup" in result.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {result.stderr.strip()}")
    # verify exits 0 even for unknown keys; every complaint names the unit file.
    complaints = [
        line for line in result.stderr.splitlines() if str(path) in line or "kwsd.service" in line
    ]
    assert result.returncode == 0, result.stderr
    return "\n".join(complaints)


def test_systemd_analyze_accepts_user_unit(tmp_path: Path) -> None:
    ctx = context(program=resolve_program(), config=tmp_path / "my config%.toml")
    assert systemd_analyze_verify(systemd.render_user_unit(ctx), tmp_path, user=True) == ""


def test_systemd_analyze_accepts_system_unit(tmp_path: Path) -> None:
    ctx = context(program=resolve_program(), system=True)
    assert systemd_analyze_verify(systemd.render_system_unit(ctx), tmp_path, user=False) == ""


def test_systemd_analyze_check_would_catch_a_bad_unit(tmp_path: Path) -> None:
    bad = systemd.render_user_unit(context(program=resolve_program())).replace(
        "Restart=on-failure", "Restart=sometimes"
    )
    assert "sometimes" in systemd_analyze_verify(bad, tmp_path, user=True)


def test_user_install_plan() -> None:
    ctx = context()
    plan = build_plan(ServiceRequest("install", "systemd"), ctx)
    unit_path = HOME / ".config/systemd/user/kwsd.service"
    assert plan.steps[:2] == (MakeDir(ctx.data_dir), MakeDir(ctx.cache_dir))
    write = plan.steps[2]
    assert isinstance(write, WriteFile) and write.path == unit_path
    assert write.content == systemd.render_user_unit(ctx)
    assert plan.commands == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "kwsd.service"),
        ("systemctl", "--user", "restart", "kwsd.service"),
    ]
    assert not plan.needs_root
    assert any("enable-linger" in note for note in plan.notes)


def test_no_sandbox_install() -> None:
    plan = build_plan(ServiceRequest("install", "systemd", sandbox=False), context())
    assert "ProtectSystem" not in next(iter(plan.files.values()))


def test_system_install_plan_needs_root_and_warns_about_home_install(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("")
    config.chmod(0o600)
    ctx = context(config=config, system=True)
    plan = build_plan(ServiceRequest("install", "systemd", system=True), ctx)
    assert plan.needs_root
    assert list(plan.files) == [Path("/etc/systemd/system/kwsd.service")]
    assert plan.commands == [
        ("systemctl", "daemon-reload"),
        ("systemctl", "enable", "kwsd.service"),
        ("systemctl", "restart", "kwsd.service"),
    ]
    assert len(plan.warnings) == 2
    assert "home directory" in plan.warnings[0]
    assert "not world-readable" in plan.warnings[1]
    config.chmod(0o644)
    clean = build_plan(
        ServiceRequest("install", "systemd", system=True),
        context(program=("/opt/kwsd/bin/kwsd",), config=config, system=True),
    )
    assert clean.warnings == ()


def test_other_user_plans() -> None:
    ctx = context()
    unit_path = HOME / ".config/systemd/user/kwsd.service"
    uninstall = build_plan(ServiceRequest("uninstall", "systemd"), ctx)
    assert uninstall.commands == [
        ("systemctl", "--user", "disable", "--now", "kwsd.service"),
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "reset-failed", "kwsd.service"),
    ]
    assert RemoveFile(unit_path) in uninstall.steps
    status = build_plan(ServiceRequest("status", "systemd"), ctx)
    assert status.commands == [
        ("systemctl", "--user", "status", "kwsd.service", "--no-pager", "--lines=20")
    ]
    step = status.steps[0]
    assert isinstance(step, Command) and step.ok_codes == frozenset({0, 3})
    logs = build_plan(ServiceRequest("logs", "systemd", lines=30, follow=True), ctx)
    assert logs.commands == [
        ("journalctl", "--user", "-u", "kwsd.service", "-n", "30", "--no-pager", "-f")
    ]
    restart = build_plan(ServiceRequest("restart", "systemd"), ctx)
    assert restart.commands == [("systemctl", "--user", "restart", "kwsd.service")]


def test_system_logs_and_restart() -> None:
    ctx = context(system=True)
    assert build_plan(ServiceRequest("logs", "systemd", system=True), ctx).commands == [
        ("journalctl", "-u", "kwsd.service", "-n", "100", "--no-pager")
    ]
    restart = build_plan(ServiceRequest("restart", "systemd", system=True), ctx)
    assert restart.commands == [("systemctl", "restart", "kwsd.service")]
    assert restart.needs_root
