"""The command line starts fast: `kwsd --help` and `--version` import no heavy library."""

from __future__ import annotations

import subprocess
import sys

import kwsd
import kwsd.cli
from kwsd.cli import COMMANDS, build_parser

HEAVY = ("numpy", "onnxruntime", "pydantic", "structlog", "aiomqtt", "sentencepiece")
PROBE = (
    "import sys, contextlib, io\n"
    "from kwsd.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    try:\n"
    "        main(sys.argv[1:])\n"
    "    except SystemExit:\n"
    "        pass\n"
    "print(' '.join(sorted(m for m in sys.modules if '.' not in m)))\n"
)


def loaded_after(*argv: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True
    ).stdout
    return set(out.split())


def test_help_and_version_import_no_heavy_library() -> None:
    for argv in (["--help"], ["--version"], ["no-such-command"]):
        assert not loaded_after(*argv) & set(HEAVY), argv


def test_a_command_loads_its_own_module_only() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE.replace("'.' not in m", "m.startswith('kwsd.cli.')"),
            "keywords",
            "--help",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "kwsd.cli.keywords" in loaded
    # kwsd.cli.common, which every command uses, imports kwsd.cli.config's helpers.
    unrelated = set(kwsd.cli.COMMAND_MODULES) - {"kwsd.cli.keywords", "kwsd.cli.config"}
    assert not unrelated & set(loaded)


def test_the_listing_matches_what_the_modules_register() -> None:
    """`COMMANDS` summarises the modules for `kwsd --help`; it must not drift from them."""
    assert build_parser([]).format_help() == build_parser().format_help()
    assert {module for module, _ in COMMANDS.values()} == set(kwsd.cli.COMMAND_MODULES)


def test_version_is_printed_on_stdout() -> None:
    """Scripts read it with $(kwsd --version), as from argparse's own version action."""
    result = subprocess.run(
        [sys.executable, "-m", "kwsd", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout == f"kwsd {kwsd.__version__}\n"
    assert result.stderr == ""
