"""Which model the examples load: the shared command-line options, in one place.

--model-dir DIR   a sherpa-onnx KWS model directory (or a CoreML bundle on macOS)
--assets DIR      the kws-assets development model (default: $KWSD_ASSETS)
(neither)         the model `kwsd models pull` installed; downloaded if missing
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from kwsd import KeywordSpotter

DEFAULT_KEYWORDS = ["hey computer", "turn on the lights", "good night"]


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, help="sherpa-onnx KWS model directory")
    parser.add_argument(
        "--assets",
        type=Path,
        default=os.environ.get("KWSD_ASSETS") or None,
        help="kws-assets directory: real decoder/joiner, stand-in encoder (default: $KWSD_ASSETS)",
    )


def load_spotter(args: argparse.Namespace, keywords: Sequence[str]) -> KeywordSpotter:
    if args.model_dir is not None:
        return KeywordSpotter.from_model_dir(args.model_dir, keywords=keywords)
    if args.assets is not None:
        return KeywordSpotter.from_assets(args.assets, keywords=keywords)
    return KeywordSpotter.installed(keywords=keywords, download=True, progress=True)
