"""The public library API (`kwsd.KeywordSpotter`) on the real decoder/joiner.

Speech is espeak-ng output through the trained stand-in encoder, and the real
encoder's output for a real recording (the light_up fixture) replayed through the
real search. "The old path" below is how every caller assembled the pieces by hand
before the API existed: a backend, a `Frontend` and a `KeywordSearch` per stream.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from engine_support import espeak, espeak_wav

import kwsd
from kwsd import (
    AudioError,
    BackendOptions,
    Detection,
    KeywordError,
    KeywordSet,
    KeywordSpec,
    KeywordSpotter,
    KeywordStream,
    ModelError,
    ModelMissingError,
    SearchOptions,
)
from kwsd.audio.file import read_audio
from kwsd.backends.base import Backend
from kwsd.backends.loader import load_backend
from kwsd.backends.replay import ReplayBackend, read_frames
from kwsd.engine import Frontend
from kwsd.keywords import KeywordSet as CoreKeywordSet
from kwsd.keywords import Tokenizer, compile_keywords, parse_keyword_line
from kwsd.model.bundle import assets_bundle
from kwsd.model.manifest import load_manifest
from kwsd.search import KeywordSearch

SENTENCE = "good evening everyone, hey computer, turn on the lights in the living room please"
PHRASES = ["HEY COMPUTER", "LIVING ROOM", "GOOD NIGHT", "OPEN THE GARAGE"]
LIGHT_UP = "▁ L IGHT ▁UP :2.0 #0.25 @LIGHT_UP"
REFERENCE = SearchOptions(boost=2.0, threshold=0.25)  # the fixture's reference search


@pytest.fixture(scope="module")
def spotter(assets: Path) -> KeywordSpotter:
    return KeywordSpotter.from_assets(assets, keywords=PHRASES, search=REFERENCE)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng's own output: 22.05 kHz mono int16 WAV."""
    return espeak_wav(tmp_path_factory.mktemp("speech") / "speech.wav", SENTENCE)


def old_path(
    backend: Backend, tokenizer: Tokenizer, lines: list[str], audio: np.ndarray
) -> list[Detection]:
    """The hand-assembled decoding every caller used before `KeywordSpotter`."""
    specs = [parse_keyword_line(line) for line in lines]
    keywords = compile_keywords(specs, tokenizer, backend.defaults, boost=2.0, threshold=0.25)
    frontend = Frontend(backend)
    search = KeywordSearch(backend, keywords, REFERENCE)
    found: list[Detection] = []
    for start in range(0, len(audio), 1600):
        for enc in frontend.accept(audio[start : start + 1600]):
            found += search.step(enc)
    for enc in frontend.flush():
        found += search.step(enc)
    return found


# -- same detections as the old path ------------------------------------------------------


def test_stream_equals_the_old_path_on_real_speech_frames(assets: Path) -> None:
    frames = read_frames(assets / "fixtures" / "ref_encoder_light_up.bin")
    wav = assets / "audio" / "light_up.wav"
    audio, rate = sf.read(str(wav), dtype="int16")
    assert rate == 16000

    inner = load_backend(assets_bundle(assets), "onnx")
    tokenizer = Tokenizer(assets / "model" / "tokens.txt", assets / "model" / "bpe.model")
    lines = [LIGHT_UP, "LOVELY CHILD"]
    before = old_path(ReplayBackend(inner, frames), tokenizer, lines, audio / 32768.0)

    base = KeywordSpotter.from_assets(assets, search=REFERENCE)
    replay = base.with_backend(ReplayBackend(base.backend, frames))
    assert replay.detect_file(wav, lines) == before
    stream = replay.create_stream(lines)
    found: list[Detection] = []
    for start in range(0, len(audio), 777):  # int16, odd block sizes: the same
        found += stream.accept(audio[start : start + 777])
    assert found + stream.finish() == before
    assert [(d.keyword, d.tokens) for d in before] == [("LIGHT_UP", ("▁", "L", "IGHT", "▁UP"))]
    assert before[0].start == pytest.approx(3.04, abs=0.05)


def test_stream_equals_the_old_path_on_generated_speech(
    spotter: KeywordSpotter, speech: Path, assets: Path
) -> None:
    audio = read_audio(speech)  # 16 kHz, as `kwsd detect` reads it
    inner = load_backend(assets_bundle(assets), "onnx")
    tokenizer = Tokenizer(assets / "model" / "tokens.txt", assets / "model" / "bpe.model")
    before = old_path(inner, tokenizer, PHRASES, audio)
    assert [d.keyword for d in before] == ["HEY COMPUTER", "LIVING ROOM"]
    assert spotter.detect_file(speech) == before


