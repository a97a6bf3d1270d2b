"""Scoring detections against transcripts: recall, false alarms and latency per keyword.

Without timings a keyword's detections in an utterance are matched by count: up to the
number of times the phrase was said are hits, the rest false alarms. With `word_end_s`
timings each detection must end within `tolerance` seconds of an annotated occurrence
to be a hit, and its latency is measured from the end of the spoken word to the moment
the spotter reported it (the audio it had consumed by then), i.e. what a user waits.
False alarms are counted over all audio, since a real deployment hears both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from kwsd.evaluate.manifest import Manifest, Utterance

TOTAL = "TOTAL"


@dataclass(frozen=True, slots=True)
class Target:
    """A keyword being evaluated: its display name (as detections carry it) and phrase."""

    display: str
    phrase: str


@dataclass(frozen=True, slots=True)
class Spotted:
    """One detection in one file, with the stream time at which it was reported."""

    keyword: str
    phrase: str
    start: float
    end: float
    score: float
    emitted_at: float  # seconds of audio consumed when the spotter returned it

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True, slots=True)
class FileResult:
    relpath: str
    duration: float  # seconds of audio actually decoded
    spotted: tuple[Spotted, ...]


@dataclass(frozen=True, slots=True)
class KeywordMetrics:
    keyword: str
    phrase: str
    positives: int  # occurrences of the phrase in the transcripts
    positive_utterances: int
    hits: int
    misses: int
    false_alarms: int
    utterances: int
    hours: float
    latency_sum: float = 0.0
    latency_count: int = 0

    @property
    def recall(self) -> float | None:
        return self.hits / self.positives if self.positives else None

    @property
    def miss_rate(self) -> float | None:
        recall = self.recall
        return None if recall is None else 1.0 - recall

    @property
    def fa_per_utterance(self) -> float:
        return self.false_alarms / self.utterances if self.utterances else 0.0

    @property
    def fa_per_hour(self) -> float:
        return self.false_alarms / self.hours if self.hours > 0 else 0.0

    @property
    def latency_mean(self) -> float | None:
        return self.latency_sum / self.latency_count if self.latency_count else None

    def to_dict(self) -> dict[str, Any]:
        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "keyword": self.keyword,
            "phrase": self.phrase,
            "positives": self.positives,
            "positive_utterances": self.positive_utterances,
            "hits": self.hits,
            "misses": self.misses,
            "recall": r(self.recall),
            "false_alarms": self.false_alarms,
            "fa_per_utterance": r(self.fa_per_utterance),
            "fa_per_hour": r(self.fa_per_hour),
            "latency_mean_s": r(self.latency_mean),
            "latency_count": self.latency_count,
        }


@dataclass(frozen=True, slots=True)
class UtteranceErrors:
    """What went wrong in one file, for the JSON report (only files with errors)."""

    relpath: str
    missed: tuple[str, ...]
    false_alarms: tuple[Spotted, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "relpath": self.relpath,
            "missed": list(self.missed),
            "false_alarms": [s.to_dict() for s in self.false_alarms],
        }


@dataclass(frozen=True, slots=True)
class Scores:
    rows: tuple[KeywordMetrics, ...]
    total: KeywordMetrics
    errors: tuple[UtteranceErrors, ...] = field(default=())

    def row(self, keyword: str) -> KeywordMetrics:
        for row in self.rows:
            if row.keyword == keyword:
                return row
        raise KeyError(keyword)


@dataclass(slots=True)
class _Tally:
    positives: int = 0
    positive_utterances: int = 0
    hits: int = 0
    false_alarms: int = 0
    latency_sum: float = 0.0
    latency_count: int = 0


def _match_timed(
    detections: Sequence[Spotted], ends: Sequence[float], tolerance: float
) -> tuple[list[tuple[Spotted, float]], list[Spotted]]:
    """Pair each annotated end with the nearest unused detection within tolerance."""
    free = list(detections)
    pairs: list[tuple[Spotted, float]] = []
    for end in sorted(ends):
        best = min(free, key=lambda s: abs(s.end - end), default=None)
        if best is not None and abs(best.end - end) <= tolerance:
            pairs.append((best, end))
            free.remove(best)
    return pairs, free


def score(
    targets: Sequence[Target],
    manifest: Manifest,
    results: Sequence[FileResult],
    *,
    tolerance: float = 1.0,
) -> Scores:
    """Per-keyword metrics plus a TOTAL row over `results` (files not run are not counted)."""
    by_path: dict[str, Utterance] = {u.relpath: u for u in manifest.utterances}
    tallies = {t.display: _Tally() for t in targets}
    errors: list[UtteranceErrors] = []
    seconds = sum(r.duration for r in results)
    for result in results:
        utt = by_path[result.relpath]
        missed: list[str] = []
        false: list[Spotted] = []
        for target in targets:
            tally = tallies[target.display]
            mine = sorted(
                (s for s in result.spotted if s.keyword == target.display), key=lambda s: s.end
            )
            ends = utt.ends_for(target.phrase)
            expected = len(ends) if ends is not None else utt.occurrences(target.phrase)
            tally.positives += expected
            tally.positive_utterances += expected > 0
            if ends is not None:
                pairs, extra = _match_timed(mine, ends, tolerance)
                hits = len(pairs)
                for spotted, end in pairs:
                    tally.latency_sum += spotted.emitted_at - end
                    tally.latency_count += 1
            else:
                hits = min(len(mine), expected)
                extra = mine[hits:]
            tally.hits += hits
            tally.false_alarms += len(extra)
            missed.extend([target.display] * (expected - hits))
            false.extend(extra)
        if missed or false:
            errors.append(UtteranceErrors(result.relpath, tuple(missed), tuple(false)))

    hours = seconds / 3600.0
    n = len(results)
    rows = tuple(
        KeywordMetrics(
            keyword=t.display,
            phrase=t.phrase,
            positives=tallies[t.display].positives,
            positive_utterances=tallies[t.display].positive_utterances,
            hits=tallies[t.display].hits,
            misses=tallies[t.display].positives - tallies[t.display].hits,
            false_alarms=tallies[t.display].false_alarms,
            utterances=n,
            hours=hours,
            latency_sum=tallies[t.display].latency_sum,
            latency_count=tallies[t.display].latency_count,
        )
        for t in targets
    )
    positive_files = sum(
        1 for r in results if any(by_path[r.relpath].occurrences(t.phrase) for t in targets)
    )
    total = KeywordMetrics(
        keyword=TOTAL,
        phrase="",
        positives=sum(r.positives for r in rows),
        positive_utterances=positive_files,
        hits=sum(r.hits for r in rows),
        misses=sum(r.misses for r in rows),
        false_alarms=sum(r.false_alarms for r in rows),
        utterances=n,
        hours=hours,
        latency_sum=sum(r.latency_sum for r in rows),
        latency_count=sum(r.latency_count for r in rows),
    )
    return Scores(rows=rows, total=total, errors=tuple(errors))
