"""`kwsd service ...` end to end in dry-run mode, plus context resolution."""

from __future__ import annotations

import argparse
import os
import plistlib
import stat
from pathlib import Path

import pytest

from kwsd.cli import _Parser
from kwsd.cli import service as service_cli
from kwsd.service.context import default_config, resolve_config, resolve_program
from kwsd.service.install import detect_manager, sudo_warning
from kwsd.service.plan import ServiceError


def parser() -> argparse.ArgumentParser:
    root = _Parser(prog="kwsd")
    service_cli.register(root.add_subparsers(dest="command", parser_class=_Parser))
    return root


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "KWSD_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_install_dry_run_systemd(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = home / "kwsd.toml"
    config.write_text("")
    assert (
        run(["service", "install", "--manager", "systemd", "--config", str(config), "--dry-run"])
        == 0
    )
    out = capsys.readouterr().out
    assert f"# write {home}/.config/systemd/user/kwsd.service" in out
    assert f'Environment="KWSD_CONFIG={config}"' in out
    assert "ExecStart=" + resolve_program()[0] in out
    assert "systemctl --user enable kwsd.service" in out
    assert not (home / ".config").exists()  # nothing written


def test_install_dry_run_launchd(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["service", "install", "--manager", "launchd", "--dry-run"]) == 0
    out = capsys.readouterr().out
    plist_text = out.split(":\n", 1)[1].split("# end of")[0]
    data = plistlib.loads(plist_text.encode())
    assert data["ProgramArguments"][-1] == "run"
    assert "KWSD_CONFIG" not in data["EnvironmentVariables"]  # no config file exists
    assert (
        f"launchctl bootstrap gui/{os.getuid()} {home}/Library/LaunchAgents/org.kwsd.daemon.plist"
        in out
    )


def test_default_config_is_used_when_present(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = default_config(system=False)  # platform-specific, under the test's HOME
    assert config.is_relative_to(home)
    config.parent.mkdir(parents=True)
    config.write_text("")
    run(["service", "install", "--manager", "systemd", "--dry-run"])
    assert f'Environment="KWSD_CONFIG={config}"' in capsys.readouterr().out


def test_logs_and_status_dry_run(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(["service", "logs", "-n", "5", "-f", "--manager", "systemd", "--dry-run"])
    assert "journalctl --user -u kwsd.service -n 5 --no-pager -f" in capsys.readouterr().out
    run(["service", "status", "--manager", "launchd", "--dry-run"])
    assert f"launchctl print gui/{os.getuid()}/org.kwsd.daemon" in capsys.readouterr().out


def test_status_ignores_a_broken_kwsd_config(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KWSD_CONFIG", str(home / "gone.toml"))
    assert run(["service", "status", "--manager", "systemd", "--dry-run"]) == 0
    with pytest.raises(ServiceError, match="KWSD_CONFIG names"):
        run(["service", "install", "--manager", "systemd", "--dry-run"])


def test_missing_config_is_an_actionable_error(home: Path) -> None:
    with pytest.raises(ServiceError, match=r"--config names .*nope\.toml, which does not exist"):
        run(["service", "install", "--config", str(home / "nope.toml"), "--dry-run"])


def test_bad_arguments_are_usage_errors(home: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        run(["service", "logs", "-n", "0"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        run(["service"])
    assert exc.value.code == 2


def test_manager_detection() -> None:
    assert detect_manager("darwin") == "launchd"
    assert detect_manager("linux") == "systemd"
    with pytest.raises(ServiceError, match=r"supports macOS .* and Linux"):
        detect_manager("win32")


def test_resolve_program_prefers_the_running_installation(tmp_path: Path) -> None:
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    python = bindir / "python"
    python.write_text("")
    assert resolve_program(str(python), which=lambda _: "/usr/bin/kwsd") == ("/usr/bin/kwsd",)
    script = bindir / "kwsd"
    script.write_text("#!/bin/sh\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert resolve_program(str(python), which=lambda _: "/usr/bin/kwsd") == (str(script),)
    script.unlink()
    assert resolve_program(str(python), which=lambda _: None) == (str(python), "-m", "kwsd")


def test_resolve_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    explicit = tmp_path / "a.toml"
    explicit.write_text("")
    from_env = tmp_path / "b.toml"
    from_env.write_text("")
    env = {"KWSD_CONFIG": str(from_env)}
    assert resolve_config(str(explicit), system=False, environ=env) == explicit
    assert resolve_config(None, system=False, environ=env) == from_env
    assert resolve_config(None, system=False, environ={}) is None  # default file absent
    default = default_config(system=False)
    default.parent.mkdir(parents=True)
    default.write_text("")
    assert resolve_config(None, system=False, environ={}) == default


def test_sudo_without_system_warns() -> None:
    warning = sudo_warning("install", False, 0, {"SUDO_USER": "ada"})
    assert warning is not None and "for root, not for ada" in warning
    assert sudo_warning("install", True, 0, {"SUDO_USER": "ada"}) is None
    assert sudo_warning("install", False, 1000, {"SUDO_USER": "ada"}) is None
    assert sudo_warning("install", False, 0, {}) is None
    assert sudo_warning("status", False, 0, {"SUDO_USER": "ada"}) is None
