"""The interface every backend implements.

The search only ever calls `decode` and `join`; the streaming front end only calls
`init_state` and `run_chunk`. Keeping the surface this small is what lets the CoreML
backend stay a thin adapter and lets tests swap in a replay encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

# Opaque per-stream encoder state. Each backend decides what is inside; callers only
# pass it back. A new stream (a new file, a Wyoming connection) gets its own.
EncoderState = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChunkSpec:
    """How the encoder consumes feature frames (docs/algorithm.md §2)."""

    frames_in: int = 45  # feature frames per encoder call
    frames_shift: int = 32  # feature frames the stream advances per call
    frames_out: int = 8  # encoder frames produced per call
    frame_seconds: float = 0.04  # duration of one encoder output frame


@dataclass(frozen=True, slots=True)
class ModelDefaults:
    """Search defaults that travel with a model (upstream sherpa or the CoreML config.json)."""

    threshold: float = 0.25
    boost: float = 1.0
    num_trailing_blanks: int = 1
    auto_reset_seconds: float = 1.5


@runtime_checkable
class Backend(Protocol):
    """A streaming transducer: encoder chunks plus a stateless decoder/joiner."""

    name: str
    chunk: ChunkSpec
    joiner_dim: int
    vocab_size: int
    blank_id: int
    context_size: int
    defaults: ModelDefaults

    def init_state(self) -> EncoderState:
        """Fresh encoder state for a new stream."""
        ...

    def run_chunk(self, feats: FloatArray, state: EncoderState) -> tuple[FloatArray, EncoderState]:
        """feats [frames_in, 80] -> (encoder frames [frames_out, joiner_dim], next state)."""
        ...

    def decode(self, contexts: IntArray) -> FloatArray:
        """contexts [B, context_size] token ids (-1 = none) -> decoder out [B, joiner_dim]."""
        ...

    def join(self, enc: FloatArray, dec: FloatArray) -> FloatArray:
        """enc [B, joiner_dim], dec [B, joiner_dim] -> logits [B, vocab_size]."""
        ...


@runtime_checkable
class BatchBackend(Backend, Protocol):
    """A backend whose encoder can run several streams' chunks in one call.

    `StreamBatch` uses it when `can_batch` is true; a backend without it (CoreML, whose
    compiled models take one stream, or a replay backend) gets one `run_chunk` call per
    stream instead. Each stream's state stays a separate `EncoderState`, so streams can
    join, leave and be batched with different partners from one chunk to the next.
    """

    can_batch: bool

    def run_batch(
        self, feats: FloatArray, states: Sequence[EncoderState]
    ) -> tuple[FloatArray, list[EncoderState]]:
        """feats [N, frames_in, 80] and N states -> (encoder frames [N, frames_out,
        joiner_dim], the N next states)."""
        ...


class DelegatingBackend:
    """A backend that forwards everything to `inner`; subclasses override one part.

    Used to replay recorded encoder frames through the real decoder/joiner, and by the
    benchmarks to time the encoder, without repeating the model attributes each time.
    It deliberately has no `run_batch`: a subclass that replaces `run_chunk` would
    otherwise be bypassed by batched encoding.
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name
        self.chunk = inner.chunk
        self.joiner_dim = inner.joiner_dim
        self.vocab_size = inner.vocab_size
        self.blank_id = inner.blank_id
        self.context_size = inner.context_size
        self.defaults = inner.defaults

    def init_state(self) -> EncoderState:
        return self.inner.init_state()

    def run_chunk(self, feats: FloatArray, state: EncoderState) -> tuple[FloatArray, EncoderState]:
        return self.inner.run_chunk(feats, state)

    def decode(self, contexts: IntArray) -> FloatArray:
        return self.inner.decode(contexts)

    def join(self, enc: FloatArray, dec: FloatArray) -> FloatArray:
        return self.inner.join(enc, dec)
