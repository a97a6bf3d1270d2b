"""`kwsd detect` and `kwsd decode-frames`: spot keywords in files, print one line each.

Exit codes: 0 done (whether or not anything was found), 2 bad argument, 4 model
problem, 5 invalid keywords, 6 unreadable audio; see the README.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kwsd.audio.file import read_audio
from kwsd.backends.replay import ReplayBackend, read_frames
from kwsd.cli.common import (
    add_keyword_args,
    add_model_args,
    load_model_and_keywords,
    search_options,
)
from kwsd.detection import Detection
from kwsd.engine import Spotter
from kwsd.keywords import KeywordSet
from kwsd.model.loaded import LoadedModel
from kwsd.search import KeywordSearch, SearchOptions

BLOCK_SECONDS = 0.1  # decode files in microphone-sized pieces: the streaming path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("detect", help="spot keywords in audio files (wav/flac, any rate)")
    p.add_argument("audio", nargs="+", type=Path, metavar="AUDIO")
    add_keyword_args(p)
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per detection")
    p.set_defaults(func=_detect)

    p = sub.add_parser("decode-frames", help="search precomputed encoder frames (parity checks)")
    p.add_argument("frames", type=Path, metavar="FRAMES.bin")
    add_keyword_args(p)
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per detection")
    p.set_defaults(func=_decode_frames)


def _prepare(args: argparse.Namespace) -> tuple[LoadedModel, KeywordSet, SearchOptions]:
    settings, model, keywords = load_model_and_keywords(
        args, "pass --keywords PHRASE or --keywords-file F"
    )
    for warning in keywords.warnings:
        print(f"kwsd: warning: {warning}", file=sys.stderr)
    return model, keywords, search_options(settings)


def _detect(args: argparse.Namespace) -> int:
    model, keywords, options = _prepare(args)
    for path in args.audio:
        samples = read_audio(path)
        spotter = Spotter(model.backend, keywords, options)
        block = int(BLOCK_SECONDS * 16000)
        for start in range(0, len(samples), block):
            _print(path, spotter.accept_waveform(samples[start : start + block]), args.json)
        _print(path, spotter.finish(), args.json)
    return 0


def _decode_frames(args: argparse.Namespace) -> int:
    model, keywords, options = _prepare(args)
    frames = read_frames(args.frames)
    replay = ReplayBackend(model.backend, frames)
    search = KeywordSearch(replay, keywords, options)
    _print(args.frames, search.step(frames), args.json)
    return 0


def _print(path: Path, detections: list[Detection], as_json: bool) -> None:
    for det in detections:
        if as_json:
            record = {
                "file": str(path),
                "keyword": det.keyword,
                "start": det.start,
                "end": det.end,
                "tokens": list(det.tokens),
                "score": det.score,
            }
            print(json.dumps(record, ensure_ascii=False), flush=True)
        else:
            print(
                f"{path}: {det.keyword}  {det.start:.2f}–{det.end:.2f} s  "
                f"score {det.score:.2f}  [{' '.join(det.tokens)}]",
                flush=True,
            )