def test_a_stream_resamples_for_the_caller(spotter: KeywordSpotter, speech: Path) -> None:
    pcm, rate = sf.read(str(speech), dtype="int16")
    assert rate == 22050
    at16k = spotter.detect_file(speech)
    stream = spotter.create_stream(sample_rate=rate)
    found: list[Detection] = []
    for start in range(0, len(pcm), 1234):  # blocks that match nothing in the model
        found += stream.accept(pcm[start : start + 1234])
    found += stream.finish()
    assert [d.keyword for d in found] == [d.keyword for d in at16k]
    for streamed, whole in zip(found, at16k, strict=True):
        assert streamed.start == pytest.approx(whole.start, abs=0.05)
        assert streamed.score == pytest.approx(whole.score, abs=0.05)


def test_detect_file_reads_any_format_and_mixes_channels(
    spotter: KeywordSpotter, speech: Path, tmp_path: Path
) -> None:
    data, rate = sf.read(str(speech), dtype="float32")
    stereo44 = np.asarray(soxr.resample(np.stack([data, data], axis=1), rate, 44100), np.float32)
    flac, ogg = tmp_path / "stereo.flac", tmp_path / "stereo.ogg"
    sf.write(flac, stereo44, 44100)
    sf.write(ogg, stereo44, 44100, format="OGG", subtype="VORBIS")
    for path in (flac, ogg):
        assert [d.keyword for d in spotter.detect_file(path)] == ["HEY COMPUTER", "LIVING ROOM"]
    with pytest.raises(AudioError, match="does not exist"):
        spotter.detect_file(tmp_path / "missing.wav")


def test_streams_in_parallel_threads_match_one_at_a_time(
    spotter: KeywordSpotter, speech: Path
) -> None:
    alone = spotter.detect_file(speech)
    results: list[list[Detection]] = [[] for _ in range(3)]

    def run(index: int) -> None:
        results[index] = spotter.detect_file(speech)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [alone, alone, alone]


# -- sharing --------------------------------------------------------------------------------


def test_streams_share_the_model_graph_and_decoder_cache(spotter: KeywordSpotter) -> None:
    a = spotter.create_stream(["hey computer", "good night"])
    b = spotter.create_stream(["HEY   COMPUTER", KeywordSpec(phrase="Good Night")])
    c = spotter.create_stream(["open the garage"])
    assert a.search.backend is b.search.backend is c.search.backend is spotter.backend
    assert a.search.graph is b.search.graph  # equal lists, however they were written
    assert a.search.graph is not c.search.graph
    assert a.search.decoder is b.search.decoder is c.search.decoder
    # the compiled list itself is reused for the same input
    assert spotter.compile(["hey computer", "good night"]) is a.keywords
    # a swap to an equal list picks up the shared graph too
    c.set_keywords("hey computer\ngood night")
    c.accept(np.zeros(16000, np.float32))
    assert c.search.graph is a.search.graph
    # each stream keeps its own audio state
    assert a.frontend is not b.frontend and a.search is not b.search


def test_a_warm_decoder_cache_serves_the_next_stream(spotter: KeywordSpotter, speech: Path) -> None:
    first = spotter.detect_file(speech, ["turn on the lights"])
    cached = len(spotter.create_stream().search.decoder)
    assert cached > 0
    assert spotter.detect_file(speech, ["turn on the lights"]) == first


# -- the stream's contract --------------------------------------------------------------------


def test_set_keywords_while_streaming(spotter: KeywordSpotter, tmp_path: Path) -> None:
    said = espeak("hey computer, good night", tmp_path / "s.wav")
    pause = np.zeros(16000, np.float32)  # the encoder has caught up when the list changes
    stream = spotter.create_stream(["hey computer"])
    found = stream.accept(np.concatenate([said, pause]))
    assert [d.keyword for d in found] == ["HEY COMPUTER"]
    assert stream.set_keywords(["good night"]).displays() == ["GOOD NIGHT"]
    assert stream.keywords.displays() == ["GOOD NIGHT"]
    later = stream.accept(said) + stream.finish()
    assert [d.keyword for d in later] == ["GOOD NIGHT"]
    assert later[0].start > len(said) / 16000 + 1.0  # stream time ran on across the swap


