from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from kwsd.backends.loader import load_backend
from kwsd.backends.onnx import BOUND_JOINER_ROWS, OnnxBackend
from kwsd.engine import Frontend
from kwsd.errors import ModelError
from kwsd.model.bundle import open_bundle


@pytest.fixture(scope="module")
def synthetic(assets: Path) -> OnnxBackend:
    bundle = open_bundle(
        assets / "model", encoder_override=assets / "synthetic" / "encoder-synthetic.onnx"
    )
    backend = load_backend(bundle, "onnx")
    assert isinstance(backend, OnnxBackend)
    return backend


def test_every_state_is_fed_back(synthetic: OnnxBackend) -> None:
    state = synthetic.init_state()
    assert len(state) == 6 * 6 + 2  # six caches per layer, embed_states, processed_lens
    assert all(not np.any(v) for v in state.values())
    feats = np.zeros((45, 80), np.float32)
    for _ in range(3):
        enc, state = synthetic.run_chunk(feats, state)
        assert enc.shape == (8, 320)
    for name, value in state.items():
        expected = 48 if name == "processed_lens" else 3
        assert np.all(value == expected), name


def test_chunk_spec_read_from_metadata(synthetic: OnnxBackend) -> None:
    assert (synthetic.chunk.frames_in, synthetic.chunk.frames_shift) == (45, 32)
    assert synthetic.chunk.frames_out == 8
    assert synthetic.chunk.frame_seconds == pytest.approx(0.04)
    assert (synthetic.vocab_size, synthetic.joiner_dim, synthetic.context_size) == (500, 320, 2)


def test_frontend_chunk_boundaries(synthetic: OnnxBackend) -> None:
    """Frame f is final once samples reach 160*f + 280 (centred 400-sample windows);
    chunk k needs frames [32k, 32k + 45)."""
    frontend = Frontend(synthetic)
    ready = [len(frontend.accept(np.zeros(4000, np.float32))) for _ in range(4)]
    # 24, 49, 74, 99 final frames -> chunk 0 at 49, chunk 1 (77 frames) at 99
    assert ready == [0, 1, 0, 1]
    # 0.8 s of padding: (16000 + 12800 + 80) // 160 = 180 frames -> chunks 2, 3, 4
    assert len(frontend.flush()) == 3


def test_decoder_accepts_minus_one_context(synthetic: OnnxBackend) -> None:
    out = synthetic.decode(np.array([[-1, 0], [5, 6]], np.int64))
    assert out.shape == (2, 320)
    logits = synthetic.join(np.zeros((2, 320), np.float32), out)
    assert logits.shape == (2, 500)
    assert not np.allclose(logits[0], logits[1])


def test_joiner_values_equal_a_plain_session_run_in_every_thread(
    synthetic: OnnxBackend, assets: Path
) -> None:
    """The joiner's bound buffers (one set per row count and thread) give exactly what
    `InferenceSession.run` gives, hand out arrays that later calls leave alone, and do
    not mix up threads that share the backend."""
    joiner_path = open_bundle(
        assets / "model", encoder_override=assets / "synthetic" / "encoder-synthetic.onnx"
    ).joiner
    joiner = ort.InferenceSession(str(joiner_path), providers=["CPUExecutionProvider"])
    enc_name, dec_name = (arg.name for arg in joiner.get_inputs())
    rng = np.random.default_rng(7)
    cases = [
        (
            rng.normal(0, 1, (rows, 320)).astype(np.float32),
            rng.normal(0, 1, (rows, 320)).astype(np.float32),
        )
        for rows in (*range(1, BOUND_JOINER_ROWS + 3), 1, 4)  # bound sizes, again, and past them
    ]
    expected = [joiner.run(None, {enc_name: enc, dec_name: dec})[0] for enc, dec in cases]
    first = [synthetic.join(enc, dec) for enc, dec in cases]
    for got, want in zip(first, expected, strict=True):
        np.testing.assert_array_equal(got, want)

    def worker(offset: int) -> bool:
        order = [(i + offset) % len(cases) for i in range(len(cases))] * 20
        return all(np.array_equal(synthetic.join(*cases[i]), expected[i]) for i in order)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(worker, range(4)))


def test_corrupt_encoder_is_a_clear_error(assets: Path, tmp_path: Path) -> None:
    bad = tmp_path / "encoder.onnx"
    bad.write_bytes(b"\x08\x07not really an onnx model" * 10)
    with pytest.raises(ModelError, match=r"encoder\.onnx"):
        OnnxBackend(
            bad,
            assets / "model" / "decoder-epoch-12-avg-2-chunk-16-left-64.onnx",
            assets / "model" / "joiner-epoch-12-avg-2-chunk-16-left-64.int8.onnx",
        )
