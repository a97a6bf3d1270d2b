"""One rule for the system-wide service's paths: where `models pull --system` installs is
where the system unit's daemon looks, and what the installer tells the user."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from kwsd.cli import main
from kwsd.model import locations
from kwsd.model.locations import SYSTEM
from kwsd.service import systemd
from kwsd.service.context import SYSTEM_CONFIG, resolve_context
from kwsd.service.install import ServiceRequest, build_plan


def unit_environment(unit: str) -> dict[str, str]:
    return dict(re.findall(r'^Environment="([A-Z_]+)=([^"]*)"$', unit, re.MULTILINE))


def test_system_unit_looks_for_models_where_pull_system_installs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = dataclasses.replace(resolve_context(system=True, with_config=False), config=SYSTEM_CONFIG)
    unit = systemd.render_system_unit(ctx)
    env = unit_environment(unit)
    # The daemon in the unit runs from an installed package (not a source checkout), so
    # its default models directory is the platform cache dir under the unit's XDG vars.
    for name in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("KWSD_ASSETS", raising=False)  # the unit runs the installed model
    daemon_looks_in = locations.user_models_dir()

    assert main(["models", "list", "--system", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    pull_installs_into = {Path(listing["models_dir"])}
    pull_installs_into |= {Path(row["path"]).parent for row in listing["models"]}

    assert daemon_looks_in == SYSTEM.models == Path("/var/cache/kwsd/models")
    assert pull_installs_into == {SYSTEM.models}
    # systemd creates (and hands to the dynamic user) exactly these directories.
    assert f"CacheDirectory={SYSTEM.cache.name}" in unit
    assert f"StateDirectory={SYSTEM.data.name}" in unit
    assert env["KWSD_CONFIG"] == str(SYSTEM_CONFIG) == "/etc/kwsd/config.toml"


def test_system_installer_names_the_same_models_directory() -> None:
    ctx = resolve_context(system=True, with_config=False)
    plan = build_plan(ServiceRequest("install", "systemd", system=True), ctx)
    told = " ".join(plan.notes)
    assert str(SYSTEM.models) in told and "kwsd models pull --system" in told
    assert "/var/lib/kwsd/models" not in told


def test_dest_and_system_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["models", "pull", "--system", "--dest", "/tmp/x"])
    assert exited.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
