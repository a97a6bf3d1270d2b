"""The CoreML backend with the real bundle on macOS, end to end and against ONNX.

Runs only on macOS with both real bundles installed (the macOS GitHub workflow pulls
them with `kwsd models pull`); skipped elsewhere. On macOS, KWSD_TEST_REQUIRE_MACOS=1
turns "model or audio missing" skips into failures so CI cannot pass vacuously.

Where things are looked for:
- KWSD_TEST_COREML_MODEL_DIR (default models/coreml) and KWSD_TEST_ONNX_MODEL_DIR (models/onnx);
- KWSD_TEST_AUDIO_DIR holding light_up.wav and lovely_child.wav (default: the `audio`
  dir of KWSD_ASSETS).
The keyword settings are the upstream reference ones (sherpa test_keywords.txt
tokenisation, boost 2.0, threshold 0.25), which find LIGHT UP in light_up.wav.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import soundfile as sf

from kwsd import BackendOptions, Detection, KeywordSpec, KeywordSpotter
from kwsd.backends.base import ChunkSpec
from kwsd.backends.coreml import CoreMLBackend
from kwsd.backends.coreml_io import load_config
from kwsd.model.bundle import open_bundle

REPO = Path(__file__).resolve().parents[1]
ON_MACOS = sys.platform == "darwin"
REQUIRED = os.environ.get("KWSD_TEST_REQUIRE_MACOS") == "1"
SAMPLE_RATE = 16000
START_TOLERANCE_S = 0.12

pytestmark = [
    pytest.mark.macos,
    pytest.mark.skipif(not ON_MACOS, reason="CoreML needs macOS"),
]

KEYWORDS = (
    KeywordSpec(phrase="LIGHT UP", pieces=("▁", "L", "IGHT", "▁UP"), boost=2.0, threshold=0.25),
    KeywordSpec(
        phrase="LOVELY CHILD", pieces=("▁LOVE", "LY", "▁CHI", "L", "D"), boost=2.0, threshold=0.25
    ),
    KeywordSpec(phrase="FOREVER", pieces=("▁FOR", "E", "VER"), boost=2.0, threshold=0.25),
)


def _missing(what: str) -> None:
    """Skip, or fail when CI demanded that these tests really run."""
    if REQUIRED:
        pytest.fail(f"KWSD_TEST_REQUIRE_MACOS=1 but {what}")
    pytest.skip(what)


def _model_dir(env: str, default: Path) -> Path:
    path = Path(os.environ.get(env, default)).expanduser()
    if not path.is_dir() or not any(path.iterdir()):
        _missing(f"no model at {path} (set {env} or run `kwsd models pull`)")
    return path


@pytest.fixture(scope="module")
def coreml_dir() -> Path:
    return _model_dir("KWSD_TEST_COREML_MODEL_DIR", REPO / "models" / "coreml")


@pytest.fixture(scope="module")
def onnx_dir() -> Path:
    return _model_dir("KWSD_TEST_ONNX_MODEL_DIR", REPO / "models" / "onnx")


@pytest.fixture(scope="module")
def audio_dir() -> Path:
    default = REPO.parent / "shared" / "kws-assets"
    assets = Path(os.environ.get("KWSD_ASSETS", default))
    path = Path(os.environ.get("KWSD_TEST_AUDIO_DIR", assets / "audio")).expanduser()
    if not (path / "light_up.wav").is_file():
        _missing(f"no light_up.wav in {path} (set KWSD_TEST_AUDIO_DIR)")
    return path


def read_wav(path: Path) -> npt.NDArray[np.float32]:
    samples, rate = sf.read(str(path), dtype="float32", always_2d=False)
    assert rate == SAMPLE_RATE, f"{path}: {rate} Hz"
    return np.asarray(samples, dtype=np.float32)


@pytest.fixture(scope="module")
def coreml_spotter(coreml_dir: Path) -> KeywordSpotter:
    options = BackendOptions(runtime="coreml")
    return KeywordSpotter.from_model_dir(coreml_dir, keywords=KEYWORDS, backend=options)


@pytest.fixture(scope="module")
def onnx_spotter(onnx_dir: Path) -> KeywordSpotter:
    options = BackendOptions(runtime="onnx")
    return KeywordSpotter.from_model_dir(onnx_dir, keywords=KEYWORDS, backend=options)


def spot(spotter: KeywordSpotter, samples: npt.NDArray[np.float32]) -> list[Detection]:
    """Stream `samples` in 100 ms blocks, as a microphone would, then flush."""
    stream = spotter.create_stream()
    found: list[Detection] = []
    block = SAMPLE_RATE // 10
    for start in range(0, len(samples), block):
        found.extend(stream.accept(samples[start : start + block]))
    found.extend(stream.finish())
    return found


def test_real_config_json_matches_spec_and_onnx_export(coreml_dir: Path, onnx_dir: Path) -> None:
    """The published config.json parses, and its caches are the ONNX export's at batch 1,
    the assumption the Linux contract fake (tests/test_coreml_io.py) is built on."""
    cfg = load_config(coreml_dir / "config.json")
    assert cfg.chunk == ChunkSpec(frames_in=45, frames_shift=32, frames_out=8, frame_seconds=0.04)
    assert (cfg.defaults.threshold, cfg.defaults.boost) == (0.15, 0.5)
    assert len(cfg.layer_states) == 36
    assert cfg.embed_pad_shape == (1, 128, 3, 19)
    session = ort.InferenceSession(
        str(open_bundle(onnx_dir).encoder), providers=["CPUExecutionProvider"]
    )
    onnx_sizes = {
        i.name: int(np.prod([1 if isinstance(d, str) else d for d in i.shape]))
        for i in session.get_inputs()
    }
    for spec in cfg.layer_states:
        assert onnx_sizes.get(spec.name) == int(np.prod(spec.shape)), spec


def test_coreml_backend_loads_and_runs(coreml_dir: Path) -> None:
    """Direct construction as well as through the loader, for each compute-unit choice."""
    for units in ("all", "cpu_only"):
        backend = CoreMLBackend(open_bundle(coreml_dir), compute_units=units)
        assert backend.name == "coreml"
        assert backend.vocab_size == 500 and backend.joiner_dim == 320
        state = backend.init_state()
        feats = np.full((backend.chunk.frames_in, 80), -10.0, dtype=np.float32)
        enc, state = backend.run_chunk(feats, state)
        assert enc.shape == (backend.chunk.frames_out, 320) and enc.dtype == np.float32
        assert np.isfinite(enc).all()
        assert int(np.asarray(state["processed_lens"]).reshape(-1)[0]) == 16
        logits = backend.join(enc[:2], backend.decode(np.array([[-1, 0], [0, 5]], np.int64)))
        assert logits.shape == (2, 500) and np.isfinite(logits).all()


def test_coreml_finds_light_up(coreml_spotter: KeywordSpotter, audio_dir: Path) -> None:
    assert coreml_spotter.backend.name == "coreml"
    found = spot(coreml_spotter, read_wav(audio_dir / "light_up.wav"))
    phrases = [d.phrase for d in found]
    assert "LIGHT UP" in phrases, f"CoreML found {phrases}"
    assert "LOVELY CHILD" not in phrases
    hit = next(d for d in found if d.phrase == "LIGHT UP")
    # Upstream fp32 ONNX puts the first token at 3.04 s; the CoreML checkpoint differs a little.
    assert abs(hit.start - 3.04) <= 0.3, hit
    assert hit.start <= hit.end and 0.0 < hit.score <= 1.0


def test_coreml_silence_finds_nothing(coreml_spotter: KeywordSpotter) -> None:
    assert spot(coreml_spotter, np.zeros(3 * SAMPLE_RATE, np.float32)) == []


@pytest.mark.parametrize("recording", ["light_up.wav", "lovely_child.wav"])
def test_coreml_agrees_with_onnx(
    coreml_spotter: KeywordSpotter, onnx_spotter: KeywordSpotter, audio_dir: Path, recording: str
) -> None:
    """The same audio through both backends (light_up.wav: LIGHT UP; lovely_child.wav:
    LOVELY CHILD, FOREVER). Different checkpoints, so not bit-identical, but the same
    hits at the same time."""
    path = audio_dir / recording
    if not path.is_file():
        _missing(f"no {recording} in {audio_dir} (set KWSD_TEST_AUDIO_DIR)")
    samples = read_wav(path)
    from_coreml = spot(coreml_spotter, samples)
    from_onnx = spot(onnx_spotter, samples)
    assert from_onnx, f"ONNX found nothing in {recording}"
    assert [d.phrase for d in from_coreml] == [d.phrase for d in from_onnx]
    for c, o in zip(from_coreml, from_onnx, strict=True):
        assert abs(c.start - o.start) <= START_TOLERANCE_S, (c, o)
