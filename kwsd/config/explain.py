"""Turning a failed load into one paragraph a user can act on.

pydantic reports `('mqtt', 'port')` and "Input should be less than or equal to 65535".
The user needs the key as they wrote it (`mqtt.port`), where the value came from (the
command line, which `KWSD_*` variable, which file), what the setting is for, and for a
typo the key they probably meant. Several problems are reported together, so one edit
fixes them all.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from kwsd.config.fields import Key, field_names, follow
from kwsd.config.schema import Settings
from kwsd.config.sources import ENV_PREFIX, RESERVED_ENV_PREFIX, RESERVED_ENV_VARS, LoadedFile
from kwsd.errors import ConfigError
from kwsd.keywords.spec import KeywordSpecError

Loc = tuple[Key, ...]


@dataclass(frozen=True)
class Provenance:
    """What each source supplied, to say where a bad value came from."""

    cli: dict[str, Any]
    env: dict[str, str]
    file: LoadedFile | None

    def source_of(self, loc: Loc) -> str:
        """Where the value at `loc` came from, highest precedence first."""
        keys = [str(p).lower() for p in loc if isinstance(p, str)]
        if _has_path(self.cli, keys):
            return "on the command line"
        env_upper = {k.upper(): k for k in self.env}
        for depth in range(len(keys), 0, -1):
            name = ENV_PREFIX + "__".join(keys[:depth]).upper()
            if name in env_upper:
                return f"in environment variable {env_upper[name]}"
        if self.file is not None and _has_path(self.file.data, keys):
            return f"in config file {self.file.path}"
        if self.file is not None:
            return f"(default value; config file {self.file.path})"
        return "(default value)"


def _has_path(data: Mapping[str, Any], keys: list[str]) -> bool:
    node: Any = data
    for key in keys:
        if not isinstance(node, Mapping):
            return True  # a leaf above `key` (e.g. a JSON table) holds the value
        lowered = {str(k).lower(): v for k, v in node.items()}
        if key not in lowered:
            return False
        node = lowered[key]
    return True


def check_env_names(env: Mapping[str, str]) -> None:
    """pydantic-settings ignores unknown top-level KWSD_* variables; a typo must not vanish."""
    problems = []
    for name in sorted(env):
        if name.upper() in RESERVED_ENV_VARS or name.upper().startswith(RESERVED_ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        trail = follow(Settings, parts)
        if len(trail.keys) < len(parts):
            depth = len(trail.keys)
            where = ".".join(parts[:depth]) or None
            choices = field_names(trail.model) if trail.model is not None else []
            problems.append(
                _unknown_key_text(f"in environment variable {name}", parts[depth], where, choices)
            )
    if problems:
        raise ConfigError(_join(problems))


def explain_env_decoding(exc: SettingsError, env: Mapping[str, str]) -> str:
    """pydantic-settings names only the top-level field whose JSON failed to parse."""
    match = re.search(r'field "(\w+)"', str(exc))
    prefix = ENV_PREFIX + (match.group(1).upper() if match else "")
    names = sorted(n for n in env if n.upper().startswith(prefix)) or [f"{prefix}*"]
    return (
        f"invalid configuration: environment variable {' or '.join(names)} does not hold valid "
        "JSON. Lists and tables in KWSD_* variables must be JSON, e.g. "
        'KWSD_KEYWORDS__ENTRIES=\'[{"phrase": "LIGHT UP", "threshold": 0.3}]\' '
        '(KWSD_KEYWORDS__PHRASES also takes "A, B").'
    )


def explain_validation_error(exc: ValidationError, provenance: Provenance) -> str:
    """One paragraph: unknown keys first, then each invalid setting once."""
    reasons: dict[Loc, list[str]] = {}
    values: dict[Loc, Any] = {}
    extras: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        value = error.get("input")
        reason = str(error["msg"]).removeprefix("Value error, ")
        unknown: list[Loc] = [loc] if error["type"] == "extra_forbidden" else []
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, KeywordSpecError):
            # A `[[keywords.entries]]` table checks itself (KeywordSpec); point at its key.
            unknown = [(*loc, key) for key in cause.unknown]
            if cause.field is not None:
                loc, value = (*loc, cause.field), cause.value
            reason = cause.reason
        for key_loc in unknown:
            parent = follow(Settings, key_loc[:-1])
            section = _dotted(parent.keys) or None
            choices = field_names(parent.model) if parent.model is not None else []
            source = provenance.source_of(key_loc)
            extras.setdefault(
                _dotted(key_loc), _unknown_key_text(source, str(key_loc[-1]), section, choices)
            )
        if unknown:
            continue
        # The trail drops pydantic's union-branch suffixes (`audio.device.str`).
        path = follow(Settings, loc).keys
        # A union (e.g. `device: str | int`) reports one error per branch: keep them together.
        reasons.setdefault(path, []).append(reason)
        values.setdefault(path, value)
    problems = list(extras.values())
    for path, why in reasons.items():
        problems.append(_invalid_text(path, values[path], why, provenance))
    return _join(problems)


def _invalid_text(path: Loc, value: Any, reasons: list[str], provenance: Provenance) -> str:
    unique = list(dict.fromkeys(r.rstrip(".") for r in reasons))
    reason = " or ".join([unique[0], *(r[:1].lower() + r[1:] for r in unique[1:])])
    key = _dotted(path)
    if isinstance(value, dict):  # a check across several settings of one section
        section = f"[{key}] settings" if key else "settings"
        return f"{section} {provenance.source_of(path)}: {reason}."
    field = follow(Settings, path).field
    desc = field.description if field is not None else None
    about = f" About `{key}`: {desc}" if desc else ""
    shown = "***" if field is not None and field.is_secret else _show(value)
    return f"`{key}` = {shown} {provenance.source_of(path)} is invalid: {reason}.{about}"


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _unknown_key_text(source: str, key: str, section: str | None, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1)
    hint = f"; did you mean `{close[0]}`?" if close else "."
    place = f"[{section}]" if section else "the top level"
    return (
        f"unknown setting `{f'{section}.{key}' if section else key}` {source}{hint} "
        f"Settings allowed in {place}: {', '.join(choices)}."
    )


def _join(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"invalid configuration: {problems[0]}"
    shown = " ".join(f"({i}) {p}" for i, p in enumerate(problems[:6], 1))
    more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
    return f"invalid configuration, {len(problems)} problems: {shown}{more}"
