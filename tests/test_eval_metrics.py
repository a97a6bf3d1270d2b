"""Scoring, recommendations, plots and keyword-file output of `kwsd eval`, on given detections."""

from __future__ import annotations

from pathlib import Path

import pytest

from kwsd.backends.base import ModelDefaults
from kwsd.evaluate.manifest import Manifest, Utterance, normalize_words, parse_word_ends
from kwsd.evaluate.metrics import FileResult, KeywordMetrics, Spotted, Target, score
from kwsd.evaluate.report import format_recommendations, format_table, to_json
from kwsd.evaluate.sweep import (
    Grid,
    Recommendation,
    SweepError,
    SweepPoint,
    det_curve,
    keyword_file_text,
    parse_values,
    plot_det,
    recommend,
)
from kwsd.keywords import KeywordSpec, Tokenizer, compile_keywords, parse_keyword_lines

HEY = Target("HEY COMPUTER", "HEY COMPUTER")
LIGHT = Target("LIGHT_UP", "LIGHT UP")


def _utt(relpath: str, transcript: str, word_end: str = "") -> Utterance:
    return Utterance(
        relpath=relpath,
        path=Path(relpath),
        transcript=transcript,
        words=normalize_words(transcript),
        word_ends=parse_word_ends(word_end, relpath),
    )


def _hit(target: Target, end: float, emitted: float, score: float = 0.6) -> Spotted:
    return Spotted(target.display, target.phrase, end - 0.4, end, score, emitted)


def test_counting_without_timings() -> None:
    manifest = Manifest(
        Path("m.tsv"),
        (
            _utt("a", "hey computer, light up"),
            _utt("b", "Hey computer and hey computer again"),
            _utt("c", "the lights are on"),  # LIGHTS is a negative for LIGHT UP
            _utt("d", "nothing here"),
        ),
    )
    results = [
        FileResult("a", 900.0, (_hit(HEY, 1.0, 1.3), _hit(LIGHT, 2.0, 2.3))),
        FileResult("b", 900.0, (_hit(HEY, 1.0, 1.3),)),  # one of two found
        FileResult("c", 900.0, (_hit(LIGHT, 1.0, 1.3), _hit(LIGHT, 3.0, 3.3))),
        FileResult("d", 900.0, (_hit(HEY, 1.0, 1.3),)),
    ]
    scores = score([HEY, LIGHT], manifest, results)
    hey, light = scores.rows
    assert (hey.positives, hey.positive_utterances, hey.hits, hey.misses) == (3, 2, 2, 1)
    assert hey.false_alarms == 1 and hey.recall == pytest.approx(2 / 3)
    assert (light.positives, light.hits, light.false_alarms) == (1, 1, 2)
    assert light.fa_per_hour == pytest.approx(2.0)  # 4 files x 900 s = 1 hour
    assert light.fa_per_utterance == pytest.approx(0.5)
    assert hey.latency_mean is None  # no timings, no latency
    total = scores.total
    assert (total.positives, total.hits, total.false_alarms, total.positive_utterances) == (
        4,
        3,
        3,
        2,
    )
    assert total.recall == pytest.approx(0.75) and total.fa_per_hour == pytest.approx(3.0)
    errors = {e.relpath: e for e in scores.errors}
    assert set(errors) == {"b", "c", "d"}
    assert errors["b"].missed == ("HEY COMPUTER",)
    assert [s.end for s in errors["c"].false_alarms] == [1.0, 3.0]


def test_timings_give_latency_and_reject_detections_far_from_the_word() -> None:
    manifest = Manifest(
        Path("m.tsv"),
        (
            _utt("a", "light up, then light up again", "LIGHT UP=2.0,6.0"),
            _utt("b", "light up", "3.0"),
        ),
    )
    results = [
        # the first is 0.5 s late; the second detection is 3 s from any word end
        FileResult("a", 10.0, (_hit(LIGHT, 1.9, 2.5), _hit(LIGHT, 9.0, 9.4))),
        FileResult("b", 10.0, (_hit(LIGHT, 2.9, 3.3),)),
    ]
    row = score([LIGHT], manifest, results, tolerance=1.0).rows[0]
    assert (row.positives, row.hits, row.misses, row.false_alarms) == (3, 2, 1, 1)
    assert row.latency_count == 2
    assert row.latency_mean == pytest.approx((0.5 + 0.3) / 2)
    # a wide tolerance accepts the late detection as the second occurrence
    wide = score([LIGHT], manifest, results, tolerance=3.5).rows[0]
    assert (wide.hits, wide.false_alarms) == (3, 0)


def _metrics(hits: int, fas: int, positives: int = 4) -> KeywordMetrics:
    return KeywordMetrics(
        keyword="K",
        phrase="K",
        positives=positives,
        positive_utterances=positives,
        hits=hits,
        misses=positives - hits,
        false_alarms=fas,
        utterances=10,
        hours=1.0,
    )


def _curve(rows: list[tuple[float, float, int, int]]) -> list[SweepPoint]:
    return [SweepPoint(b, t, _metrics(h, f)) for b, t, h, f in rows]


def test_recommendation_prefers_recall_within_budget_then_the_steady_middle() -> None:
    curve = _curve(
        [
            (1.0, 0.1, 4, 3),  # best recall but 3 FA/h: over budget
            (1.0, 0.2, 4, 0),
            (1.0, 0.3, 4, 0),
            (1.0, 0.4, 4, 0),
            (1.0, 0.5, 3, 0),
            (2.0, 0.2, 4, 1),
            (2.0, 0.3, 4, 0),
        ]
    )
    (rec,) = recommend({"K": curve}, max_fa_per_hour=0.5)
    # boost 1.0 holds full recall with no false alarm over 0.2..0.4: pick the middle
    assert (rec.boost, rec.threshold, rec.recall, rec.meets_target) == (1.0, 0.3, 1.0, True)
    (loose,) = recommend({"K": curve}, max_fa_per_hour=3.0)
    assert loose.recall == 1.0 and loose.fa_per_hour == 0.0


