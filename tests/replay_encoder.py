"""A replay encoder as an ONNX model: what lets sherpa-onnx decode recorded encoder frames.

sherpa-onnx only takes an encoder file with the real export's streaming signature, and
neither of the encoders available here will do: it cannot load the stand-in (a GRU
with other state tensors), and the synthetic one recognises nothing. So this builds an
encoder whose inputs, outputs, shapes, dtypes and metadata are copied from the
synthetic encoder (itself a copy of the real export's signature) and whose
`encoder_out` for a feature chunk is the recorded block that `kwsd.backends.replay`'s
`ReplayTable` holds for it: the chunk is projected on the table's fixed directions,
the nearest recorded key wins (ArgMin inside the graph), and a chunk farther than
`SAME_CHUNK_RMS` from every key gets the table's fallback block.

The states pass through unchanged (`processed_lens` counts +16 per call, as the real
export's does) and play no part in the output: sherpa-onnx zeroes them after every
detection, and the frames must not start over when it does.

Used by tests/test_parity_sherpa.py and bench/engine.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kwsd.backends.base import FloatArray
from kwsd.backends.replay import ReplayTable

OPSET = 13


def signature_source(assets: Path) -> Path:
    """The encoder whose I/O signature and metadata the replay encoder copies."""
    return assets / "synthetic" / "encoder-synthetic.onnx"


@dataclass(frozen=True, slots=True)
class _Signature:
    source: onnx.ModelProto
    inputs: list[onnx.ValueInfoProto]
    outputs: list[onnx.ValueInfoProto]
    frames_in: int
    mel_bins: int


def _signature(path: Path) -> _Signature:
    source = onnx.load(str(path), load_external_data=False)
    inputs, outputs = list(source.graph.input), list(source.graph.output)
    names = [i.name for i in inputs]
    expected = ["encoder_out", *(f"new_{n}" for n in names[1:])]
    if names[0] != "x" or [o.name for o in outputs] != expected:
        raise ValueError(f"{path}: not x + states -> encoder_out + new_<state> per state")
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    return _Signature(source, inputs, outputs, dims[1], dims[2])


def _assemble(
    sig: _Signature, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], doc: str
) -> onnx.ModelProto:
    """`nodes` compute encoder_out; every state passes through (processed_lens + 16, as
    the real export counts it) and the metadata is the signature's, word for word."""
    nodes = list(nodes)
    inits = [*inits, numpy_helper.from_array(np.array(16, np.int64), "lens_step")]
    for state in sig.inputs[1:]:
        out = f"new_{state.name}"
        if state.name == "processed_lens":
            nodes.append(helper.make_node("Add", [state.name, "lens_step"], [out]))
        else:
            nodes.append(helper.make_node("Identity", [state.name], [out]))
    graph = helper.make_graph(
        nodes, "replay_encoder", sig.inputs, sig.outputs, initializer=inits, doc_string=doc
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = sig.source.ir_version
    del model.metadata_props[:]
    model.metadata_props.extend(sig.source.metadata_props)
    onnx.checker.check_model(model)
    return model


def build_replay_encoder(table: ReplayTable, signature: Path) -> onnx.ModelProto:
    """The ONNX replay encoder for `table`, with `signature`'s inputs, outputs and metadata."""
    sig = _signature(signature)
    if table.projection.shape[0] != sig.frames_in * sig.mel_bins:
        raise ValueError(
            f"table keys {table.projection.shape[0]} features, the encoder takes "
            f"{sig.frames_in}x{sig.mel_bins}"
        )
    # Row M (one past the recorded blocks) is the fallback for unknown chunks.
    all_blocks = np.concatenate([table.blocks, table.fallback[None]]).astype(np.float32)
    inits = [
        numpy_helper.from_array(table.projection.astype(np.float32), "key_projection"),
        numpy_helper.from_array(table.keys.astype(np.float32), "keys"),
        numpy_helper.from_array(all_blocks, "blocks"),
        numpy_helper.from_array(np.array([-1, sig.frames_in * sig.mel_bins], np.int64), "flat"),
        numpy_helper.from_array(np.array([1], np.int64), "axis_1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis_2"),
        numpy_helper.from_array(np.array(table.max_distance, np.float32), "max_distance"),
        numpy_helper.from_array(np.array(len(table.blocks), np.int64), "fallback_row"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["x_flat"]),
        helper.make_node("MatMul", ["x_flat", "key_projection"], ["query"]),  # [N, K]
        helper.make_node("Unsqueeze", ["query", "axis_1"], ["query_3d"]),  # [N, 1, K]
        helper.make_node("Sub", ["query_3d", "keys"], ["diff"]),  # [N, M, K]
        helper.make_node("Mul", ["diff", "diff"], ["diff_sq"]),
        helper.make_node("ReduceSum", ["diff_sq", "axis_2"], ["dist"], keepdims=0),  # [N, M]
        helper.make_node("ArgMin", ["dist"], ["nearest"], axis=1, keepdims=0),
        helper.make_node("ReduceMin", ["dist"], ["nearest_dist"], axes=[1], keepdims=0),
        helper.make_node("LessOrEqual", ["nearest_dist", "max_distance"], ["known"]),
        helper.make_node("Where", ["known", "nearest", "fallback_row"], ["row"]),
        helper.make_node("Gather", ["blocks", "row"], ["encoder_out"], axis=0),
    ]
    return _assemble(sig, nodes, inits, "Replays recorded encoder frames keyed by chunk content.")


def build_position_replay_encoder(
    blocks: FloatArray, fallback: FloatArray, signature: Path
) -> onnx.ModelProto:
    """The naive replay: block k for the k-th call, counted by `processed_lens` (16 per
    call), `fallback` past the end. It exists to show why the parity encoder is keyed by
    content: sherpa-onnx zeroes processed_lens after a detection, and this one then
    replays the recording from its start again."""
    sig = _signature(signature)
    all_blocks = np.concatenate([blocks, fallback[None]]).astype(np.float32)
    inits = [
        numpy_helper.from_array(all_blocks, "blocks"),
        numpy_helper.from_array(np.array(16, np.int64), "per_call"),
        numpy_helper.from_array(np.array(len(blocks), np.int64), "fallback_row"),
    ]
    nodes = [
        helper.make_node("Div", ["processed_lens", "per_call"], ["call"]),
        helper.make_node("Min", ["call", "fallback_row"], ["row"]),
        helper.make_node("Gather", ["blocks", "row"], ["encoder_out"], axis=0),
    ]
    return _assemble(sig, nodes, inits, "Replays recorded encoder frames by call count.")


def write_replay_encoder(table: ReplayTable, signature: Path, path: Path) -> Path:
    onnx.save(build_replay_encoder(table, signature), str(path))
    return path


def write_position_replay_encoder(
    blocks: FloatArray, fallback: FloatArray, signature: Path, path: Path
) -> Path:
    onnx.save(build_position_replay_encoder(blocks, fallback, signature), str(path))
    return path


def same_signature(a: Path, b: Path) -> bool:
    """Whether two encoder files declare identical inputs, outputs and metadata."""
    ma, mb = (onnx.load(str(p), load_external_data=False) for p in (a, b))

    def io(m: onnx.ModelProto) -> list[bytes]:
        return [v.SerializeToString() for v in (*m.graph.input, *m.graph.output)]

    def meta(m: onnx.ModelProto) -> dict[str, str]:
        return {p.key: p.value for p in m.metadata_props}

    return io(ma) == io(mb) and meta(ma) == meta(mb)
