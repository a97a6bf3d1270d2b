"""The `kwsd` command line.

Each sub-command lives in its own module exposing `register(subparsers)`; the module
sets `func` on its parser. `main` turns every `KwsdError` into one line on stderr and
its documented exit code, so users never see a traceback for a mistake they made.

`main` imports only the module of the command it runs: the modules pull in pydantic,
numpy, ONNX Runtime and MQTT, which would make `kwsd --help` (and every command) pay
for all of them. The top-level listing comes from `COMMANDS` instead; a test keeps it
equal to what the modules register.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kwsd.errors import ExitCode, KwsdError

# Sub-command modules, in the order `kwsd --help` lists them.
COMMAND_MODULES: tuple[str, ...] = (
    "kwsd.cli.run",
    "kwsd.cli.detect",
    "kwsd.cli.keywords",
    "kwsd.cli.models",
    "kwsd.cli.service",
    "kwsd.cli.config",
    "kwsd.cli.devices",
    "kwsd.cli.eval",
    "kwsd.cli.wyoming",
    "kwsd.cli.container",
)


# Every command: the module that registers it and its one-line summary for `kwsd --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("kwsd.cli.run", "run the keyword-spotting daemon"),
    "detect": ("kwsd.cli.detect", "spot keywords in audio files (wav/flac, any rate)"),
    "decode-frames": ("kwsd.cli.detect", "search precomputed encoder frames (parity checks)"),
    "keywords": ("kwsd.cli.keywords", "inspect keyword lists"),
    "models": ("kwsd.cli.models", "download, list and verify the speech model"),
    "service": ("kwsd.cli.service", "run kwsd as a service (launchd on macOS, systemd on Linux)"),
    "config": ("kwsd.cli.config", "check and show the configuration"),
    "devices": ("kwsd.cli.devices", "list audio input devices"),
    "eval": (
        "kwsd.cli.eval",
        "measure recall, false alarms and latency on labelled recordings; tune thresholds",
    ),
    "wyoming": ("kwsd.cli.wyoming", "serve keywords as Wyoming wake words (Home Assistant Assist)"),
    "container": (
        "kwsd.cli.container",
        "entry points of the container image and the Home Assistant add-on",
    ),
}


class _VersionAction(argparse.Action):
    """`--version`, reading the installed version only when asked."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        import kwsd

        print(f"kwsd {kwsd.__version__}")  # stdout, as argparse's own version action does
        parser.exit()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line and exit code 2, instead of argparse's usage dump."""
        self.exit(ExitCode.USAGE, f"kwsd: error: {message} (see `{self.prog} --help`)\n")


def build_parser(modules: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser with the commands of `modules` (default: all of them) in full.

    The other commands are listed by their summary, without importing their modules.
    """
    loaded = COMMAND_MODULES if modules is None else modules
    parser = _Parser(prog="kwsd", description="Open-vocabulary keyword spotting daemon.")
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        if name in loaded:
            importlib.import_module(name).register(sub)
            continue
        for command, (module, summary) in COMMANDS.items():
            if module == name:
                sub.add_parser(command, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = next((w for w in words if not w.startswith("-")), None)
    module = COMMANDS.get(command, ("", ""))[0] if command is not None else ""
    parser = build_parser([module] if module in COMMAND_MODULES else [])
    args = parser.parse_args(words)
    try:
        code = args.func(args)
    except KwsdError as exc:
        print(f"kwsd: error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