def test_a_bad_keyword_swap_keeps_the_running_list(spotter: KeywordSpotter, speech: Path) -> None:
    audio = read_audio(speech)
    stream = spotter.create_stream(["living room"])
    with pytest.raises(KeywordError, match=r"'2' are not in the model's vocabulary"):
        stream.set_keywords(["turn on light 2"])
    assert stream.keywords.displays() == ["LIVING ROOM"]
    found = stream.accept(audio) + stream.finish()
    assert [d.keyword for d in found] == ["LIVING ROOM"]


def test_finish_and_reset(spotter: KeywordSpotter, speech: Path) -> None:
    pcm, rate = sf.read(str(speech), dtype="int16")
    stream = spotter.create_stream(sample_rate=rate)
    first = stream.accept(pcm) + stream.finish()
    assert stream.finish() == []
    with pytest.raises(RuntimeError, match="reset"):
        stream.accept(pcm)
    stream.reset()
    assert stream.accept(pcm) + stream.finish() == first  # times start at 0 again
    assert first and first[0].start < 2.0


def test_int16_and_float32_are_the_same_audio(spotter: KeywordSpotter, speech: Path) -> None:
    pcm, _ = sf.read(str(speech), dtype="int16")
    as_int = spotter.create_stream(sample_rate=22050)
    as_float = spotter.create_stream(sample_rate=22050)
    assert as_int.accept(pcm) + as_int.finish() == (
        as_float.accept(pcm.astype(np.float64) / 32768.0) + as_float.finish()
    )


@pytest.mark.parametrize(
    ("samples", "message"),
    [
        (np.zeros((1600, 2), np.float32), r"mono.*\(1600, 2\).*samples\[:, 0\]"),
        (np.zeros(1600, np.int64), r"int64.*float32 in \[-1, 1\] or int16"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.float32(0.5), "mono"),
    ],
)
def test_bad_samples_are_rejected_with_the_fix(
    spotter: KeywordSpotter, samples: np.ndarray, message: str
) -> None:
    stream = spotter.create_stream()
    with pytest.raises(AudioError, match=message):
        stream.accept(samples)
    assert stream.accept(np.zeros(0, np.float32)) == []  # the stream is still usable


def test_unscaled_float_audio_warns_once(spotter: KeywordSpotter) -> None:
    stream = spotter.create_stream()
    loud = np.full(1600, 12000.0, np.float32)
    with pytest.warns(UserWarning, match=r"outside \[-1, 1\].*divide 16-bit values by 32768"):
        stream.accept(loud)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stream.accept(loud)


def test_bad_sample_rate(spotter: KeywordSpotter) -> None:
    for rate in (0, -8000, 16000.0):
        with pytest.raises(ValueError, match="sample_rate"):
            spotter.create_stream(sample_rate=rate)  # type: ignore[arg-type]


# -- compile ------------------------------------------------------------------------------------


def test_compile_takes_every_keyword_form(spotter: KeywordSpotter, tmp_path: Path) -> None:
    keyword_file = tmp_path / "keywords.txt"
    keyword_file.write_text("# my keywords\nlights off\n▁HE Y ▁COMP U TER :1.5 #0.3 @HEY\n")
    json_file = tmp_path / "keywords.json"
    json_file.write_text('["good night", {"phrase": "volume up", "threshold": 0.4}]')
    assert spotter.compile("lights off").displays() == ["LIGHTS OFF"]
    assert spotter.compile(keyword_file).displays() == ["LIGHTS OFF", "HEY"]
    assert spotter.compile(keyword_file.read_text()).displays() == ["LIGHTS OFF", "HEY"]
    assert spotter.compile(json_file).displays() == ["GOOD NIGHT", "VOLUME UP"]
    mixed = spotter.compile(
        ["lights off", LIGHT_UP, KeywordSpec(phrase="good night", boost=3.0), {"phrase": "stop"}]
    )
    assert mixed.displays() == ["LIGHTS OFF", "LIGHT_UP", "GOOD NIGHT", "STOP"]
    hey = spotter.compile(keyword_file).keywords[1]
    assert (hey.pieces, hey.boost, hey.threshold) == (("▁HE", "Y", "▁COMP", "U", "TER"), 1.5, 0.3)
    # entries without their own threshold/boost take the spotter's search options
    assert (mixed.keywords[0].boost, mixed.keywords[0].threshold) == (2.0, 0.25)
    assert mixed.keywords[2].boost == 3.0
    assert isinstance(mixed, CoreKeywordSet) and KeywordSet is CoreKeywordSet


