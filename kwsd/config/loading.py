"""`load_settings`: every source, in order of precedence, into one validated `Settings`.

Precedence, highest first: command-line overrides, environment (`KWSD_MQTT__HOST`, nested
with `__`), the TOML file (`--config`, else `$KWSD_CONFIG`, else the platform config dir),
then defaults. Every failure becomes one `ConfigError` paragraph naming the source, the
key, what is wrong and what is allowed, so the daemon can refuse a bad config while
keeping the old one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from kwsd.config.explain import (
    Provenance,
    check_env_names,
    explain_env_decoding,
    explain_validation_error,
)
from kwsd.config.fields import SettingField, follow
from kwsd.config.schema import Settings
from kwsd.config.sources import (
    LoadedFile,
    kwsd_env,
    make_paths_relative,
    nest_overrides,
    read_toml,
    reading,
    resolve_config_path,
)
from kwsd.errors import ConfigError


def load_settings(
    config_path: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """Build the settings from all sources, or raise one actionable `ConfigError`.

    `overrides` are command-line values, nested (`{"log": {"level": "debug"}}`) or dotted
    (`{"log.level": "debug"}`); None values mean "not given" and are dropped.
    """
    path, _origin = resolve_config_path(config_path)
    loaded = LoadedFile(path, read_config_file(path)) if path is not None else None
    cli = nest_overrides(overrides or {})
    env = kwsd_env()
    provenance = Provenance(cli=cli, env=env, file=loaded)
    check_env_names(env)
    try:
        with reading(loaded):
            settings = Settings(**cli)
    except ValidationError as exc:
        raise ConfigError(explain_validation_error(exc, provenance)) from None
    except SettingsError as exc:
        raise ConfigError(explain_env_decoding(exc, env)) from None
    settings._config_path = path
    return settings


def read_config_file(path: Path) -> dict[str, Any]:
    """Parse config.toml; syntax errors name the line and column, paths become file-relative."""
    data = read_toml(path)
    make_paths_relative(data, Settings, path.parent)
    return data


def lookup_field(dotted: str) -> SettingField | None:
    """The setting a dotted key such as "mqtt.tls.enabled" names, or None if it names none."""
    keys = dotted.split(".")
    trail = follow(Settings, keys)
    return trail.field if len(trail.keys) == len(keys) else None