def test_recommendation_when_nothing_meets_the_budget() -> None:
    curve = _curve([(1.0, 0.2, 4, 5), (1.0, 0.6, 2, 2), (2.0, 0.6, 1, 2)])
    (rec,) = recommend({"K": curve}, max_fa_per_hour=0.5)
    assert not rec.meets_target and "fewest" in rec.note
    assert (rec.boost, rec.threshold, rec.fa_per_hour) == (1.0, 0.6, 2.0)
    assert "! K:" in format_recommendations([rec], 0.5)


def test_det_curve_orders_by_threshold() -> None:
    curve = _curve([(1.0, 0.2, 4, 3), (1.0, 0.5, 2, 0), (2.0, 0.5, 4, 9)])
    assert det_curve(curve, 1.0) == [(0.0, 0.5), (3.0, 0.0)]


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("0.3,0.1,0.2,0.1", (0.1, 0.2, 0.3)),
        ("0.1:0.3:0.1", (0.1, 0.2, 0.3)),
        ("1:2:0.5", (1.0, 1.5, 2.0)),
    ],
)
def test_grid_values(text: str, values: tuple[float, ...]) -> None:
    assert parse_values(text, "--thresholds", 0.0, 1.0 if "1:2" not in text else 10.0) == values


@pytest.mark.parametrize("text", ["", "a,b", "0.5:0.1:0.1", "0.1:0.5:0", "1.5"])
def test_bad_grid_values(text: str) -> None:
    with pytest.raises(SweepError):
        parse_values(text, "--thresholds", 0.0, 1.0)


def test_grid_points_cover_every_pair() -> None:
    assert Grid((1.0, 2.0), (0.1, 0.2)).points() == [(1.0, 0.1), (1.0, 0.2), (2.0, 0.1), (2.0, 0.2)]


def test_plot_is_a_png(tmp_path: Path) -> None:
    curve = _curve([(1.0, 0.2, 4, 3), (1.0, 0.3, 3, 1), (1.0, 0.5, 2, 0)])
    recs = recommend({"K": curve}, 0.5)
    out = tmp_path / "sub" / "det.png"
    plot_det({"K": curve}, recs, 0.5, out)
    import matplotlib.image as mpimg

    image = mpimg.imread(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.shape[0] > 300 and image.shape[1] > 400


def test_keyword_file_round_trips_through_the_parser(assets: Path) -> None:
    model = assets / "model"
    tokenizer = Tokenizer(model / "tokens.txt", model / "bpe.model")
    specs = [
        KeywordSpec(phrase="hey computer"),
        KeywordSpec(pieces=("▁", "L", "IGHT", "▁UP"), alternates=(("▁LI", "G", "H", "T", "▁UP"),)),
    ]
    keywords = compile_keywords(specs, tokenizer, ModelDefaults())
    recs = [
        Recommendation("HEY COMPUTER", "HEY COMPUTER", 1.5, 0.3, 1.0, 0.0, True, ""),
        Recommendation("LIGHT UP", "LIGHT UP", 2.0, 0.35, None, 0.2, True, "no positives"),
    ]
    text = keyword_file_text(keywords, tokenizer, recs, header="tuned\non my data")
    assert text.startswith("# tuned\n# on my data\n")
    reparsed = parse_keyword_lines(text)
    assert len(reparsed) == 3  # the alternate tokenisation is its own line
    again = compile_keywords(reparsed, tokenizer, ModelDefaults())
    settings = {(k.display, k.pieces, k.boost, k.threshold) for k in again.keywords}
    assert settings == {
        ("HEY_COMPUTER", keywords.keywords[0].pieces, 1.5, 0.3),
        ("LIGHT_UP", ("▁", "L", "IGHT", "▁UP"), 2.0, 0.35),
        ("LIGHT_UP", ("▁LI", "G", "H", "T", "▁UP"), 2.0, 0.35),
    }
    assert {k.phrase for k in again.keywords} == {"HEY COMPUTER", "LIGHT UP"}


def test_table_and_json_report() -> None:
    manifest = Manifest(Path("m.tsv"), (_utt("a", "light up", "1.0"), _utt("b", "no")))
    results = [FileResult("a", 1800.0, (_hit(LIGHT, 1.0, 1.25),)), FileResult("b", 1800.0, ())]
    scores = score([LIGHT], manifest, results)
    table = format_table(scores).splitlines()
    assert table[0] == "2 utterances, 60.0 min of audio, 1 containing a keyword"
    assert table[1].split() == [
        "KEYWORD",
        "POS",
        "HITS",
        "RECALL",
        "FA",
        "FA/UTT",
        "FA/HOUR",
        "LATENCY",
    ]
    assert table[3].split() == ["LIGHT_UP", "1", "1", "100.0%", "0", "0.000", "0.00", "250", "ms"]
    assert table[4].split()[0] == "TOTAL"
    data = to_json(scores, manifest="m.tsv", model="m", options={"beam": 4})
    assert data["keywords"][0]["latency_mean_s"] == 0.25 and data["hours"] == 1.0
    assert data["total"]["recall"] == 1.0 and data["errors"] == [] and "sweep" not in data
