"""`kwsd eval`: how well do my keywords work on my recordings, and what should I set?

It decodes every file of a manifest (TSV: relpath, transcript) with the same streaming
spotter as `kwsd detect`, scores detections against the transcripts (whole words) and
prints recall, false alarms and latency per keyword. With `--sweep` it also tries a grid
of thresholds and boosts (encoding each file once), draws a DET plot and writes the
per-keyword settings that keep false alarms within `--max-fa-per-hour` as a keywords
file for `kwsd run --keywords-file`.

Exit codes: 0 done, 2 bad argument or manifest, 4 model problem, 5 invalid keywords,
6 unreadable audio.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from kwsd.cli.common import add_keyword_args, add_model_args, keyword_specs, settings_for
from kwsd.errors import ExitCode, KeywordError, KwsdError
from kwsd.evaluate.manifest import read_manifest
from kwsd.evaluate.metrics import FileResult, score
from kwsd.evaluate.report import format_recommendations, format_table, to_json
from kwsd.evaluate.runner import RunConfig, Worker, run_all
from kwsd.evaluate.sweep import (
    DEFAULT_BOOSTS,
    DEFAULT_THRESHOLDS,
    Grid,
    SweepFile,
    keyword_file_text,
    parse_values,
    plot_det,
    recommend,
    sweep_points,
)
from kwsd.spotter import KeywordSpotter
from kwsd.vad import VadOptions


class EvalUsageError(KwsdError):
    exit_code = ExitCode.USAGE


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "eval",
        help="measure recall, false alarms and latency on labelled recordings; tune thresholds",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--manifest",
        type=Path,
        required=True,
        metavar="M.tsv",
        help="tab-separated file with a header: relpath (audio, relative to the manifest), "
        "transcript, and optionally duration_s and word_end_s (README: Measuring and tuning)",
    )
    add_keyword_args(p)
    add_model_args(p)
    run = p.add_argument_group("evaluation")
    run.add_argument(
        "--jobs", "-j", type=_positive_int, default=1, help="files decoded in parallel (processes)"
    )
    run.add_argument(
        "--limit", type=_positive_int, metavar="N", help="only the first N manifest entries"
    )
    run.add_argument(
        "--json", type=Path, metavar="OUT", help="write the full report as JSON ('-' = stdout)"
    )
    run.add_argument(
        "--tolerance",
        type=_non_negative,
        default=1.0,
        metavar="S",
        help="with word_end_s timings: a detection must end within S seconds of the "
        "spoken keyword to count as a hit (default 1.0)",
    )
    tune = p.add_argument_group("tuning (--sweep)")
    tune.add_argument(
        "--sweep",
        action="store_true",
        help="also try every threshold x boost of the grid and recommend settings per keyword",
    )
    tune.add_argument(
        "--max-fa-per-hour",
        type=_non_negative,
        default=0.5,
        metavar="X",
        help="false-alarm budget for the recommendation (default 0.5 per hour)",
    )
    tune.add_argument(
        "--thresholds",
        default=",".join(f"{v:g}" for v in DEFAULT_THRESHOLDS),
        metavar="LIST",
        help="thresholds to try: 0.1,0.2,... or START:STOP:STEP (default %(default)s)",
    )
    tune.add_argument(
        "--boosts",
        default=",".join(f"{v:g}" for v in DEFAULT_BOOSTS),
        metavar="LIST",
        help="boosts to try, same forms (default %(default)s)",
    )
    tune.add_argument("--plot", type=Path, metavar="OUT.png", help="write the DET plot (PNG)")
    tune.add_argument(
        "--out-keywords",
        type=Path,
        metavar="F",
        help="write the recommended settings as a keywords file for `kwsd run --keywords-file`",
    )
    p.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    if not args.sweep and (args.plot or args.out_keywords):
        raise EvalUsageError(
            "--plot and --out-keywords need --sweep (they come from the tuning grid)"
        )
    grid: Grid | None = None
    if args.sweep:
        grid = Grid(
            boosts=parse_values(args.boosts, "--boosts", 0.0, 10.0),
            thresholds=parse_values(args.thresholds, "--thresholds", 0.001, 1.0),
        )
        if grid.thresholds[0] <= 0:
            raise EvalUsageError("--thresholds must be above 0")
    manifest = read_manifest(args.manifest, limit=args.limit)
    settings = settings_for(args)
    specs = keyword_specs(args, settings)
    if not specs:
        raise KeywordError("no keywords: pass --keywords PHRASE or --keywords-file F")
    vad = VadOptions.from_settings(settings.audio)
    spotter = KeywordSpotter.from_config(settings.model, settings.search, assets=settings.assets)
    load = spotter.loader()
    assert load is not None  # from_config always loads a model's files
    config = RunConfig(
        make_spotter=load,
        specs=tuple(specs),
        grid=grid,
        # The sweep encodes each file once, whole, and searches it at every grid point.
        vad=None if grid is not None else vad,
    )
    if vad is not None and grid is not None:
        print(
            "kwsd: warning: --sweep encodes every file whole: its results are without the "
            "voice-activity gate (audio.vad); run without --sweep to measure the gate",
            file=sys.stderr,
        )
    worker = Worker(config, spotter=spotter)
    for warning in worker.keywords.warnings:
        print(f"kwsd: warning: {warning}", file=sys.stderr)
    targets = worker.targets()

    with tqdm(
        total=len(manifest),
        unit="file",
        desc="sweep" if grid else "eval",
        disable=not sys.stderr.isatty(),
        file=sys.stderr,
    ) as bar:
        raw = run_all(
            config,
            manifest.utterances,
            jobs=args.jobs,
            sweeping=grid is not None,
            worker=worker,
            on_done=lambda: _tick(bar),
        )

    files = [r for r in raw if isinstance(r, SweepFile)]
    base = [f.base for f in files] if grid else [r for r in raw if isinstance(r, FileResult)]
    scores = score(targets, manifest, base, tolerance=args.tolerance)
    json_to_stdout = args.json is not None and str(args.json) == "-"
    out = sys.stderr if json_to_stdout else sys.stdout
    print(format_table(scores), file=out)

    extra: dict[str, Any] = {}
    if grid is not None:
        curves = sweep_points(targets, manifest, files, grid, tolerance=args.tolerance)
        recs = recommend(curves, args.max_fa_per_hour)
        print("", file=out)
        print(format_recommendations(recs, args.max_fa_per_hour), file=out)
        extra = {
            "curves": curves,
            "grid": grid,
            "recommendations": recs,
            "max_fa_per_hour": args.max_fa_per_hour,
        }
        if args.plot:
            plot_det(curves, recs, args.max_fa_per_hour, args.plot)
            print(f"DET plot written to {args.plot}", file=out)
        if args.out_keywords:
            header = (
                f"kwsd eval --sweep on {manifest.path} ({len(manifest)} files), "
                f"budget {args.max_fa_per_hour:g} false alarms/hour, model {spotter.label}"
            )
            text = keyword_file_text(worker.keywords, spotter.tokenizer, recs, header=header)
            _write(args.out_keywords, text)
            print(
                f"keywords file written to {args.out_keywords} "
                f"(use: kwsd run --keywords-file {args.out_keywords})",
                file=out,
            )

    if args.json is not None:
        options = {
            "beam": spotter.search_options.beam,
            "boost": spotter.search_options.boost,
            "threshold": spotter.search_options.threshold,
            "tolerance": args.tolerance,
            "jobs": args.jobs,
            "vad": config.vad.detector if config.vad is not None else "off",
        }
        report = to_json(
            scores, manifest=str(manifest.path), model=spotter.label, options=options, **extra
        )
        text = json.dumps(report, indent=2) + "\n"
        if json_to_stdout:
            sys.stdout.write(text)
        else:
            _write(args.json, text)
    return 0


def _tick(bar: tqdm[Any]) -> None:
    bar.update(1)


def _write(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
    except OSError as exc:
        raise EvalUsageError(f"cannot write {path}: {exc.strerror or exc}") from None
