from pathlib import Path

import numpy as np
import pytest
from engine_support import espeak
from tests_support_paths import TRANSCRIPT

from kwsd.backends.base import Backend
from kwsd.backends.loader import load_backend
from kwsd.backends.replay import ReplayBackend, read_frames
from kwsd.engine import Spotter
from kwsd.keywords import KeywordSpec, Tokenizer, compile_keywords
from kwsd.model.bundle import assets_bundle
from kwsd.search import ContextGraph, GraphEntry, KeywordSearch, SearchOptions


@pytest.fixture(scope="module")
def backend(assets: Path) -> Backend:
    return load_backend(assets_bundle(assets), "onnx")


@pytest.fixture(scope="module")
def tokenizer(assets: Path) -> Tokenizer:
    return Tokenizer(assets / "model" / "tokens.txt", assets / "model" / "bpe.model")


@pytest.fixture(scope="module")
def frames(assets: Path) -> np.ndarray:
    return read_frames(assets / "fixtures" / "ref_encoder_light_up.bin")


def search_frames(
    backend: Backend,
    tokenizer: Tokenizer,
    frames: np.ndarray,
    phrases: list[str],
    boost: float = 2.0,
    threshold: float = 0.25,
):  # type: ignore[no-untyped-def]
    ks = compile_keywords(
        [KeywordSpec(phrase=p) for p in phrases],
        tokenizer,
        backend.defaults,
        boost=boost,
        threshold=threshold,
    )
    return KeywordSearch(ReplayBackend(backend, frames), ks, SearchOptions(beam=4)).step(frames)


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


def test_light_up_in_real_encoder_frames(
    backend: Backend, tokenizer: Tokenizer, frames: np.ndarray
) -> None:
    (det,) = search_frames(backend, tokenizer, frames, ["LIGHT UP"])
    assert det.keyword == "LIGHT UP"
    assert det.tokens == ("▁", "L", "IGHT", "▁UP")
    assert det.start == pytest.approx(3.04, abs=0.02)
    assert det.end == pytest.approx(3.20, abs=0.02)
    assert det.start < det.end < 3.5
    assert 0.25 <= det.score <= 1.0


def test_absent_keyword_is_not_found(
    backend: Backend, tokenizer: Tokenizer, frames: np.ndarray
) -> None:
    assert search_frames(backend, tokenizer, frames, ["LOVELY CHILD"]) == []


def test_transcript_phrases_found_in_order(
    backend: Backend, tokenizer: Tokenizer, frames: np.ndarray
) -> None:
    phrases = ["YELLOW LAMPS", "LIGHT UP", "HERE AND THERE"]
    found = [d.keyword for d in search_frames(backend, tokenizer, frames, phrases)]
    assert found == phrases


def test_500_distractors_do_not_hide_or_fake_detections(
    backend: Backend, tokenizer: Tokenizer, frames: np.ndarray, assets: Path
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
    found = search_frames(backend, tokenizer, frames, ["LIGHT UP", *distractors])
    assert [d.keyword for d in found] == ["LIGHT UP"]


def test_timestamps_are_absolute_across_resets(
    backend: Backend, tokenizer: Tokenizer, frames: np.ndarray
) -> None:
    """The same recording twice in one stream: the second hit is one recording later."""
    twice = np.concatenate([frames, frames])
    ks = compile_keywords(
        [KeywordSpec(phrase="LIGHT UP")], tokenizer, backend.defaults, boost=2.0, threshold=0.25
    )
    search = KeywordSearch(ReplayBackend(backend, twice), ks, SearchOptions())
    first, second = search.step(twice)
    assert second.start == pytest.approx(first.start + len(frames) * 0.04, abs=0.05)


def test_keywords_swap_at_the_next_frame(
    backend: Backend, tokenizer: Tokenizer, frames: np.ndarray
) -> None:
    def ks(phrase: str):  # type: ignore[no-untyped-def]
        return compile_keywords(
            [KeywordSpec(phrase=phrase)], tokenizer, backend.defaults, boost=2.0, threshold=0.25
        )

    search = KeywordSearch(backend, ks("LOVELY CHILD"), SearchOptions())
    assert search.step(frames[:40]) == []
    search.set_keywords(ks("LIGHT UP"))
    assert [d.keyword for d in search.step(frames[40:])] == ["LIGHT UP"]


def test_standin_encoder_on_generated_speech(
    backend: Backend, tokenizer: Tokenizer, tmp_path: Path
) -> None:
    """Real end to end: espeak-ng speech → fbank → trained stand-in encoder → search."""
    audio = espeak(
        "good evening everyone, hey computer, turn on the lights in the living room please",
        tmp_path / "s.wav",
    )
    ks = compile_keywords(
        [
            KeywordSpec(phrase=p)
            for p in ("HEY COMPUTER", "LIVING ROOM", "GOOD NIGHT", "OPEN THE GARAGE")
        ],
        tokenizer,
        backend.defaults,
        boost=2.0,
        threshold=0.25,
    )
    spotter = Spotter(backend, ks, SearchOptions())
    found = []
    for start in range(0, len(audio), 1600):
        found += spotter.accept_waveform(audio[start : start + 1600])
    found += spotter.finish()
    assert [d.keyword for d in found] == ["HEY COMPUTER", "LIVING ROOM"]
    assert found[0].start < found[1].start
    assert 0.5 < found[0].start < found[1].start < len(audio) / 16000