def test_compile_reports_weak_keywords_and_refuses_bad_ones(spotter: KeywordSpotter) -> None:
    weak = spotter.compile(["mister", "hey computer"])
    assert len(weak) == 2
    assert weak.warnings == (
        "keyword 1 ('mister'): one word split into 3 pieces (▁MI S TER): the model rarely "
        "locks onto these; add a second word or list alternates",
    )
    with pytest.raises(KeywordError, match=r"keyword 2 \('3 d printer'\).*spell numbers"):
        spotter.compile(["hey computer", "3 d printer"])
    with pytest.raises(KeywordError, match="no keyword in"):
        spotter.compile("  \n# only a comment\n")
    with pytest.raises(KeywordError, match="has no phrase or pieces"):
        spotter.compile(["hey computer", ""])
    with pytest.raises(TypeError, match="not int"):
        spotter.compile(42)  # type: ignore[arg-type]


def test_keywords_are_required_somewhere(assets: Path, speech: Path) -> None:
    bare = KeywordSpotter.from_assets(assets)
    assert bare.keywords is None
    with pytest.raises(KeywordError, match="no keywords: pass keywords="):
        bare.create_stream()
    with pytest.raises(KeywordError, match="no keywords"):
        bare.detect_file(speech)
    assert bare.create_stream([]).accept(np.zeros(16000, np.float32)) == []  # explicit: none
    with pytest.raises(KeywordError, match="vocabulary"):
        KeywordSpotter.from_assets(assets, keywords=["caf\u00e9 lights"])


# -- constructors ------------------------------------------------------------------------------


def install_standin_model(assets: Path, models_dir: Path) -> Path:
    """A model directory laid out as `kwsd models pull` installs the release, whose
    encoder is the stand-in (the real encoder is not available here)."""
    target = models_dir / load_manifest().default("onnx").install_dir
    target.mkdir(parents=True)
    for source in (assets / "model").iterdir():
        if source.suffix in (".onnx", ".txt", ".model"):
            (target / source.name).symlink_to(source)
    encoder = target / "encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx"
    encoder.symlink_to(assets / "standin" / "encoder-standin.onnx")
    return target


def test_installed_finds_what_models_pull_installed(
    assets: Path, tmp_path: Path, speech: Path
) -> None:
    models = tmp_path / "models"
    with pytest.raises(ModelMissingError, match=r"kwsd models pull.*download=True"):
        KeywordSpotter.installed(models_dir=models)
    root = install_standin_model(assets, models)
    spotter = KeywordSpotter.installed(models_dir=models, keywords=PHRASES, search=REFERENCE)
    assert spotter.bundle is not None and spotter.bundle.root == root
    assert spotter.label == root.name
    assert [d.keyword for d in spotter.detect_file(speech)] == ["HEY COMPUTER", "LIVING ROOM"]


def test_from_model_dir(assets: Path, tmp_path: Path, speech: Path) -> None:
    root = install_standin_model(assets, tmp_path / "models")
    for path in (root, tmp_path / "models"):  # the model, or the directory it was pulled into
        spotter = KeywordSpotter.from_model_dir(
            path, keywords=PHRASES, search=REFERENCE, backend=BackendOptions(runtime="onnx")
        )
        assert [d.keyword for d in spotter.detect_file(speech)] == ["HEY COMPUTER", "LIVING ROOM"]
    fp32 = BackendOptions(precision="fp32")
    with pytest.raises(ModelError, match=r"no fp32 encoder.*precision"):
        KeywordSpotter.from_model_dir(root, backend=fp32)
    with pytest.raises(ModelMissingError, match="does not exist"):
        KeywordSpotter.from_model_dir(tmp_path / "nowhere")


def test_from_assets_needs_a_path_or_the_environment(
    assets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KWSD_ASSETS", raising=False)
    with pytest.raises(ModelError, match="KWSD_ASSETS"):
        KeywordSpotter.from_assets()
    monkeypatch.setenv("KWSD_ASSETS", str(assets))
    spotter = KeywordSpotter.from_assets()
    assert spotter.stand_in and spotter.label == "model (stand-in encoder)"


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="threads"):
        BackendOptions(threads=0)
    with pytest.raises(ValueError, match="runtime"):
        BackendOptions(runtime="cuda")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        SearchOptions(threshold=1.5)
    with pytest.raises(ValueError, match="beam"):
        SearchOptions(beam=0)


# -- the package ---------------------------------------------------------------------------------


