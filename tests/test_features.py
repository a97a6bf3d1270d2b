from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from kwsd.features import Chunker, FbankStream


def _reference(assets: Path) -> tuple[np.ndarray, np.ndarray]:
    samples, rate = sf.read(assets / "fixtures" / "fbank_input.wav", dtype="float32")
    assert rate == 16000
    raw = (assets / "fixtures" / "fbank_reference.bin").read_bytes()
    t, d = np.frombuffer(raw[:8], dtype="<i4")
    return samples, np.frombuffer(raw[8:], dtype="<f4").reshape(t, d)


def test_fbank_matches_kaldi_reference(assets: Path) -> None:
    samples, ref = _reference(assets)
    stream = FbankStream()
    feats = np.concatenate([stream.accept(samples), stream.finish()])
    assert feats.shape == ref.shape
    diff = np.abs(feats - ref)
    assert diff.max() < 3e-3
    assert diff.mean() < 5e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_streaming_in_random_pieces_equals_batch(assets: Path, seed: int) -> None:
    samples, _ = sf.read(assets / "audio" / "light_up.wav", dtype="float32")
    batch = FbankStream()
    whole = np.concatenate([batch.accept(samples), batch.finish()])
    rng = np.random.default_rng(seed)
    stream = FbankStream()
    parts, pos = [], 0
    while pos < len(samples):
        n = int(rng.integers(1, 4000))
        parts.append(stream.accept(samples[pos : pos + n]))
        pos += n
    parts.append(stream.finish())
    pieces = np.concatenate(parts)
    assert pieces.shape == whole.shape
    assert np.abs(pieces - whole).max() <= 1e-6


def test_tail_is_flushed_at_end_of_stream(assets: Path) -> None:
    samples, _ = sf.read(assets / "audio" / "light_up.wav", dtype="float32")
    stream = FbankStream()
    before = len(stream.accept(samples))
    tail = len(stream.finish())
    # snip_edges=false: frames are centred, (N + shift/2) // shift of them once finished
    assert tail > 0
    assert before + tail == (len(samples) + 80) // 160


def test_chunker_cuts_45_frame_windows_every_32() -> None:
    frames = np.arange(200 * 80, dtype=np.float32).reshape(200, 80)
    chunker = Chunker(45, 32)
    chunks = chunker.push(frames[:50]) + chunker.push(frames[50:])
    assert len(chunks) == (200 - 45) // 32 + 1
    for k, chunk in enumerate(chunks):
        assert chunk.shape == (45, 80)
        np.testing.assert_array_equal(chunk, frames[32 * k : 32 * k + 45])
