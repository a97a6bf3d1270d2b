"""`kwsd detect` and `kwsd decode-frames`: spot keywords in files, print one line each.

Exit codes: 0 done (whether or not anything was found), 2 bad argument, 4 model
problem, 5 invalid keywords, 6 unreadable audio; see the README.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from kwsd.audio.file import read_audio
from kwsd.backends.replay import ContentReplayBackend, ReplayTable, read_frames
from kwsd.cli.common import add_keyword_args, add_model_args, load_spotter_and_keywords
from kwsd.detection import Detection
from kwsd.keywords import KeywordSet
from kwsd.spotter import KeywordSpotter


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("detect", help="spot keywords in audio files (wav/flac, any rate)")
    p.add_argument("audio", nargs="+", type=Path, metavar="AUDIO")
    add_keyword_args(p)
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per detection")
    p.set_defaults(func=_detect)

    p = sub.add_parser("decode-frames", help="search precomputed encoder frames (parity checks)")
    p.add_argument("frames", type=Path, metavar="FRAMES.bin")
    p.add_argument(
        "--audio",
        type=Path,
        metavar="REC",
        help="the recording the frames were computed from: run it through the whole audio "
        "path (features, then the frames replayed for each encoder chunk by the chunk's "
        "content), as a peer decoder sees it with the tests' replay encoder",
    )
    add_keyword_args(p)
    add_model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per detection")
    p.set_defaults(func=_decode_frames)


def _prepare(args: argparse.Namespace) -> tuple[KeywordSpotter, KeywordSet]:
    _, spotter, keywords = load_spotter_and_keywords(
        args, "pass --keywords PHRASE or --keywords-file F"
    )
    for warning in keywords.warnings:
        print(f"kwsd: warning: {warning}", file=sys.stderr)
    return spotter, keywords


def _detect(args: argparse.Namespace) -> int:
    spotter, keywords = _prepare(args)
    for path in args.audio:
        _print(path, spotter.scan_file(path, keywords), args.json)
    return 0


def _decode_frames(args: argparse.Namespace) -> int:
    spotter, keywords = _prepare(args)
    frames = read_frames(args.frames)
    if args.audio is None:
        stream = spotter.create_stream(keywords)
        _print(args.frames, stream.accept_encoder_frames(frames), args.json)
        return 0
    table = ReplayTable.from_recording(spotter.backend, frames, read_audio(args.audio))
    replay = spotter.with_backend(ContentReplayBackend(spotter.backend, table))
    _print(args.audio, replay.scan_file(args.audio, keywords), args.json)
    return 0


def _print(path: Path, detections: Iterable[Detection], as_json: bool) -> None:
    """One line per detection, printed as soon as the decoder finds it."""
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
