"""A backend that replays precomputed encoder frames through a real decoder/joiner.

It exists for parity checks (`kwsd decode-frames`) and tests: the real encoder output
for a real recording (the light_up fixture) drives the real search and daemon, which
is the closest this project gets to real human speech without the real encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kwsd.backends.base import Backend, DelegatingBackend, EncoderState, FloatArray
from kwsd.errors import ModelError


def read_frames(path: Path) -> FloatArray:
    """The fixture format: int32 T, int32 D, then T*D float32, all little-endian."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read encoder frames {path}: {exc}") from None
    if len(raw) < 8:
        raise ModelError(f"{path} is too short to be an encoder-frames file")
    t, d = (int(v) for v in np.frombuffer(raw[:8], dtype="<i4"))
    if t <= 0 or d <= 0 or len(raw) != 8 + 4 * t * d:
        raise ModelError(
            f"{path}: header says {t}x{d} frames but the file has {len(raw) - 8} data bytes "
            "(expected int32 T, int32 D, then T*D float32 little-endian)"
        )
    return np.frombuffer(raw[8:], dtype="<f4").reshape(t, d).astype(np.float32)


def check_frames(frames: FloatArray, joiner_dim: int) -> None:
    """Raise ModelError unless `frames` is encoder output [T, joiner_dim] for this model."""
    if frames.ndim != 2 or frames.shape[1] != joiner_dim:
        raise ModelError(
            f"encoder frames have shape {frames.shape}; this model's joiner expects "
            f"[T, {joiner_dim}]"
        )


class ReplayBackend(DelegatingBackend):
    """Encoder chunks come from `frames`; decode/join go to the real `inner` backend."""

    def __init__(self, inner: Backend, frames: FloatArray) -> None:
        check_frames(frames, inner.joiner_dim)
        super().__init__(inner)
        self.name = "replay"
        self.frames = frames

    def init_state(self) -> EncoderState:
        return {"position": 0}

    def run_chunk(self, feats: FloatArray, state: EncoderState) -> tuple[FloatArray, EncoderState]:
        """The next frames_out replayed frames; none once the recording is exhausted."""
        start = int(state["position"])
        end = start + self.chunk.frames_out
        return self.frames[start:end], {"position": end}
