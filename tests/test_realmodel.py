"""The real model (marker `realmodel`): wherever it is installed or can be downloaded.

One command runs these on any machine with internet: `bash scripts/test-realmodel`
(it pulls the model with `kwsd models pull --backend onnx` first). CI pulls the model
and runs them with the rest of the suite.

Where things are looked for:
- the model: KWSD_TEST_ONNX_MODEL_DIR (the release directory, or the `--dest` it was pulled
  into), else the model `kwsd models pull` installed in kwsd's models directory. When
  there is none these tests skip and say how to get it; KWSD_TEST_REQUIRE_REALMODEL=1 (set by
  CI and scripts/test-realmodel) turns that into a failure, so CI cannot pass vacuously.
- light_up.wav and lovely_child.wav: KWSD_TEST_AUDIO_DIR, else kws-assets' audio/, else
  the release's own test_wavs/ (0.wav and 1.wav are the same two recordings).
- LibriSpeech utterances: the corpus of kws-assets (100 from test-other, 4 from
  test-clean), else KWSD_TEST_LIBRISPEECH_DIR (a LibriSpeech split as openslr.org ships it;
  `scripts/test-realmodel --librispeech` downloads test-clean there).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from sherpa_peer import (
    DIFFERENCES,
    Hit,
    ModelFiles,
    SherpaPeer,
    describe,
    run_kwsd,
    run_kwsd_on_peer_schedule,
    same_as_peer,
    scoring_as_peer,
)

from kwsd import BackendOptions, Detection, KeywordSpotter, ModelError
from kwsd.audio.file import read_audio
from kwsd.cli import main
from kwsd.evaluate.manifest import count_phrase, normalize_words
from kwsd.model.locations import default_models_dir

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

REQUIRED = os.environ.get("KWSD_TEST_REQUIRE_REALMODEL") == "1"
REPO = Path(__file__).resolve().parents[1]
# sherpa-onnx's test_keywords.txt for these recordings, with the model's defaults
# (boost 1.0, threshold 0.25), as upstream's own keyword-spotter test runs them.
REFERENCE_KEYWORDS = ["▁ L IGHT ▁UP", "▁LOVE LY ▁CHI L D", "▁FOR E VER"]
FRAME = 0.04
# The published times are upstream's, fp32; like the parity tests, allow one 40 ms frame
# (int8 weights, another ONNX Runtime build).
FRAME_TOLERANCE = 1
# The model card (KWS-Zipformer-3M-CoreML-INT8; soniqo speech-swift's wake-word guide):
# 12 keywords on LibriSpeech test-clean, TOTAL recall 0.88 over 158 positive utterances,
# 0.27 false positives per utterance over 60 negative ones, with its tuned defaults.
CARD_KEYWORDS = (
    "WHICH",
    "LITTLE",
    "BEFORE",
    "GREAT",
    "LIGHT",
    "YOUNG",
    "THROUGH",
    "WORLD",
    "ALWAYS",
    "PEOPLE",
    "THOUGHT",
    "MISTER",
)
CARD_RECALL = 0.88
CARD_FA_PER_NEGATIVE = 0.27
CARD_THRESHOLD, CARD_BOOST = 0.15, 0.5
# How far kwsd with the ONNX release may sit from the card on test-clean: the card
# measured another checkpoint (the KWS fine-tune, in CoreML) on a 218-utterance sample,
# whose own sampling error is about 0.03 (recall) and 0.07 (false positives).
RECALL_MARGIN = 0.10
FA_MARGIN = 0.20
# The sherpa-onnx comparison: the card's 12 and 8 words frequent in those utterances.
PEER_KEYWORDS = (
    *CARD_KEYWORDS,
    "COULD",
    "THEIR",
    "LOBSTER",
    "WOULD",
    "SOMETHING",
    "SHOULD",
    "MIGHT",
    "WITHOUT",
)


def _missing(what: str) -> None:
    """Skip with the reason and the fix, or fail when the run demanded the real model."""
    if REQUIRED:
        pytest.fail(f"KWSD_TEST_REQUIRE_REALMODEL=1 but {what}")
    pytest.skip(what)


@pytest.fixture(scope="module")
def model_dir() -> Path:
    hint = "`bash scripts/test-realmodel` downloads it and runs these tests"
    configured = os.environ.get("KWSD_TEST_ONNX_MODEL_DIR")
    options = BackendOptions(runtime="onnx")
    where = Path(configured).expanduser() if configured else default_models_dir()
    try:
        if configured:
            spotter = KeywordSpotter.from_model_dir(where, backend=options)
        else:
            spotter = KeywordSpotter.installed(backend=options, models_dir=where)
    except ModelError as exc:
        _missing(f"no real model ({exc}); {hint}")
        raise
    assert spotter.bundle is not None
    if spotter.stand_in or spotter.bundle.encoder.parent != spotter.bundle.root:
        _missing(f"{where} holds no real encoder; {hint}")
    return spotter.bundle.root


@pytest.fixture(scope="module", params=["int8", "fp32"])
def real(request: pytest.FixtureRequest, model_dir: Path) -> KeywordSpotter:
    options = BackendOptions(runtime="onnx", precision=request.param)
    return KeywordSpotter.from_model_dir(model_dir, backend=options)


@pytest.fixture(scope="module")
def real_int8(model_dir: Path) -> KeywordSpotter:
    return KeywordSpotter.from_model_dir(model_dir, backend=BackendOptions(runtime="onnx"))


def test_the_real_encoder_is_loaded(real_int8: KeywordSpotter) -> None:
    """Not the stand-in, not a replay: the release's own Zipformer2 export."""
    bundle = real_int8.bundle
    assert bundle is not None and not real_int8.stand_in
    assert bundle.encoder.name == "encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx"
    assert real_int8.backend.name == "onnx"


