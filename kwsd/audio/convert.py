"""Sample format, channel and rate conversion to the model's float32 mono 16 kHz."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import soxr

from kwsd.audio.base import SAMPLE_RATE, FloatArray
from kwsd.errors import AudioError

# soxr "HQ": flat to 0.91 of Nyquist and >100 dB stop band, at a cost far below the encoder.
_QUALITY = "HQ"


def to_float32(data: npt.NDArray[np.generic]) -> FloatArray:
    """Integer PCM scaled to [-1, 1); float input passed through as float32."""
    if data.dtype == np.int16:
        return (data.astype(np.float32) / 32768.0).astype(np.float32, copy=False)
    if data.dtype == np.int32:
        return (data.astype(np.float64) / 2147483648.0).astype(np.float32)
    if data.dtype == np.uint8:
        return ((data.astype(np.float32) - 128.0) / 128.0).astype(np.float32, copy=False)
    if np.issubdtype(data.dtype, np.floating):
        return data.astype(np.float32, copy=False)
    raise AudioError(f"unsupported sample format {data.dtype}; use 16/32-bit PCM or float")


def check_channel(channel: int | None, channels: int, what: str) -> None:
    """Raise AudioError when `channel` does not exist in an input with `channels` channels."""
    if channel is not None and not 0 <= channel < channels:
        raise AudioError(
            f"audio.channel = {channel} but {what} has {channels} channel(s); "
            f"use 0..{channels - 1}, or leave channel unset to downmix"
        )


def to_mono(data: FloatArray, channel: int | None) -> FloatArray:
    """[frames] or [frames, channels] → [frames]: pick `channel`, or average all channels.

    Averaging (not summing) keeps the level in [-1, 1] whatever the channel count.
    """
    if data.ndim == 1:
        check_channel(channel, 1, "the input")
        return data
    if channel is not None:
        check_channel(channel, data.shape[1], "the input")
        return np.ascontiguousarray(data[:, channel])
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0])
    mixed: FloatArray = data.mean(axis=1, dtype=np.float32)
    return mixed


def resample(samples: FloatArray, rate: int, target: int = SAMPLE_RATE) -> FloatArray:
    """Whole-signal resampling (the reference the streaming path is compared against)."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    out: FloatArray = soxr.resample(samples, rate, target, quality=_QUALITY)
    return out.astype(np.float32, copy=False)


class StreamResampler:
    """Block-by-block resampling to 16 kHz that matches resampling the whole signal.

    soxr keeps the filter state between calls, so block edges leave no clicks; `flush`
    returns the tail held back by the filter delay at the end of the input.
    """

    def __init__(self, rate: int, target: int = SAMPLE_RATE) -> None:
        if rate <= 0:
            raise AudioError(f"invalid sample rate {rate} Hz")
        self.rate = rate
        self.target = target
        self._stream: soxr.ResampleStream | None = None
        if rate != target:
            self._stream = soxr.ResampleStream(rate, target, 1, dtype="float32", quality=_QUALITY)

    @property
    def passthrough(self) -> bool:
        return self._stream is None

    def process(self, samples: FloatArray) -> FloatArray:
        if self._stream is None:
            return samples
        out: FloatArray = self._stream.resample_chunk(samples, last=False)
        return out

    def flush(self) -> FloatArray:
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        out: FloatArray = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return out


class Converter:
    """Any device/file block ([frames] or [frames, ch], int or float) → float32 mono 16 kHz."""

    def __init__(self, rate: int, channel: int | None) -> None:
        self.channel = channel
        self._resampler = StreamResampler(rate)

    def process(self, data: npt.NDArray[np.generic]) -> FloatArray:
        return self._resampler.process(to_mono(to_float32(data), self.channel))

    def flush(self) -> FloatArray:
        return self._resampler.flush()
