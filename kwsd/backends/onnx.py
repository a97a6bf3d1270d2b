"""ONNX Runtime backend.

Everything about the encoder's streaming state is read from the model itself (input
names, shapes, dtypes, metadata), so the same code runs the real Zipformer2 export,
the synthetic signature model and the GRU stand-in without special cases.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from kwsd.backends.base import ChunkSpec, EncoderState, FloatArray, IntArray, ModelDefaults
from kwsd.errors import ModelError

_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float16)": np.float16,
}


# Joiner calls of up to this many rows (one stream's paths) run on buffers bound once
# (`_JoinerBinding`); bigger ones (a `StreamBatch` of many streams) take the plain call.
BOUND_JOINER_ROWS = 8


def _session(path: Path, num_threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = num_threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelError(
            f"cannot load {path}: {exc}. The file is missing or damaged: run "
            "`kwsd models verify` and `kwsd models pull --force`"
        ) from exc


def batch_axes(x: Any, states: Sequence[Any]) -> dict[str, int] | None:
    """Where each state input keeps its streams, read from the model's declared shapes.

    The batch dimension is the symbolic first dimension of `x` (e.g. 'N'); each state
    must carry the same symbol exactly once. Its position differs between models and
    even between the states of one model (Zipformer2: axis 1 for `cached_key_0
    [64, N, 128]`, axis 0 for `cached_conv1_0 [N, 128, 15]`; the GRU stand-in: axis 1
    for `cached_gru [3, N, 512]`), so it is never assumed. None when the model does not
    declare it (fixed or unnamed dimensions): its streams then run one at a time.
    """
    symbol = x.shape[0] if x.shape else None
    if not isinstance(symbol, str) or not symbol:
        return None
    axes: dict[str, int] = {}
    for arg in states:
        found = [axis for axis, dim in enumerate(arg.shape) if dim == symbol]
        if len(found) != 1:
            return None
        axes[arg.name] = found[0]
    return axes


def _zeros(arg: Any) -> np.ndarray[Any, Any]:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
    dtype = _DTYPES.get(arg.type)
    if dtype is None:
        raise ModelError(f"encoder input {arg.name!r} has unsupported type {arg.type}")
    return np.zeros(shape, dtype=dtype)


class _JoinerBinding:
    """The joiner's inputs and output bound once to numpy buffers of one row count.

    The search calls the joiner once per encoder frame with a few rows; through
    `InferenceSession.run` every call builds a feed dict and wraps inputs and output
    anew, which costs more than the int8 joiner's arithmetic. Bound buffers cut the
    call to two copies in and one out (about 40 % of it). ORT writes the same values
    either way: the graph and its inputs are the same.
    """

    __slots__ = ("binding", "dec", "enc", "out")

    def __init__(self, session: ort.InferenceSession, rows: int, dim: int, vocab: int) -> None:
        self.enc = np.empty((rows, dim), np.float32)
        self.dec = np.empty((rows, dim), np.float32)
        self.out = np.empty((rows, vocab), np.float32)
        self.binding = session.io_binding()
        enc_name, dec_name = (arg.name for arg in session.get_inputs())
        self.binding.bind_ortvalue_input(enc_name, ort.OrtValue.ortvalue_from_numpy(self.enc))
        self.binding.bind_ortvalue_input(dec_name, ort.OrtValue.ortvalue_from_numpy(self.dec))
        self.binding.bind_ortvalue_output(
            session.get_outputs()[0].name, ort.OrtValue.ortvalue_from_numpy(self.out)
        )


class OnnxBackend:
    name = "onnx"

    def __init__(
        self,
        encoder: Path,
        decoder: Path,
        joiner: Path,
        *,
        num_threads: int = 1,
        defaults: ModelDefaults | None = None,
    ) -> None:
        self.encoder_path = encoder
        self._enc = _session(encoder, num_threads)
        self._dec = _session(decoder, num_threads)
        self._join = _session(joiner, num_threads)
        self.defaults = defaults or ModelDefaults()

        inputs = {i.name: i for i in self._enc.get_inputs()}
        outputs = [o.name for o in self._enc.get_outputs()]
        if "x" not in inputs or "encoder_out" not in outputs:
            raise ModelError(
                f"{encoder} is not a streaming KWS encoder (needs input `x` and output "
                f"`encoder_out`; has inputs {sorted(inputs)})"
            )
        self._state_names = [n for n in inputs if n != "x"]
        missing = [n for n in self._state_names if f"new_{n}" not in outputs]
        if missing:
            raise ModelError(f"{encoder}: state inputs without a new_<name> output: {missing}")
        self._state_inputs = [inputs[n] for n in self._state_names]
        self._outputs = ["encoder_out", *(f"new_{n}" for n in self._state_names)]
        self.batch_axes = batch_axes(inputs["x"], self._state_inputs)
        self.can_batch = self.batch_axes is not None

        meta = self._enc.get_modelmeta().custom_metadata_map
        frames_in = int(
            meta.get("T", inputs["x"].shape[1] if isinstance(inputs["x"].shape[1], int) else 45)
        )
        shift = int(meta.get("decode_chunk_len", 32))
        out_shape = self._enc.get_outputs()[0].shape
        frames_out = out_shape[1] if isinstance(out_shape[1], int) else shift // 4
        self.chunk = ChunkSpec(
            frames_in=frames_in,
            frames_shift=shift,
            frames_out=frames_out,
            frame_seconds=shift * 0.01 / frames_out,
        )
        self.metadata = dict(meta)

        dec_meta = self._dec.get_modelmeta().custom_metadata_map
        self.context_size = int(dec_meta.get("context_size", 2))
        self.vocab_size = int(dec_meta.get("vocab_size", self._join.get_outputs()[0].shape[1]))
        self.joiner_dim = int(self._join.get_inputs()[0].shape[1])
        self.blank_id = 0
        self._dec_in = self._dec.get_inputs()[0].name
        self._join_in = [i.name for i in self._join.get_inputs()]
        self._join_out = [o.name for o in self._join.get_outputs()]
        vocab = self._join.get_outputs()[0].shape[1]
        # Bound buffers need the output's width up front, and each thread its own.
        self._join_vocab = vocab if isinstance(vocab, int) and len(self._join_in) == 2 else None
        self._join_local = threading.local()

    def init_state(self) -> EncoderState:
        return {arg.name: _zeros(arg) for arg in self._state_inputs}

    def run_chunk(self, feats: FloatArray, state: EncoderState) -> tuple[FloatArray, EncoderState]:
        feed = dict(state)
        feed["x"] = np.ascontiguousarray(feats[None], dtype=np.float32)
        out = self._enc.run(self._outputs, feed)
        return out[0][0], dict(zip(self._state_names, out[1:], strict=True))

    def run_batch(
        self, feats: FloatArray, states: Sequence[EncoderState]
    ) -> tuple[FloatArray, list[EncoderState]]:
        """Several streams' chunks in one encoder call (see `BatchBackend`)."""
        axes = self.batch_axes
        if axes is None:
            raise ModelError(
                f"{self.encoder_path} declares no batch dimension for its states; "
                "its streams run one at a time"
            )
        count = len(states)
        feed = {
            name: np.concatenate([state[name] for state in states], axis=axis)
            for name, axis in axes.items()
        }
        feed["x"] = np.ascontiguousarray(feats, dtype=np.float32)
        out = self._enc.run(self._outputs, feed)
        # Each stream keeps a compact copy of its own slice: a view would keep the whole
        # batch's arrays alive, and the next batch may pair it with other streams.
        parts = {
            name: [np.ascontiguousarray(p) for p in np.split(value, count, axis=axes[name])]
            for name, value in zip(self._state_names, out[1:], strict=True)
        }
        next_states = [{name: parts[name][i] for name in self._state_names} for i in range(count)]
        return out[0], next_states

    def decode(self, contexts: IntArray) -> FloatArray:
        out: FloatArray = self._dec.run(None, {self._dec_in: contexts.astype(np.int64)})[0]
        return out

    def join(self, enc: FloatArray, dec: FloatArray) -> FloatArray:
        rows = len(enc)
        vocab = self._join_vocab
        if vocab is None or not 0 < rows <= BOUND_JOINER_ROWS:
            feed = {self._join_in[0]: enc, self._join_in[1]: dec}
            out: FloatArray = self._join.run(self._join_out, feed)[0]
            return out
        bindings: dict[int, _JoinerBinding] | None = getattr(self._join_local, "bindings", None)
        if bindings is None:
            bindings = self._join_local.bindings = {}
        bound = bindings.get(rows)
        if bound is None:
            bound = bindings[rows] = _JoinerBinding(self._join, rows, self.joiner_dim, vocab)
        bound.enc[...] = enc
        bound.dec[...] = dec
        self._join.run_with_iobinding(bound.binding)
        return bound.out.copy()  # the buffer is overwritten by this thread's next call