def recording(name: str, model_dir: Path) -> Path:
    release_names = {"light_up.wav": "0.wav", "lovely_child.wav": "1.wav"}
    assets = Path(os.environ.get("KWSD_ASSETS", REPO.parent / "shared" / "kws-assets"))
    places = [Path(p) / name for p in filter(None, [os.environ.get("KWSD_TEST_AUDIO_DIR")])] + [
        assets / "audio" / name,
        model_dir / "test_wavs" / release_names[name],
    ]
    for path in places:
        if path.is_file():
            return path
    _missing(f"no {name}: looked in {', '.join(str(p) for p in places)}")
    raise AssertionError("unreachable")


def spans(found: list[Detection]) -> list[tuple[str, float, float]]:
    return [(d.phrase, d.start, d.end) for d in found]


def assert_found(
    found: list[Detection], expected: list[tuple[str, float, float]], frames: int
) -> None:
    """The expected phrases in order, first and last token within `frames` frames."""
    assert [d.phrase for d in found] == [e[0] for e in expected], spans(found)
    for det, (_, start, end) in zip(found, expected, strict=True):
        assert abs(det.start - start) <= frames * FRAME + 1e-6, spans(found)
        assert abs(det.end - end) <= frames * FRAME + 1e-6, spans(found)


def test_light_up(real: KeywordSpotter, model_dir: Path) -> None:
    found = real.detect_file(recording("light_up.wav", model_dir), REFERENCE_KEYWORDS)
    assert_found(found, [("LIGHT UP", 3.04, 3.20)], FRAME_TOLERANCE)
    assert found[0].tokens == ("▁", "L", "IGHT", "▁UP")


def test_lovely_child(real: KeywordSpotter, model_dir: Path) -> None:
    found = real.detect_file(recording("lovely_child.wav", model_dir), REFERENCE_KEYWORDS)
    expected = [("LOVELY CHILD", 5.44, 6.04), ("FOREVER", 10.88, 11.08)]
    assert_found(found, expected, FRAME_TOLERANCE)


# -- LibriSpeech -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Utterance:
    path: Path
    transcript: str
    split: str  # test-clean, test-other, ...


