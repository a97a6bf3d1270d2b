"""Where settings come from: config.toml, `KWSD_*` variables and command-line overrides.

The file is found (`--config`, else $KWSD_CONFIG, else the platform config dir), parsed
once with kwsd's own error messages and its relative paths anchored at the file, then
handed to pydantic-settings through `ParsedFileSource`, a source built on the library's
public base class. Command-line values arrive dotted (`mqtt.host`) and are nested here.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from kwsd.config.fields import table_at, walk
from kwsd.errors import ConfigError

APP_NAME = "kwsd"
ENV_PREFIX = "KWSD_"
CONFIG_ENV_VAR = "KWSD_CONFIG"
# KWSD_* variables that are not settings; anything else with the prefix must name one.
RESERVED_ENV_VARS: frozenset[str] = frozenset({CONFIG_ENV_VAR})
# kwsd's own test suite and CI pass their variables (KWSD_TEST_ONNX_MODEL_DIR, ...) through
# the environment of the commands they test; no setting is named `test`, so none is hidden.
RESERVED_ENV_PREFIX = "KWSD_TEST_"


def default_config_file() -> Path:
    """Where `config.toml` is looked for when neither `--config` nor $KWSD_CONFIG is given."""
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def resolve_config_path(explicit: Path | None = None) -> tuple[Path | None, str]:
    """Which config.toml to read, and why (for messages). Missing explicit files are errors."""
    if explicit is not None:
        return _existing(Path(explicit).expanduser(), "--config"), "--config"
    from_env = os.environ.get(CONFIG_ENV_VAR, "").strip()
    if from_env:
        return _existing(Path(from_env).expanduser(), f"${CONFIG_ENV_VAR}"), f"${CONFIG_ENV_VAR}"
    default = default_config_file()
    if default.is_file():
        return default, "the default location"
    return None, f"no file (looked for {default})"


def _existing(path: Path, origin: str) -> Path:
    if path.is_dir():
        raise ConfigError(f"config file {path} (from {origin}) is a directory; give a .toml file")
    if not path.is_file():
        raise ConfigError(
            f"config file {path} (from {origin}) does not exist; check the path, or create it "
            "with `kwsd config init`"
        )
    return path.absolute()  # stable in messages even if the daemon changes directory


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a config file; syntax errors name the line and column."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid TOML: {exc}. Check quoting (strings need "
            '"quotes"), brackets and one key = value per line around that spot.'
        ) from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None


def make_paths_relative(data: dict[str, Any], model: type[BaseModel], base: Path) -> None:
    """Anchor the relative paths in parsed file data at `base`, the file's directory.

    `file = "keywords.txt"` in /etc/kwsd/config.toml means /etc/kwsd/keywords.txt, as users
    expect, not a file in whatever directory the service happened to start in.
    """
    for field in walk(model):
        if not field.is_path:
            continue
        table = table_at(data, field.path[:-1])
        value = table.get(field.name) if table is not None else None
        if (
            table is not None
            and isinstance(value, str)
            and value
            and not value.startswith("~")
            and not Path(value).is_absolute()
        ):
            table[field.name] = str(base / value)


@dataclass(frozen=True)
class LoadedFile:
    """A parsed config file and where it came from."""

    path: Path
    data: dict[str, Any]


# The file `load_settings` chose, for `settings_customise_sources` (which is a classmethod
# and cannot take arguments). A ContextVar keeps concurrent loads in threads/tasks apart.
_CURRENT_FILE: ContextVar[LoadedFile | None] = ContextVar("kwsd_config_file", default=None)


@contextmanager
def reading(loaded: LoadedFile | None) -> Iterator[None]:
    """Settings built inside this block read `loaded` (None = no config file)."""
    token = _CURRENT_FILE.set(loaded)
    try:
        yield
    finally:
        _CURRENT_FILE.reset(token)


def file_source(settings_cls: type[BaseSettings]) -> PydanticBaseSettingsSource | None:
    """The source for the file chosen by the enclosing `reading` block, if any."""
    loaded = _CURRENT_FILE.get()
    return ParsedFileSource(settings_cls, loaded.data) if loaded is not None else None


class ParsedFileSource(PydanticBaseSettingsSource):
    """The chosen config.toml, already parsed (paths file-relative).

    A source of kwsd's own on pydantic-settings' public base class: the file is read once,
    with kwsd's error messages, and handed over as data.
    """

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


def kwsd_env() -> dict[str, str]:
    """The non-empty `KWSD_*` variables (empty ones mean unset, as docker-compose writes)."""
    return {k: v for k, v in os.environ.items() if k.upper().startswith(ENV_PREFIX) and v != ""}


def nest_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`{"mqtt.host": "x", "log": {"level": "debug"}}` → one nested dict, None values dropped.

    Keys may be dotted or use `__` like the env vars; later keys win over earlier ones.
    """
    result: dict[str, Any] = {}
    for key, raw in overrides.items():
        if raw is None:
            continue
        value = nest_overrides(raw) if isinstance(raw, Mapping) else raw
        if isinstance(value, dict) and not value:
            continue
        parts = [p for p in re.split(r"\.|__", key) if p]
        if not parts:
            raise ConfigError(f"command-line setting {key!r} has no key name")
        tree: dict[str, Any] = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            tree = {part: tree}
        _deep_merge(result, tree)
    return result


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value
