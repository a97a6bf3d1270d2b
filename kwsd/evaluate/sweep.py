"""Tuning: how recall and false alarms trade off as threshold and boost vary per keyword.

The encoder is by far the most expensive part of decoding, and neither the threshold
nor the boost changes its output: they only steer the search. So each file is encoded
once, its encoder frames (and the stream time each chunk became available) are kept,
and only the search is re-run for every grid point. All keywords run together at each
grid point, as they will in the daemon, and are scored separately.

The recommendation per keyword is the grid point with the highest recall whose false
alarms per hour stay within the user's budget; it is written as a sherpa keyword file
that `kwsd run --keywords-file` loads directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from kwsd.backends.base import Backend, FloatArray
from kwsd.engine import Frontend
from kwsd.errors import ExitCode, KwsdError
from kwsd.evaluate.manifest import Manifest
from kwsd.evaluate.metrics import FileResult, KeywordMetrics, Spotted, Target, score
from kwsd.keywords import KeywordSet, KeywordSpec, Tokenizer
from kwsd.spotter import KeywordSpotter

DEFAULT_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7)
DEFAULT_BOOSTS = (0.5, 1.0, 1.5, 2.0, 3.0)
SAMPLE_RATE = 16000


class SweepError(KwsdError):
    exit_code = ExitCode.USAGE


def parse_values(text: str, what: str, low: float, high: float) -> tuple[float, ...]:
    """ "0.1,0.2,0.3" or a range "START:STOP:STEP" (STOP included) -> sorted unique values."""
    try:
        if ":" in text:
            start, stop, step = (float(p) for p in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            values = [round(start + i * step, 6) for i in range(count)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise SweepError(
            f"{what} {text!r} is not a list like 0.1,0.2,0.3 or a range like 0.05:0.5:0.05"
        ) from None
    if not values:
        raise SweepError(f"{what} is empty")
    bad = [v for v in values if not low <= v <= high]
    if bad:
        raise SweepError(f"{what}: {bad[0]:g} is outside {low:g}..{high:g}")
    return tuple(sorted(set(values)))


@dataclass(frozen=True, slots=True)
class Grid:
    boosts: tuple[float, ...] = DEFAULT_BOOSTS
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS

    def points(self) -> list[tuple[float, float]]:
        return [(b, t) for b in self.boosts for t in self.thresholds]


def at_point(specs: Sequence[KeywordSpec], boost: float, threshold: float) -> list[KeywordSpec]:
    """Every keyword forced to one operating point (its own file values are overridden)."""
    return [replace(s, boost=boost, threshold=threshold) for s in specs]


# -- encoder cache -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EncodedFile:
    """A file's encoder output, chunk by chunk, and when each chunk was ready."""

    chunks: tuple[FloatArray, ...]
    ready_at: tuple[float, ...]  # seconds of audio consumed when the chunk came out
    duration: float


def encode(backend: Backend, samples: FloatArray, block: int) -> EncodedFile:
    """Run the front end once, fed in `block`-sample pieces as a microphone would."""
    frontend = Frontend(backend)
    chunks: list[FloatArray] = []
    ready: list[float] = []
    fed = 0
    for start in range(0, len(samples), block):
        piece = samples[start : start + block]
        fed += len(piece)
        out = frontend.accept(piece)
        chunks.extend(out)
        ready.extend([fed / SAMPLE_RATE] * len(out))
    tail = frontend.flush()
    chunks.extend(tail)
    ready.extend([fed / SAMPLE_RATE] * len(tail))
    return EncodedFile(tuple(chunks), tuple(ready), fed / SAMPLE_RATE)


def search(
    spotter: KeywordSpotter, keywords: KeywordSet, encoded: EncodedFile
) -> tuple[Spotted, ...]:
    """Re-run only the keyword search over cached encoder output."""
    stream = spotter.create_stream(keywords)
    found: list[Spotted] = []
    for chunk, ready in zip(encoded.chunks, encoded.ready_at, strict=True):
        for d in stream.accept_encoder_frames(chunk):
            found.append(Spotted(d.keyword, d.phrase, d.start, d.end, d.score, ready))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class SweepFile:
    """One file's detections at the base keywords and at every grid point."""

    base: FileResult
    grid: tuple[FileResult, ...]  # in Grid.points() order


# -- analysis ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepPoint:
    boost: float
    threshold: float
    metrics: KeywordMetrics


@dataclass(frozen=True, slots=True)
class Recommendation:
    keyword: str
    phrase: str
    boost: float
    threshold: float
    recall: float | None
    fa_per_hour: float
    meets_target: bool
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "keyword": self.keyword,
            "phrase": self.phrase,
            "boost": self.boost,
            "threshold": self.threshold,
            "recall": None if self.recall is None else round(self.recall, 4),
            "fa_per_hour": round(self.fa_per_hour, 4),
            "meets_target": self.meets_target,
            "note": self.note,
        }


def sweep_points(
    targets: Sequence[Target],
    manifest: Manifest,
    files: Sequence[SweepFile],
    grid: Grid,
    *,
    tolerance: float = 1.0,
) -> dict[str, list[SweepPoint]]:
    """Keyword display -> its metrics at every grid point."""
    curves: dict[str, list[SweepPoint]] = {t.display: [] for t in targets}
    for index, (boost, threshold) in enumerate(grid.points()):
        scores = score(targets, manifest, [f.grid[index] for f in files], tolerance=tolerance)
        for row in scores.rows:
            curves[row.keyword].append(SweepPoint(boost, threshold, row))
    return curves


