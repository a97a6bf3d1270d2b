"""The keyword search on the real decoder/joiner: real encoder frames, generated speech."""

from pathlib import Path

import numpy as np
import pytest
from engine_support import espeak
from tests_support_paths import TRANSCRIPT

from kwsd import Detection, KeywordSpotter, SearchOptions
from kwsd.backends.replay import read_frames
from kwsd.search import ContextGraph, GraphEntry


@pytest.fixture(scope="module")
def spotter(assets: Path) -> KeywordSpotter:
    """The reference search of the fixture: boost 2.0, threshold 0.25, beam 4."""
    return KeywordSpotter.from_assets(
        assets, search=SearchOptions(beam=4, boost=2.0, threshold=0.25)
    )


@pytest.fixture(scope="module")
def frames(assets: Path) -> np.ndarray:
    return read_frames(assets / "fixtures" / "ref_encoder_light_up.bin")


def search_frames(
    spotter: KeywordSpotter, frames: np.ndarray, phrases: list[str]
) -> list[Detection]:
    return spotter.create_stream(phrases).accept_encoder_frames(frames)


def test_graph_scores_match_upstream_expectations() -> None:
    words = ["S", "HE", "SHE", "SHELL", "HIS", "HERS", "HELLO", "THIS", "THEM"]
    ids = {c: i + 3 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}
    graph = ContextGraph(
        GraphEntry(tuple(ids[c] for c in w), 1.0, 0.25, i) for i, w in enumerate(words)
    )
    expected = {
        "HEHERSHE": 14,
        "HERSHE": 12,
        "HISHE": 9,
        "SHED": 6,
        "SHELF": 6,
        "HELL": 2,
        "HELLO": 7,
        "DHRHISQ": 4,
        "THEN": 2,
    }
    for text, total in expected.items():
        state, score = graph.root, 0.0
        for char in text:
            step, state = graph.forward(state, ids[char])
            score += step
        score += graph.finalize(state)[0]
        assert score == pytest.approx(total), text


def test_light_up_in_real_encoder_frames(spotter: KeywordSpotter, frames: np.ndarray) -> None:
    (det,) = search_frames(spotter, frames, ["LIGHT UP"])
    assert det.keyword == "LIGHT UP"
    assert det.tokens == ("▁", "L", "IGHT", "▁UP")
    assert det.start == pytest.approx(3.04, abs=0.02)
    assert det.end == pytest.approx(3.20, abs=0.02)
    assert det.start < det.end < 3.5
    assert 0.25 <= det.score <= 1.0


def test_absent_keyword_is_not_found(spotter: KeywordSpotter, frames: np.ndarray) -> None:
    assert search_frames(spotter, frames, ["LOVELY CHILD"]) == []


def test_transcript_phrases_found_in_order(spotter: KeywordSpotter, frames: np.ndarray) -> None:
    phrases = ["YELLOW LAMPS", "LIGHT UP", "HERE AND THERE"]
    found = [d.keyword for d in search_frames(spotter, frames, phrases)]
    assert found == phrases


def test_500_distractors_do_not_hide_or_fake_detections(
    spotter: KeywordSpotter, frames: np.ndarray, assets: Path
) -> None:
    transcript = set(TRANSCRIPT.split())
    words = sorted(
        {
            w
            for line in (assets / "corpus" / "manifest.tsv").read_text().splitlines()[1:]
            for w in line.split("\t")[3].split()
            if w.isalpha() and w.isupper() and len(w) > 3 and w not in transcript
        }
    )
    distractors = [f"{a} {b}" for a, b in zip(words[::2], words[1::2], strict=False)][:500]
    assert len(distractors) == 500
    found = search_frames(spotter, frames, ["LIGHT UP", *distractors])
    assert [d.keyword for d in found] == ["LIGHT UP"]


def test_timestamps_are_absolute_across_resets(spotter: KeywordSpotter, frames: np.ndarray) -> None:
    """The same recording twice in one stream: the second hit is one recording later."""
    twice = np.concatenate([frames, frames])
    first, second = search_frames(spotter, twice, ["LIGHT UP"])
    assert second.start == pytest.approx(first.start + len(frames) * 0.04, abs=0.05)


def test_keywords_swap_at_the_next_frame(spotter: KeywordSpotter, frames: np.ndarray) -> None:
    stream = spotter.create_stream(["LOVELY CHILD"])
    assert stream.accept_encoder_frames(frames[:40]) == []
    stream.set_keywords(["LIGHT UP"])
    assert [d.keyword for d in stream.accept_encoder_frames(frames[40:])] == ["LIGHT UP"]


def test_standin_encoder_on_generated_speech(spotter: KeywordSpotter, tmp_path: Path) -> None:
    """Real end to end: espeak-ng speech → fbank → trained stand-in encoder → search."""
    audio = espeak(
        "good evening everyone, hey computer, turn on the lights in the living room please",
        tmp_path / "s.wav",
    )
    stream = spotter.create_stream(["HEY COMPUTER", "LIVING ROOM", "GOOD NIGHT", "OPEN THE GARAGE"])
    found = []
    for start in range(0, len(audio), 1600):
        found += stream.accept(audio[start : start + 1600])
    found += stream.finish()
    assert [d.keyword for d in found] == ["HEY COMPUTER", "LIVING ROOM"]
    assert found[0].start < found[1].start
    assert 0.5 < found[0].start < found[1].start < len(audio) / 16000
