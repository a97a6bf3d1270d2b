"""Sample-format, channel and rate conversion on real speech."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from kwsd.audio.base import SAMPLE_RATE
from kwsd.audio.convert import Converter, StreamResampler, resample, to_float32, to_mono
from kwsd.errors import AudioError


@pytest.fixture(scope="module")
def pcm16(assets: Path) -> np.ndarray:
    data, rate = sf.read(assets / "audio" / "light_up.wav", dtype="int16")
    assert rate == SAMPLE_RATE
    return np.asarray(data, dtype=np.int16)


def test_integer_formats_scale_to_unit_range(pcm16: np.ndarray) -> None:
    as_float = to_float32(pcm16)
    assert as_float.dtype == np.float32
    np.testing.assert_array_equal(as_float, pcm16 / 32768.0)
    as_int32 = (pcm16.astype(np.int32) << 16).astype(np.int32)
    np.testing.assert_allclose(to_float32(as_int32), as_float, atol=1e-7)
    as_uint8 = ((pcm16.astype(np.int32) >> 8) + 128).astype(np.uint8)
    np.testing.assert_allclose(to_float32(as_uint8), as_float, atol=1 / 128)
    assert to_float32(as_float.astype(np.float64)).dtype == np.float32
    assert to_float32(np.array([-32768, 32767], np.int16)).tolist() == [-1.0, 32767 / 32768]
    with pytest.raises(AudioError, match="unsupported sample format"):
        to_float32(np.array(["a"]))


def test_mono_downmix_and_select(pcm16: np.ndarray) -> None:
    speech = to_float32(pcm16)
    reversed_speech = speech[::-1].copy()
    stereo = np.stack([speech, reversed_speech], axis=1)
    np.testing.assert_allclose(to_mono(stereo, None), (speech + reversed_speech) / 2, atol=1e-7)
    np.testing.assert_array_equal(to_mono(stereo, 1), reversed_speech)
    np.testing.assert_array_equal(to_mono(speech, None), speech)
    np.testing.assert_array_equal(to_mono(speech[:, None], None), speech)
    with pytest.raises(AudioError, match=r"audio\.channel = 2"):
        to_mono(stereo, 2)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_streaming_resampler_matches_whole_signal(pcm16: np.ndarray, rate: int) -> None:
    speech = soxr.resample(to_float32(pcm16), SAMPLE_RATE, rate).astype(np.float32)
    stream = StreamResampler(rate)
    rng = np.random.default_rng(1)  # irregular block sizes, like real callbacks
    pieces = []
    i = 0
    while i < len(speech):
        n = int(rng.integers(1, 3000))
        pieces.append(stream.process(speech[i : i + n]))
        i += n
    pieces.append(stream.flush())
    got = np.concatenate(pieces)
    expected = resample(speech, rate)
    assert len(got) == len(expected) == pytest.approx(len(speech) * SAMPLE_RATE / rate, abs=1)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_16k_is_passthrough(pcm16: np.ndarray) -> None:
    speech = to_float32(pcm16)
    stream = StreamResampler(SAMPLE_RATE)
    assert stream.passthrough
    assert stream.process(speech) is speech
    assert stream.flush().size == 0


def test_converter_int16_stereo_44k(pcm16: np.ndarray) -> None:
    speech44 = soxr.resample(to_float32(pcm16), SAMPLE_RATE, 44100)
    stereo = (np.stack([speech44, speech44 * 0.5], axis=1) * 32767).astype(np.int16)
    conv = Converter(44100, None)
    got = np.concatenate(
        [conv.process(stereo[i : i + 4410]) for i in range(0, len(stereo), 4410)] + [conv.flush()]
    )
    expected = resample(to_mono(to_float32(stereo), None), 44100)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_invalid_rate() -> None:
    with pytest.raises(AudioError, match="invalid sample rate"):
        StreamResampler(0)
