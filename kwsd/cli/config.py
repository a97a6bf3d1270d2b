"""`kwsd config check|path|init|example`, plus the options every daemon-like command shares.

`add_config_args` and `settings_from_args` are what `kwsd run`, `kwsd wyoming` and friends
use, so `--config`, `--log-level`, `--log-format` and `--set KEY=VALUE` behave the same in
every command.
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from kwsd.config import (
    Settings,
    default_config_file,
    load_settings,
    lookup_field,
    resolve_config_path,
)
from kwsd.errors import ConfigError, ModelError

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "console", "json")


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add --config, --set, --log-level and --log-format to a sub-command's parser."""
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"config.toml to read (default: $KWSD_CONFIG, else {default_config_file()} "
        "if it exists)",
    )
    group.add_argument(
        "--set",
        dest="config_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set mqtt.host=broker.local --set search.beam=8 "
        "(VALUE is read as TOML, else as a plain string; may be repeated)",
    )
    group.add_argument(
        "--log-level", type=str.lower, choices=LOG_LEVELS, help="log level (default: info)"
    )
    group.add_argument(
        "--log-format",
        type=str.lower,
        choices=LOG_FORMATS,
        help="log format on stderr (default: auto = console on a terminal, else JSON lines)",
    )


def parse_set_option(item: str) -> tuple[str, Any]:
    """`mqtt.port=1884` → ("mqtt.port", 1884); a value that is not TOML stays a string.

    Settings that hold text (`mqtt.username=2024`, `audio.device=2`) keep the text as typed.
    """
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"--set {item!r} is not KEY=VALUE; write e.g. --set mqtt.host=broker.local"
        )
    field = lookup_field(key)
    if field is not None and field.holds_text:
        return key, text
    try:
        value: Any = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Load the settings for a command: its own flags > --set > env > config file > defaults.

    `overrides` use `__` for nesting (`audio__device=args.device`) or nested dicts
    (`audio={"source": "file"}`); None means "flag not given" and is ignored.
    """
    cli: dict[str, Any] = {}
    for item in getattr(args, "config_set", None) or []:
        key, value = parse_set_option(item)
        cli[key] = value
    flags = {
        "log.level": getattr(args, "log_level", None),
        "log.format": getattr(args, "log_format", None),
        **overrides,
    }
    # A flag that was not given is None. Dropping it here, not later, matters: a flag's
    # key is often the same dotted key as a --set, and a None would erase that --set.
    cli.update({key: value for key, value in flags.items() if value is not None})
    return load_settings(getattr(args, "config", None), cli)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "config",
        help="check and show the configuration",
        description="Validate the configuration (config.toml, KWSD_* environment variables, "
        "--set) and show the effective settings.",
    )
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION")
    actions.required = True

    check = actions.add_parser(
        "check",
        help="validate and print the effective settings (secrets masked)",
        description="Validate the configuration and print the effective settings with "
        "secrets masked. The keywords are checked as `kwsd run` checks them, against the "
        "model's vocabulary when a model is installed. Exit code 0 when valid, 3 for an "
        "invalid setting, 5 for keywords `kwsd run` would refuse (with the same message).",
    )
    add_config_args(check)
    check.add_argument(
        "--format",
        dest="output_format",
        choices=("toml", "json"),
        default="toml",
        help="output format (default: toml)",
    )
    check.set_defaults(func=_check)

    where = actions.add_parser(
        "path",
        help="print which config file would be used",
        description="Print the config file kwsd would read ($KWSD_CONFIG, else the "
        "platform default) and where the default location is.",
    )
    where.add_argument("--config", type=Path, metavar="FILE", help="an explicit config file")
    where.set_defaults(func=_path)

    init = actions.add_parser(
        "init",
        help="write the commented example config (never overwrites)",
        description="Write the commented example configuration, which documents every "
        f"option and its default, to PATH (default: {default_config_file()}). An existing "
        "file is never overwritten.",
    )
    init.add_argument("path", nargs="?", type=Path, metavar="PATH", help="where to write it")
    init.set_defaults(func=_init)

    example = actions.add_parser(
        "example",
        help="print the commented example config",
        description="Print the commented example configuration to stdout, e.g. "
        "`podman run --rm kwsd config example > config.toml`.",
    )
    example.set_defaults(func=_example)


def _check(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    for warning in missing_files(settings):
        print(f"kwsd: warning: {warning}", file=sys.stderr)
    for note in check_keywords(settings):
        print(f"kwsd: {note}", file=sys.stderr)
    if args.output_format == "json":
        print(json.dumps(settings.masked_dump(), indent=2))
        return 0
    origin = settings.config_path or "environment and defaults only (no config file)"
    print(f"# kwsd configuration is valid. Loaded from: {origin}")
    print('# Secrets are shown as "***"; unset options are commented out.')
    print(to_toml(settings.masked_dump()), end="")
    return 0


def _path(args: argparse.Namespace) -> int:
    path, origin = resolve_config_path(args.config)
    print(f"{path} (from {origin})" if path is not None else origin)
    print(f"default location: {default_config_file()}")
    return 0


def example_config() -> str:
    """The commented example, shipped in the package so that a wheel install has it too."""
    return (resources.files("kwsd") / "data" / "config.example.toml").read_text(encoding="utf-8")


def _example(_args: argparse.Namespace) -> int:
    print(example_config(), end="")
    return 0


def _init(args: argparse.Namespace) -> int:
    target: Path = (args.path or default_config_file()).expanduser()
    if target.is_dir():
        target = target / "config.toml"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("x", encoding="utf-8") as out:  # "x": refuse to overwrite
            out.write(example_config())
    except FileExistsError:
        raise ConfigError(
            f"{target} already exists; kwsd config init never overwrites a config. Edit it, "
            "or move it away and run this again"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    print(f"wrote {target}")
    print(f"next: edit it, then `kwsd config check --config {target}`", file=sys.stderr)
    return 0


def check_keywords(settings: Settings) -> list[str]:
    """Check the configured keywords the way `kwsd run` does; notes for the user.

    Raises KeywordError with the message `kwsd run` would stop with for the same
    keywords: both read them with `config_keywords` and compile them with
    `compile_keywords`. Only the model's vocabulary (tokens.txt, bpe.model) is read,
    never the model itself, so this is quick and works where the model cannot load.
    Without a vocabulary, what can be checked without one is (the file, the entries,
    the count), and a note says what was not and how to fix that.
    """
    # Here, not at the top: the other `kwsd config` actions need none of this.
    from kwsd.backends.base import ModelDefaults
    from kwsd.keywords import Tokenizer, compile_keywords
    from kwsd.keywords.compile import shorten
    from kwsd.model.resolve import resolve_vocabulary
    from kwsd.registry import NO_KEYWORDS_WARNING, config_keywords

    config = config_keywords(settings.keywords, settings.search)
    if not config.specs:
        return [f"warning: {NO_KEYWORDS_WARNING}"]
    count = f"{len(config.specs):,} keyword{'s' if len(config.specs) != 1 else ''}"
    model = settings.model
    try:
        vocabulary = resolve_vocabulary(
            model.dir,
            backend=model.backend,
            assets=settings.assets,
            onnx_url=model.onnx_url,
            coreml_repo=model.coreml_repo,
        )
        tokenizer = Tokenizer(vocabulary.tokens, vocabulary.bpe_model)
    except ModelError as exc:
        return [
            f"warning: {count} read, but not checked against the model's vocabulary "
            f"(spelling, BPE pieces), because it was not found: {exc}. Then run "
            "`kwsd config check` again to check them"
        ]
    keywords = compile_keywords(
        config.specs,
        tokenizer,
        ModelDefaults(),
        boost=config.boost,
        threshold=config.threshold,
    )
    notes = [f"{count} checked against the model's vocabulary ({vocabulary.tokens})"]
    notes += [f"warning: {w}" for w in shorten(keywords.warnings)]
    return notes


def missing_files(settings: Settings) -> list[str]:
    """Referenced files that do not exist yet: worth a warning, not a config error.

    (A missing keywords file is an error: `check_keywords` refuses it as `kwsd run` does.)
    """
    checks: list[tuple[str, Path | None, bool]] = [
        ("audio.file", settings.audio.file, settings.audio.source == "file"),
        ("model.dir", settings.model.dir, True),
        ("assets", settings.assets, True),
    ]
    return [
        f"{key} = {path} does not exist"
        for key, path, relevant in checks
        if relevant and path is not None and not path.exists()
    ]


# --------------------------------------------------------------------------------------
# A small TOML writer for the effective settings (tomllib only reads)
# --------------------------------------------------------------------------------------


def to_toml(data: dict[str, Any]) -> str:
    """Render nested settings as TOML that `kwsd` can read back; None becomes a comment."""
    lines: list[str] = []
    _emit_table(data, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _emit_table(data: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_array(v)}
    for key, value in scalars.items():
        lines.append(f"# {key} = (not set)" if value is None else f"{key} = {_value(value)}")
    for key, value in data.items():
        if _is_table(value):
            lines.extend(["", f"[{'.'.join([*path, key])}]"])
            _emit_table(value, [*path, key], lines)
        elif _is_table_array(value):
            for item in value:
                lines.extend(["", f"[[{'.'.join([*path, key])}]]"])
                given = {k: v for k, v in item.items() if v is not None and v != []}
                _emit_table(given, [*path, key], lines)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{k} = {_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + inner + " }"
    return json.dumps(str(value), ensure_ascii=False)
