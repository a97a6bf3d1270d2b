"""The `kwsd` command line.

Each sub-command lives in its own module exposing `register(subparsers)`; the module
sets `func` on its parser. `main` turns every `KwsdError` into one line on stderr and
its documented exit code, so users never see a traceback for a mistake they made.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from kwsd import __version__
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


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        """One line and exit code 2, instead of argparse's usage dump."""
        self.exit(ExitCode.USAGE, f"kwsd: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kwsd", description="Open-vocabulary keyword spotting daemon.")
    parser.add_argument("--version", action="version", version=f"kwsd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