def librispeech_dir(root: Path) -> list[Utterance]:
    """A LibriSpeech split as openslr.org ships it: <spk>/<chapter>/*.flac + *.trans.txt."""
    utts: list[Utterance] = []
    split = root.name
    for trans in sorted(root.glob("*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            ident, _, text = line.partition(" ")
            utts.append(Utterance(trans.parent / f"{ident}.flac", text.strip(), split))
    return utts


def corpus_librispeech() -> list[Utterance]:
    assets = Path(os.environ.get("KWSD_ASSETS", REPO.parent / "shared" / "kws-assets"))
    manifest = assets / "corpus" / "manifest.tsv"
    if not manifest.is_file():
        return []
    with manifest.open(newline="") as fh:
        return [
            Utterance(
                manifest.parent / row["relpath"],
                row["transcript"],
                "test-clean" if "test-clean" in row["relpath"] else "test-other",
            )
            for row in csv.DictReader(fh, delimiter="\t")
            if "librispeech" in row["relpath"]
        ]


@pytest.fixture(scope="module")
def utterances() -> list[Utterance]:
    utts = corpus_librispeech()
    if not utts and os.environ.get("KWSD_TEST_LIBRISPEECH_DIR"):
        utts = librispeech_dir(Path(os.environ["KWSD_TEST_LIBRISPEECH_DIR"]))[:100]
    if not utts:
        pytest.skip(
            "no LibriSpeech utterances: they come from kws-assets' corpus (KWSD_ASSETS) or "
            "KWSD_TEST_LIBRISPEECH_DIR (`bash scripts/test-realmodel --librispeech` downloads "
            "test-clean)"
        )
    return utts


@pytest.mark.timeout(3600)
def test_same_detections_as_sherpa_on_the_real_encoder(
    real_int8: KeywordSpotter, utterances: list[Utterance]
) -> None:
    """kwsd against sherpa-onnx's KeywordSpotter with the real encoder, every utterance
    a stream, 20 keywords. On sherpa's reset schedule kwsd gives exactly sherpa's
    detections. As users run it (scoring as sherpa, to set difference 5 aside), kwsd
    gives the same ones up to sherpa's first reset; after it they may differ, as
    documented: sherpa zeroes its encoder state there (difference 2) and drops the rest
    of the chunk (difference 3)."""
    bundle = real_int8.bundle
    assert bundle is not None
    files = ModelFiles(bundle.tokens, bundle.encoder, bundle.decoder, bundle.joiner)
    keywords = real_int8.compile(list(PEER_KEYWORDS))
    peer = SherpaPeer(files, keywords)
    as_users_run_it = scoring_as_peer(real_int8)
    mismatches: list[str] = []
    detections = differing_later = scored_differently = 0
    for utt in utterances:
        audio = read_audio(utt.path)
        sherpa = peer.run(audio)
        schedule = run_kwsd_on_peer_schedule(real_int8, keywords, audio)
        own_score = run_kwsd_on_peer_schedule(real_int8, keywords, audio, peer_score=False)
        users = run_kwsd(as_users_run_it, keywords, audio)
        detections += len(sherpa)
        scored_differently += not same_as_peer(schedule.hits, own_score.hits)
        if not same_as_peer(sherpa, schedule.hits):
            mismatches.append(
                f"{utt.path.name}: sherpa-onnx\n{describe(sherpa)}\n"
                f"kwsd on its schedule\n{describe(schedule.hits)}"
            )
        problem = before_first_reset(users, sherpa, schedule.auto_resets)
        if problem:
            mismatches.append(f"{utt.path.name}: {problem}")
        if len(users) != len(sherpa) or any(
            u.key != s.key for u, s in zip(users, sherpa, strict=False)
        ):
            differing_later += 1
    print(
        f"\n{len(utterances)} utterances, {detections} sherpa-onnx detections; kwsd as users "
        f"run it differs after a reset (differences 2 and 3) in {differing_later}, kwsd's "
        f"own score (difference 5) changes the detections of {scored_differently}"
    )
    assert detections > 0, "no detection at all: the comparison would prove nothing"
    assert not mismatches, "\n\n".join(mismatches) + "\n\n" + DIFFERENCES


def before_first_reset(users: list[Hit], sherpa: list[Hit], auto_resets: list[int]) -> str:
    """Until sherpa first resets (after its first detection's chunk, or at an
    auto-reset), both decoders ran the same encoder states and search: kwsd's hits up to
    then must be sherpa's first (of several in that chunk, sherpa keeps the last)."""
    horizon = sherpa[0].chunk if sherpa else 10**9
    if auto_resets and auto_resets[0] <= horizon:
        horizon = auto_resets[0] - 1
        until = [h for h in users if h.chunk <= horizon]
        return "" if not until else f"kwsd found {describe(until)} before sherpa's auto-reset"
    until = [h for h in users if h.chunk <= horizon]
    if not sherpa:
        return "" if not until else f"kwsd found, sherpa-onnx did not:\n{describe(until)}"
    if not until or until[-1].key != sherpa[0].key or abs(until[-1].start - sherpa[0].start) > 1:
        return f"first detection: kwsd\n{describe(until)}\nsherpa-onnx\n{describe(sherpa[:1])}"
    if any(h.chunk != horizon for h in until[:-1]):
        return f"kwsd found more before sherpa's first detection:\n{describe(until)}"
    return ""


# -- kwsd eval and the model card ------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    text: str  # kwsd eval's table
    recall: float | None  # TOTAL, over keyword occurrences (None: no keyword was said)
    fa_per_negative: float  # false alarms per utterance that holds none of the keywords
    utterances: int
    negatives: int


def write_manifest(utts: list[Utterance], path: Path) -> Path:
    with path.open("w", newline="") as fh:
        out = csv.writer(fh, delimiter="\t")
        out.writerow(["relpath", "transcript"])
        out.writerows([str(u.path), u.transcript] for u in utts)
    return path


def run_eval(
    model_dir: Path, utts: list[Utterance], workdir: Path, capsys: pytest.CaptureFixture[str]
) -> Table:
    """`kwsd eval` with the card's keywords and tuned settings, as a user would run it."""
    manifest = write_manifest(utts, workdir / "manifest.tsv")
    keywords = workdir / "keywords.txt"
    keywords.write_text("\n".join(CARD_KEYWORDS) + "\n")
    report = workdir / "report.json"
    argv = [
        "eval",
        "--manifest",
        str(manifest),
        "--keywords-file",
        str(keywords),
        "--model-dir",
        str(model_dir),
        "--backend",
        "onnx",
        "--threshold",
        str(CARD_THRESHOLD),
        "--boost",
        str(CARD_BOOST),
        "--jobs",
        str(max(1, min(4, os.cpu_count() or 1))),
        "--json",
        str(report),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    data = json.loads(report.read_text())
    phrases = [normalize_words(k) for k in CARD_KEYWORDS]
    negatives = {
        str(u.path)
        for u in utts
        if not any(count_phrase(normalize_words(u.transcript), p) for p in phrases)
    }
    false_alarms = sum(len(e["false_alarms"]) for e in data["errors"] if e["relpath"] in negatives)
    return Table(
        text,
        data["total"]["recall"],
        false_alarms / max(1, len(negatives)),
        len(utts),
        len(negatives),
    )


def show(name: str, table: Table) -> str:
    recall = "-" if table.recall is None else f"{table.recall:.2f}"
    return (
        f"\n== {name}: {table.utterances} utterances, {table.negatives} without a keyword\n"
        f"{table.text.rstrip()}\nTOTAL recall {recall} (card, test-clean: "
        f"{CARD_RECALL:.2f}); false alarms per negative utterance {table.fa_per_negative:.2f} "
        f"(card: {CARD_FA_PER_NEGATIVE:.2f})"
    )


@pytest.mark.timeout(3600)
def test_eval_gives_the_model_card_table(
    model_dir: Path,
    utterances: list[Utterance],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The card's table from `kwsd eval` on the LibriSpeech utterances at hand: mostly
    test-other, which is harder than the card's test-clean, so both are printed and only
    gross failures are asserted here (the model-card workflow job compares test-clean)."""
    report: list[str] = []
    tables: dict[str, Table] = {}
    for split in sorted({u.split for u in utterances}):
        subset = [u for u in utterances if u.split == split]
        workdir = tmp_path / split
        workdir.mkdir()
        tables[split] = run_eval(model_dir, subset, workdir, capsys)
        report.append(show(f"LibriSpeech {split}", tables[split]))
    with capsys.disabled():
        print("\n".join(report))
    biggest = max(tables.values(), key=lambda t: t.utterances)
    # Gross failures only: a broken pipeline finds next to nothing, or fires everywhere.
    assert biggest.recall is not None and biggest.recall >= 0.3, report
    assert biggest.fa_per_negative <= 1.0, report


@pytest.mark.timeout(7200)
def test_eval_matches_the_model_card_on_test_clean(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = Path(os.environ.get("KWSD_TEST_LIBRISPEECH_DIR", "")).expanduser()
    if root.name != "test-clean" or not root.is_dir():
        pytest.skip(
            "set KWSD_TEST_LIBRISPEECH_DIR to LibriSpeech/test-clean to compare with the model "
            "card (`bash scripts/test-realmodel --librispeech`, or the workflow's model-card "
            "job, downloads it)"
        )
    table = run_eval(model_dir, librispeech_dir(root), tmp_path, capsys)
    with capsys.disabled():
        print(show("LibriSpeech test-clean", table))
    assert table.recall is not None and table.recall >= CARD_RECALL - RECALL_MARGIN, table.text
    assert table.fa_per_negative <= CARD_FA_PER_NEGATIVE + FA_MARGIN, table.text