def test_import_kwsd_stays_light() -> None:
    code = (
        "import sys, kwsd\n"
        "heavy = [m for m in ('numpy', 'onnxruntime', 'sentencepiece', 'pydantic') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert kwsd.KeywordSpotter.__name__ == 'KeywordSpotter'\n"
        "assert 'numpy' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_embedding_program_keeps_its_stdout(assets: Path) -> None:
    """kwsd logs like a library: through `logging`, warnings on stderr, info only on request."""
    code = (
        "from kwsd import KeywordSpotter\n"
        "KeywordSpotter.from_assets(keywords=['hey computer'])\n"
        "print('my output')\n"
    )
    env = {**os.environ, "KWSD_ASSETS": str(assets)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert proc.stdout == "my output\n"
    assert "event='stand_in_encoder'" in proc.stderr  # a warning: shown
    assert "model_loaded" not in proc.stderr  # info: quiet unless logging asks for it


def test_a_quiet_program_never_loads_the_logging_stack(
    assets: Path, tmp_path: Path, speech: Path
) -> None:
    """What kwsd logs at INFO does not reach a program that did not ask for it, so
    structlog, and the asyncio and OpenSSL it imports (~7 MiB resident), stay unloaded
    (kwsd/liblog.py); once the program asks for INFO lines, they come."""
    root = install_standin_model(assets, tmp_path / "models")
    code = (
        "import logging, sys\n"
        "import soundfile\n"
        "from kwsd import KeywordSpotter\n"
        "spotter = KeywordSpotter.from_model_dir(sys.argv[1], keywords=['hey computer'])\n"
        "audio, rate = soundfile.read(sys.argv[2], dtype='float32')\n"
        "stream = spotter.create_stream(sample_rate=rate)\n"
        "assert stream.accept(audio) + stream.finish()\n"
        "loaded = [m for m in ('structlog', 'asyncio', 'ssl') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "KeywordSpotter.from_model_dir(sys.argv[1], keywords=['hey computer'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root), str(speech)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "event='model_loaded'" in proc.stderr


def test_a_spotting_program_never_imports_pydantic(
    assets: Path, tmp_path: Path, speech: Path
) -> None:
    """pydantic costs about 14 MiB resident; only the daemon's config needs it. Every
    keyword form the library takes (a phrase, a keyword line, a mapping, a KeywordSpec,
    a JSON keywords file), and a refused one, goes through KeywordSpec's own checks."""
    root = install_standin_model(assets, tmp_path / "models")
    keywords_json = tmp_path / "keywords.json"
    keywords_json.write_text('["good night", {"phrase": "lights off", "boost": 2}]', "utf-8")
    code = (
        "import sys\n"
        "import soundfile\n"
        "from kwsd import KeywordError, KeywordSpec, KeywordSpotter\n"
        "spotter = KeywordSpotter.from_model_dir(sys.argv[1], keywords=['hey computer'])\n"
        "spotter.compile(['LIGHT UP :2.0 #0.3', {'phrase': 'stop', 'threshold': 0.4},\n"
        "                 KeywordSpec(pieces='▁ L IGHT ▁UP', display='LIGHT_UP')])\n"
        "from pathlib import Path\n"
        "spotter.compile(Path(sys.argv[3]))\n"
        "try:\n"
        "    spotter.compile([{'phrase': 'stop', 'treshold': 0.4}])\n"
        "except KeywordError as exc:\n"
        "    assert 'treshold' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('an unknown key was accepted')\n"
        "audio, rate = soundfile.read(sys.argv[2], dtype='float32')\n"
        "stream = spotter.create_stream(sample_rate=rate)\n"
        "assert stream.accept(audio) + stream.finish()\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'pydantic_core', 'pydantic_settings')]\n"
        "assert not loaded, loaded\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(root), str(speech), str(keywords_json)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_public_names() -> None:
    for name in kwsd.__all__:
        assert getattr(kwsd, name) is not None
    assert set(kwsd.__all__) <= set(dir(kwsd))
    assert kwsd.KeywordStream is KeywordStream
    with pytest.raises(AttributeError, match="no attribute 'Spotter'"):
        kwsd.Spotter  # noqa: B018


def test_model_does_not_import_backends() -> None:
    """kwsd.backends loads what kwsd.model located; never the other way round."""
    # Line-wise, not with `ast`: CPython 3.11.7's ast.parse can fail late in a long run
    # ("AST constructor recursion depth mismatch", fixed in 3.11.8).
    importing = re.compile(r"^\s*(from|import)\s+kwsd\.backends\b", re.MULTILINE)
    package = Path(kwsd.__file__).parent
    sources = list((package / "model").glob("*.py"))
    assert len(sources) >= 5
    for source in sources:
        assert not importing.search(source.read_text("utf-8")), source
    assert importing.search((package / "backends" / "loader.py").read_text("utf-8"))