def _steadiest(points: Sequence[SweepPoint]) -> SweepPoint:
    """Among equally good points, the middle of the widest run of thresholds.

    With few positives the best recall is often reached over a range of thresholds;
    the edge of that range is one unlucky utterance away from losing a hit or gaining
    a false alarm, so the middle is the setting most likely to hold on new audio.
    """
    by_boost: dict[float, list[SweepPoint]] = {}
    for p in points:
        by_boost.setdefault(p.boost, []).append(p)
    widest = max(by_boost.values(), key=lambda group: (len(group), -group[0].boost))
    ordered = sorted(widest, key=lambda p: p.threshold)
    return ordered[(len(ordered) - 1) // 2]


def recommend(curves: dict[str, list[SweepPoint]], max_fa_per_hour: float) -> list[Recommendation]:
    """Per keyword: the most recall within the false-alarm budget, then the fewest false
    alarms; among points equal on both, the steadiest (see `_steadiest`)."""
    result: list[Recommendation] = []
    for keyword, points in curves.items():
        if not points:
            continue
        phrase = points[0].metrics.phrase
        within = [p for p in points if p.metrics.fa_per_hour <= max_fa_per_hour]
        has_positives = points[0].metrics.positives > 0
        if within:
            top = max(p.metrics.recall or 0.0 for p in within)
            best_recall = [p for p in within if (p.metrics.recall or 0.0) == top]
            fewest = min(p.metrics.false_alarms for p in best_recall)
            best = _steadiest([p for p in best_recall if p.metrics.false_alarms == fewest])
            note = "" if has_positives else "no positives in the manifest: recall unknown"
            meets = True
        else:
            fewest = min(p.metrics.false_alarms for p in points)
            candidates = [p for p in points if p.metrics.false_alarms == fewest]
            top = max(p.metrics.recall or 0.0 for p in candidates)
            best = max(
                (p for p in candidates if (p.metrics.recall or 0.0) == top),
                key=lambda p: (p.threshold, -p.boost),
            )
            note = (
                f"no grid point stays within {max_fa_per_hour:g} false alarms/hour; this one "
                "has the fewest (try higher --thresholds or a longer phrase)"
            )
            meets = False
        result.append(
            Recommendation(
                keyword=keyword,
                phrase=phrase,
                boost=best.boost,
                threshold=best.threshold,
                recall=best.metrics.recall,
                fa_per_hour=best.metrics.fa_per_hour,
                meets_target=meets,
                note=note,
            )
        )
    return result


def det_curve(points: Sequence[SweepPoint], boost: float) -> list[tuple[float, float]]:
    """(FA/hour, miss rate) over the thresholds at one boost, strictest threshold first."""
    return [
        (p.metrics.fa_per_hour, p.metrics.miss_rate)
        for p in sorted(points, key=lambda p: -p.threshold)
        if p.boost == boost and p.metrics.miss_rate is not None
    ]


def plot_det(
    curves: dict[str, list[SweepPoint]],
    recommendations: Sequence[Recommendation],
    max_fa_per_hour: float,
    out: Path,
) -> None:
    """DET-style plot: false alarms per hour against miss rate, one curve per keyword."""
    try:
        import matplotlib  # the optional `eval` extra: loaded only when plotting

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SweepError(
            "--plot needs matplotlib: pip install 'kwsd[eval]' (or leave out --plot)"
        ) from None

    fig, ax = plt.subplots(figsize=(7.5, 5.5), dpi=110)
    try:
        largest = max_fa_per_hour
        for rec in recommendations:
            curve = det_curve(curves.get(rec.keyword, []), rec.boost)
            if not curve:
                continue  # no positives: a miss rate does not exist
            xs = np.array([fa for fa, _ in curve])
            ys = np.array([miss for _, miss in curve])
            largest = max(largest, float(xs.max()))
            (line,) = ax.plot(
                xs, ys, marker="o", markersize=3, label=f"{rec.keyword} (boost {rec.boost:g})"
            )
            if rec.recall is not None:
                ax.plot(
                    [rec.fa_per_hour],
                    [1.0 - rec.recall],
                    marker="*",
                    markersize=12,
                    color=line.get_color(),
                    linestyle="none",
                )
        ax.axvline(
            max_fa_per_hour,
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"budget {max_fa_per_hour:g} FA/h",
        )
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlim(0, largest * 1.5)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("false alarms per hour")
        ax.set_ylabel("miss rate")
        ax.set_title("kwsd eval: detection error trade-off (★ = recommended)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small", loc="upper right")
        fig.tight_layout()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(out, format="png")
        except OSError as exc:
            raise SweepError(f"cannot write the plot {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)


def keyword_file_text(
    keywords: KeywordSet,
    tokenizer: Tokenizer,
    recommendations: Sequence[Recommendation],
    *,
    header: str = "",
) -> str:
    """The recommended settings as sherpa keyword-file lines (one per tokenisation)."""
    chosen = {r.keyword: r for r in recommendations}
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for kw in keywords.keywords:
        rec = chosen.get(kw.display)
        boost = rec.boost if rec else kw.boost
        threshold = rec.threshold if rec else kw.threshold
        if rec is not None:
            recall = "n/a" if rec.recall is None else f"{rec.recall:.2f}"
            lines.append(
                f"# {kw.display}: recall {recall}, {rec.fa_per_hour:.2f} false alarms/hour"
                + (f" ({rec.note})" if rec.note else "")
            )
        display = "_".join(kw.display.split())
        for ids in kw.token_ids:
            pieces = " ".join(tokenizer.id_to_piece[i] for i in ids)
            lines.append(f"{pieces} :{boost:g} #{threshold:g} @{display}")
    return "\n".join(lines) + "\n"
