"""Presenting results: a fixed-width table for the terminal and a JSON document for tools."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kwsd.evaluate.metrics import KeywordMetrics, Scores
from kwsd.evaluate.sweep import Grid, Recommendation, SweepPoint

_HEADER = ("KEYWORD", "POS", "HITS", "RECALL", "FA", "FA/UTT", "FA/HOUR", "LATENCY")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _cells(row: KeywordMetrics) -> tuple[str, ...]:
    latency = row.latency_mean
    return (
        row.keyword,
        str(row.positives),
        str(row.hits),
        _pct(row.recall),
        str(row.false_alarms),
        f"{row.fa_per_utterance:.3f}",
        f"{row.fa_per_hour:.2f}",
        "-" if latency is None else f"{latency * 1000:.0f} ms",
    )


def _table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(header), rule, *(line(r) for r in body)]


def format_table(scores: Scores) -> str:
    total = scores.total
    lines = [
        f"{total.utterances} utterances, {total.hours * 60:.1f} min of audio, "
        f"{total.positive_utterances} containing a keyword"
    ]
    body = [_cells(r) for r in scores.rows]
    lines += _table(_HEADER, [*body, _cells(total)])
    return "\n".join(lines)


def format_recommendations(recs: Sequence[Recommendation], max_fa_per_hour: float) -> str:
    header = ("KEYWORD", "BOOST", "THRESHOLD", "RECALL", "FA/HOUR")
    body = [
        (r.keyword, f"{r.boost:g}", f"{r.threshold:g}", _pct(r.recall), f"{r.fa_per_hour:.2f}")
        for r in recs
    ]
    title = f"Recommended settings (most recall at <= {max_fa_per_hour:g} false alarms/hour):"
    notes = [f"  ! {r.keyword}: {r.note}" for r in recs if r.note]
    return "\n".join([title, *_table(header, body), *notes])


def to_json(
    scores: Scores,
    *,
    manifest: str,
    model: str,
    options: dict[str, Any],
    curves: dict[str, list[SweepPoint]] | None = None,
    grid: Grid | None = None,
    recommendations: Sequence[Recommendation] = (),
    max_fa_per_hour: float | None = None,
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "manifest": manifest,
        "model": model,
        "options": options,
        "utterances": scores.total.utterances,
        "hours": round(scores.total.hours, 5),
        "keywords": [r.to_dict() for r in scores.rows],
        "total": scores.total.to_dict(),
        "errors": [e.to_dict() for e in scores.errors],
    }
    if curves is not None and grid is not None:
        data["sweep"] = {
            "boosts": list(grid.boosts),
            "thresholds": list(grid.thresholds),
            "max_fa_per_hour": max_fa_per_hour,
            "points": [
                {
                    "keyword": keyword,
                    "boost": p.boost,
                    "threshold": p.threshold,
                    "hits": p.metrics.hits,
                    "false_alarms": p.metrics.false_alarms,
                    "recall": None if p.metrics.recall is None else round(p.metrics.recall, 4),
                    "fa_per_hour": round(p.metrics.fa_per_hour, 4),
                }
                for keyword, points in curves.items()
                for p in points
            ],
            "recommendations": [r.to_dict() for r in recommendations],
        }
    return data
