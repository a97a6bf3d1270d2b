"""Options shared by the commands that load a model and a keyword list."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kwsd.cli.config import add_config_args, settings_from_args
from kwsd.config import Settings
from kwsd.errors import KeywordError
from kwsd.keywords import KeywordSet, KeywordSpec, load_keyword_file, parse_keyword_line
from kwsd.log import configure_logging
from kwsd.spotter import KeywordSpotter


def add_model_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    group = parser.add_argument_group("model")
    group.add_argument("--model-dir", type=Path, help="model directory (sherpa-onnx or CoreML)")
    group.add_argument(
        "--assets",
        type=Path,
        help="kws-assets dir: real decoder/joiner + stand-in encoder (KWSD_ASSETS)",
    )
    group.add_argument("--backend", choices=["auto", "onnx", "coreml"])
    group.add_argument("--precision", choices=["int8", "fp32"])
    group.add_argument("--threads", type=int, help="ONNX Runtime threads (default 1)")


def add_keyword_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("keywords")
    group.add_argument(
        "--keywords",
        "-k",
        action="append",
        default=[],
        metavar="PHRASE",
        help="keyword phrase or sherpa keyword line (repeatable)",
    )
    group.add_argument(
        "--keywords-file",
        type=Path,
        metavar="F",
        help="keyword file: phrases or sherpa lines, or a .json list",
    )
    group.add_argument("--threshold", type=float, help="default threshold (mean token prob.)")
    group.add_argument("--boost", type=float, help="default per-token boost (context score)")
    group.add_argument("--beam", type=int, help="beam width (default 4)")


def settings_for(args: argparse.Namespace, **extra: Any) -> Settings:
    settings = settings_from_args(
        args,
        assets=getattr(args, "assets", None),
        model__dir=getattr(args, "model_dir", None),
        model__backend=getattr(args, "backend", None),
        model__precision=getattr(args, "precision", None),
        model__num_threads=getattr(args, "threads", None),
        search__threshold=getattr(args, "threshold", None),
        search__boost=getattr(args, "boost", None),
        search__beam=getattr(args, "beam", None),
        **extra,
    )
    configure_logging(settings.log.level, settings.log.format)
    return settings


def keyword_specs(args: argparse.Namespace, settings: Settings) -> list[KeywordSpec]:
    """Keywords from the command line win; otherwise those of the config."""
    specs = [parse_keyword_line(k) for k in args.keywords]
    if args.keywords_file:
        specs += load_keyword_file(args.keywords_file)
    if specs:
        return specs
    specs = list(settings.keywords.items)
    if settings.keywords.file:
        specs += load_keyword_file(settings.keywords.file)
    return specs


def load_spotter_and_keywords(
    args: argparse.Namespace, missing: str, settings: Settings | None = None
) -> tuple[Settings, KeywordSpotter, KeywordSet]:
    """Settings, model and compiled keywords for a command.

    `missing` completes "no keywords: ..." with how this command takes keywords;
    `settings` are the command's own when it had to check them before the model loads.
    """
    settings = settings or settings_for(args)
    specs = keyword_specs(args, settings)
    if not specs:
        raise KeywordError(f"no keywords: {missing}")
    spotter = KeywordSpotter.from_config(settings.model, settings.search, assets=settings.assets)
    return settings, spotter, spotter.compile(specs)
