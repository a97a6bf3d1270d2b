"""`kwsd run`: the daemon. Listens to the microphone (or a file / stdin) until stopped.

Without a broker (`mqtt.host`) detections are printed on stdout as JSON lines, so
`kwsd run --keywords "hey computer"` works out of the box. Exit codes: 0 after a clean
stop (SIGTERM/SIGINT or end of input), 78 when no model is installed, and the usual
codes for bad configuration (3), model (4), keywords (5) or audio input (6).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from kwsd.cli.common import add_keyword_args, add_model_args, settings_for
from kwsd.config import Settings
from kwsd.daemon import Daemon
from kwsd.keywords import parse_keyword_line


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the keyword-spotting daemon",
        description="Spot keywords in live audio and publish each detection to MQTT "
        "(or print it on stdout as a JSON line when no broker is configured). "
        "SIGHUP, or editing the config or keywords file, reloads the keywords.",
    )
    add_keyword_args(parser)
    add_model_args(parser)
    audio = parser.add_argument_group("audio input")
    audio.add_argument(
        "--source", choices=("mic", "file", "stdin"), help="audio source (audio.source)"
    )
    audio.add_argument("--file", type=Path, metavar="F", help="audio file (implies --source file)")
    audio.add_argument("--device", metavar="D", help="input device name or index (audio.device)")
    audio.add_argument(
        "--fast",
        action="store_true",
        help="read a file as fast as possible instead of at real time",
    )
    audio.add_argument("--loop", action="store_true", help="restart a file at its end")
    parser.set_defaults(func=run)


def load(args: argparse.Namespace) -> Settings:
    """The settings for this run: flags > --set > environment > config file > defaults."""
    overrides: dict[str, Any] = {
        "audio.source": args.source or ("file" if args.file else None),
        "audio.file": args.file,
        "audio.device": args.device,
        "audio.realtime": False if args.fast else None,
        "audio.loop": True if args.loop else None,
        "keywords.file": args.keywords_file,
    }
    if args.keywords or args.keywords_file:
        # Keywords on the command line replace the configured list rather than add to it.
        overrides["keywords.phrases"] = []
        overrides["keywords.entries"] = [parse_keyword_line(k).to_dict() for k in args.keywords]
    settings = settings_for(args, **overrides)
    if args.keywords and not args.keywords_file and settings.keywords.file is not None:
        # An override cannot unset a value, so drop the configured file here.
        settings.keywords = settings.keywords.model_copy(update={"file": None})
    return settings


def run(args: argparse.Namespace) -> int:
    settings = load(args)
    daemon = Daemon(settings, reload_settings=lambda: load(args))
    return asyncio.run(daemon.run())
