"""Streaming Kaldi fbank features and the 45/32 encoder chunker (docs/algorithm.md §1, §2).

The options mirror how sherpa-onnx/icefall configure kaldi-native-fbank for this model;
getting one of them wrong degrades recognition silently, which is why they live in one
place and are checked against the reference fixture in the tests.
"""

from __future__ import annotations

from array import array

import kaldi_native_fbank as knf
import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16000
NUM_MEL_BINS = 80
# Zero samples appended at end of stream so the last spoken frames reach the encoder
# (upstream appends 0.66–0.8 s; the encoder needs 13 frames of right context).
TAIL_PADDING_SECONDS = 0.8

FeatureArray = npt.NDArray[np.float32]


def fbank_options() -> knf.FbankOptions:
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.window_type = "povey"
    opts.mel_opts.num_bins = NUM_MEL_BINS
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = -400.0
    opts.use_energy = False
    opts.use_power = True
    opts.use_log_fbank = True
    return opts


class FbankStream:
    """Incremental fbank: feed samples in any piece sizes, get the frames that are final."""

    def __init__(self) -> None:
        self._opts = fbank_options()
        self._fbank = knf.OnlineFbank(self._opts)
        self._next = 0  # absolute index of the next frame to hand out

    def accept(self, samples: npt.NDArray[np.float32]) -> FeatureArray:
        """samples: float32 mono 16 kHz in [-1, 1] -> newly final frames [n, 80]."""
        if samples.size:
            # kaldi-native-fbank takes a sequence of floats, which its binding reads one
            # element at a time: from an `array.array` that costs a third of what it costs
            # from a numpy array (whose every element becomes a numpy scalar first).
            block = array("f", np.ascontiguousarray(samples, np.float32).tobytes())
            self._fbank.accept_waveform(SAMPLE_RATE, block)
        return self._drain()

    def finish(self) -> FeatureArray:
        """Mark end of input and return the frames that only become final then."""
        self._fbank.input_finished()
        return self._drain()

    def reset(self) -> None:
        self._fbank = knf.OnlineFbank(self._opts)
        self._next = 0

    def _drain(self) -> FeatureArray:
        ready = self._fbank.num_frames_ready
        if ready <= self._next:
            return np.empty((0, NUM_MEL_BINS), np.float32)
        frames = np.array(
            [self._fbank.get_frame(i) for i in range(self._next, ready)], dtype=np.float32
        )
        # Frames are addressed absolutely; popping only frees memory on long streams.
        self._fbank.pop(ready - self._next)
        self._next = ready
        return frames


class Chunker:
    """Cuts a feature stream into overlapping encoder windows: `size` frames every `shift`."""

    def __init__(self, size: int = 45, shift: int = 32) -> None:
        if not 0 < shift <= size:
            raise ValueError(f"chunk shift {shift} must be in 1..{size}")
        self.size = size
        self.shift = shift
        self._buffer = np.empty((0, NUM_MEL_BINS), np.float32)

    def push(self, frames: FeatureArray) -> list[FeatureArray]:
        if frames.size:
            self._buffer = np.concatenate([self._buffer, frames])
        chunks: list[FeatureArray] = []
        while len(self._buffer) >= self.size:
            chunks.append(self._buffer[: self.size].copy())
            self._buffer = self._buffer[self.shift :]
        return chunks

    def reset(self) -> None:
        self._buffer = np.empty((0, NUM_MEL_BINS), np.float32)
