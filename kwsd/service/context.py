"""Everything a unit file or plist needs to know about this installation.

Resolved once from the running interpreter and environment, then passed to the pure
renderers, so that tests can build contexts for any platform and user.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from kwsd.model.locations import SYSTEM
from kwsd.service.plan import ServiceError

APP = "kwsd"
CONFIG_NAME = "config.toml"
SYSTEM_CONFIG = SYSTEM.config / CONFIG_NAME
# The open-file limit the units set: Wyoming clients (wyoming.max_connections, at most
# 4096) plus MQTT, /healthz, model and keyword files. kwsd serves fewer Wyoming clients,
# and says so, when its limit is lower; an explicit value keeps that from depending on
# each system's default (1024 under systemd, 256 under launchd).
OPEN_FILES_LIMIT = 8192


@dataclass(frozen=True)
class ServiceContext:
    """Paths and identity for one install: user service or system-wide (`system=True`)."""

    program: tuple[str, ...]  # argv prefix that runs kwsd, e.g. ("/opt/kwsd/bin/kwsd",)
    config: Path | None  # exported as KWSD_CONFIG; None = the daemon's own default lookup
    home: Path
    uid: int
    data_dir: Path  # models and state the daemon may write
    cache_dir: Path
    system: bool = False

    @property
    def run_argv(self) -> tuple[str, ...]:
        return (*self.program, "run")


def resolve_program(
    executable: str = sys.executable,
    which: Callable[[str], str | None] = shutil.which,
) -> tuple[str, ...]:
    """How the service should start kwsd: the same installation that runs this command.

    The `kwsd` script beside this interpreter comes first (so a venv or pipx install
    runs itself, not some other `kwsd` earlier on PATH); then PATH; then `python -m kwsd`.
    The interpreter path is kept unresolved: a venv's `python` symlink is what makes it
    a venv.
    """
    beside = Path(executable).parent / APP
    if beside.is_file() and os.access(beside, os.X_OK):
        return (str(beside.absolute()),)
    found = which(APP)
    if found:
        return (str(Path(found).absolute()),)
    return (str(Path(executable).absolute()), "-m", APP)


def default_config(system: bool) -> Path:
    if system:
        return SYSTEM_CONFIG
    return platformdirs.user_config_path(APP) / CONFIG_NAME


def resolve_config(
    explicit: str | None,
    *,
    system: bool,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """`--config`, else `$KWSD_CONFIG`, else the default file if it exists.

    A missing default is not an error (the daemon runs on defaults); a missing file the
    user named is, because the service would fail at every start.
    """
    env = os.environ if environ is None else environ
    named = explicit or env.get("KWSD_CONFIG")
    if named:
        path = Path(named).expanduser().absolute()
        if not path.is_file():
            source = "--config" if explicit else "KWSD_CONFIG"
            raise ServiceError(f"{source} names {path}, which does not exist or is not a file")
        return path
    path = default_config(system)
    return path if path.is_file() else None


def resolve_context(
    config: str | None = None,
    *,
    system: bool = False,
    environ: Mapping[str, str] | None = None,
    with_config: bool = True,
) -> ServiceContext:
    """`with_config=False` for actions that do not render a unit (status, logs, ...)."""
    home = Path.home()
    if system:
        # Fixed by the unit: StateDirectory=kwsd and CacheDirectory=kwsd.
        data_dir, cache_dir = SYSTEM.data, SYSTEM.cache
    else:
        data_dir = platformdirs.user_data_path(APP)
        cache_dir = platformdirs.user_cache_path(APP)
    return ServiceContext(
        program=resolve_program(),
        config=resolve_config(config, system=system, environ=environ) if with_config else None,
        home=home,
        uid=os.getuid(),
        data_dir=data_dir,
        cache_dir=cache_dir,
        system=system,
    )
