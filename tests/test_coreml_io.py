"""The CoreML backend against a fake that enforces the real bundle's I/O contract.

Only the macOS CoreML `predict` call is faked. The fake is built from a config.json
written here from docs/algorithm.md §3, with layer-state shapes taken from the synthetic
encoder (which carries the real export's signature) at batch 1. It rejects any input whose
name, dtype or shape differs from what the real CoreML model declares, and answers with
float16 tensors the way the published bundle does.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import soundfile as sf
from structlog.testing import capture_logs

from kwsd.backends.base import Backend, ChunkSpec, ModelDefaults
from kwsd.backends.coreml import CoreMLBackend, Predictor
from kwsd.backends.coreml_io import load_config, parse_config
from kwsd.errors import ConfigError, ModelError
from kwsd.model.bundle import Layout, ModelBundle

VOCAB = 500
DIM = 320
FRAMES_IN = 45
FRAMES_OUT = 8
MEL = 80


def _assets() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "kws-assets"
    return Path(os.environ.get("KWSD_ASSETS", default))


@pytest.fixture(scope="module")
def synthetic_shapes() -> dict[str, list[int]]:
    """State input shapes the real ONNX export declares, with the batch axis set to 1."""
    path = _assets() / "synthetic" / "encoder-synthetic.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {
        i.name: [1 if isinstance(d, str) else int(d) for d in i.shape]
        for i in session.get_inputs()
        if i.name not in {"x", "processed_lens"}
    }


@pytest.fixture
def config(synthetic_shapes: dict[str, list[int]]) -> dict[str, Any]:
    """config.json as docs/algorithm.md §3 describes the published bundle."""
    layer = {k: v for k, v in synthetic_shapes.items() if k != "embed_states"}
    return {
        "modelName": "kws-zipformer-gigaspeech",
        "source": "icefall-kws-zipformer-gigaspeech-20240219",
        "checkpoint": "finetune",
        "language": "en",
        "license": "Apache-2.0",
        "feature": {
            "type": "kaldi-fbank",
            "sampleRate": 16000,
            "numMelBins": 80,
            "frameLengthMs": 25.0,
            "frameShiftMs": 10.0,
            "dither": 0.0,
            "snipEdges": False,
            "normalizeSamples": True,
            "highFreq": -400.0,
        },
        "encoder": {
            "chunkSize": 16,
            "leftContextFrames": 64,
            "totalInputFrames": 45,
            "outputFrames": 8,
            "joinerDim": 320,
            "layerStateNames": list(layer),
            "layerStateShapes": list(layer.values()),
            "cachedEmbedLeftPadShape": synthetic_shapes["embed_states"],
        },
        "decoder": {"vocabSize": 500, "blankId": 0, "contextSize": 2, "decoderDim": 320},
        "kws": {
            "defaultThreshold": 0.15,
            "defaultContextScore": 0.5,
            "defaultNumTrailingBlanks": 1,
            "autoResetSeconds": 1.5,
        },
    }


# --------------------------------------------------------------------------- the fake


def _expect(inputs: Mapping[str, Any], name: str, dtype: type[Any], shape: tuple[int, ...]) -> Any:
    """Fail the way CoreML would: wrong type or shape is a prediction error."""
    value = inputs[name]
    assert isinstance(value, np.ndarray), f"{name}: {type(value).__name__}, not an ndarray"
    assert value.dtype == np.dtype(dtype), f"{name}: dtype {value.dtype}, model wants {dtype}"
    assert value.shape == shape, f"{name}: shape {value.shape}, model wants {shape}"
    return value


@dataclass
class FakeCoreML:
    """Three 'compiled models' honouring config.json the way the real bundle does."""

    config: dict[str, Any]
    omit: set[str] = field(default_factory=set)  # encoder outputs the model does not return
    decoder_dim: int = DIM
    calls: dict[str, int] = field(default_factory=lambda: {"encoder": 0, "decoder": 0, "joiner": 0})
    loaded: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(7)
        self.w_enc = rng.standard_normal((MEL, DIM)).astype(np.float32) * 0.05
        self.embed = rng.standard_normal((VOCAB, self.decoder_dim)).astype(np.float32) * 0.3
        self.w_out = rng.standard_normal((DIM, VOCAB)).astype(np.float32) * 0.2
        enc = self.config["encoder"]
        self.layer = dict(zip(enc["layerStateNames"], enc["layerStateShapes"], strict=True))
        self.pad_shape = tuple(enc["cachedEmbedLeftPadShape"])

    def factory(self, path: Path, compute_units: str) -> Predictor:
        self.loaded.append((path.name, compute_units))
        part = path.name.split(".")[0]
        return {"encoder": self.encoder, "decoder": self.decoder, "joiner": self.joiner}[part]

    # The reference computations, shared by the fake and the expectations of the tests.
    def encoder_frames(self, x: npt.NDArray[np.float32], key0_mean: float) -> Any:
        row = np.tanh(x.mean(axis=0) @ self.w_enc + key0_mean)
        return np.repeat(row[None, :], FRAMES_OUT, axis=0).astype(np.float16)

    def decoder_row(self, y: tuple[int, int]) -> Any:
        return (self.embed[y[0]] + self.embed[y[1]]).astype(np.float16)

    def logits_row(self, enc16: Any, dec16: Any) -> Any:
        hidden = np.tanh(enc16.astype(np.float32) + dec16.astype(np.float32))
        return (hidden @ self.w_out).astype(np.float16)

    def encoder(self, inputs: dict[str, Any]) -> Mapping[str, Any]:
        self.calls["encoder"] += 1
        expected = {"x", "cached_embed_left_pad", "processed_lens", *self.layer}
        assert set(inputs) == expected, f"encoder inputs differ: {set(inputs) ^ expected}"
        x = _expect(inputs, "x", np.float32, (1, FRAMES_IN, MEL))
        lens = _expect(inputs, "processed_lens", np.int32, (1,))
        pad = _expect(inputs, "cached_embed_left_pad", np.float32, self.pad_shape)
        states = {n: _expect(inputs, n, np.float32, tuple(s)) for n, s in self.layer.items()}
        first = next(iter(self.layer))
        out: dict[str, Any] = {
            "encoder_out": self.encoder_frames(x[0], float(states[first].mean()))[None],
            "new_cached_embed_left_pad": (pad + 1).astype(np.float16),
            "new_processed_lens": (lens + 16).astype(np.int32),
        }
        for name, value in states.items():
            out[f"new_{name}"] = (value + 1).astype(np.float16)
        return {k: v for k, v in out.items() if k not in self.omit}

    def decoder(self, inputs: dict[str, Any]) -> Mapping[str, Any]:
        self.calls["decoder"] += 1
        assert set(inputs) == {"y"}
        y = _expect(inputs, "y", np.int32, (1, 2))
        assert (y >= 0).all() and (y < VOCAB).all(), f"y out of range: {y}"
        return {"decoder_out": self.decoder_row((int(y[0, 0]), int(y[0, 1])))[None]}

    def joiner(self, inputs: dict[str, Any]) -> Mapping[str, Any]:
        self.calls["joiner"] += 1
        assert set(inputs) == {"encoder_out", "decoder_out"}
        enc = _expect(inputs, "encoder_out", np.float16, (1, DIM))
        dec = _expect(inputs, "decoder_out", np.float16, (1, DIM))
        return {"logits": self.logits_row(enc[0], dec[0])[None]}


def make_bundle(
    root: Path, config: dict[str, Any], *, embed_config: bool = True, layout: Layout = "coreml"
) -> ModelBundle:
    """A CoreML bundle directory; the .mlmodelc dirs are empty because only the fake reads them."""
    for part in ("encoder", "decoder", "joiner"):
        (root / f"{part}.mlmodelc").mkdir(exist_ok=True)
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return ModelBundle(
        layout=layout,
        root=root,
        encoder=root / "encoder.mlmodelc",
        decoder=root / "decoder.mlmodelc",
        joiner=root / "joiner.mlmodelc",
        tokens=root / "tokens.txt",
        bpe_model=root / "bpe.model",
        config=config if embed_config else None,
    )


def make_backend(
    tmp_path: Path, config: dict[str, Any], **fake_args: Any
) -> tuple[CoreMLBackend, FakeCoreML]:
    fake = FakeCoreML(config, **fake_args)
    backend = CoreMLBackend(
        make_bundle(tmp_path, config), compute_units="cpu_and_ne", predictor_factory=fake.factory
    )
    return backend, fake


def feats_for(k: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(100 + k)
    return rng.standard_normal((FRAMES_IN, MEL)).astype(np.float32)


# --------------------------------------------------------------------------- config.json


def test_config_maps_to_chunk_spec_and_defaults(tmp_path: Path, config: dict[str, Any]) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    cfg = load_config(path)
    assert cfg.chunk == ChunkSpec(frames_in=45, frames_shift=32, frames_out=8, frame_seconds=0.04)
    assert cfg.defaults == ModelDefaults(
        threshold=0.15, boost=0.5, num_trailing_blanks=1, auto_reset_seconds=1.5
    )
    assert len(cfg.layer_states) == 36
    assert cfg.layer_states[0].name == config["encoder"]["layerStateNames"][0]
    assert [list(s.shape) for s in cfg.layer_states] == config["encoder"]["layerStateShapes"]
    assert cfg.embed_pad_shape == (1, 128, 3, 19)
    assert (cfg.vocab_size, cfg.blank_id, cfg.context_size, cfg.joiner_dim) == (500, 0, 2, 320)


def test_config_state_layout_is_read_not_assumed(config: dict[str, Any]) -> None:
    """A re-export with other caches must be followed, not forced into six layers."""
    config["encoder"]["layerStateNames"] = ["only_cache"]
    config["encoder"]["layerStateShapes"] = [[2, 1, 3]]
    cfg = parse_config(config)
    assert [(s.name, s.shape) for s in cfg.layer_states] == [("only_cache", (2, 1, 3))]


def test_missing_kws_section_falls_back_to_upstream_defaults(config: dict[str, Any]) -> None:
    del config["kws"]
    del config["feature"]
    assert parse_config(config).defaults == ModelDefaults()


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    node = config
    for key in path:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()

BAD_CONFIGS = [
    ("encoder", _DELETE, "'encoder'"),
    ("decoder", [1, 2], "'decoder'"),
    ("encoder.layerStateNames", "cached_key_0", "'encoder.layerStateNames'"),
    ("encoder.layerStateNames", [], "'encoder.layerStateNames'"),
    ("encoder.layerStateShapes", [[1, 2]], "'encoder.layerStateShapes'"),
    ("encoder.cachedEmbedLeftPadShape", [1, 0, 3, 19], "'encoder.cachedEmbedLeftPadShape'"),
    ("encoder.cachedEmbedLeftPadShape", _DELETE, "'encoder.cachedEmbedLeftPadShape'"),
    ("encoder.chunkSize", "16", "'encoder.chunkSize'"),
    ("encoder.chunkSize", True, "'encoder.chunkSize'"),
    ("encoder.totalInputFrames", 20, "'encoder.totalInputFrames'"),
    ("encoder.outputFrames", 0, "'encoder.outputFrames'"),
    ("decoder.vocabSize", _DELETE, "'decoder.vocabSize'"),
    ("decoder.blankId", 500, "'decoder.blankId'"),
    ("decoder.decoderDim", 256, "'decoder.decoderDim'"),
    ("decoder.contextSize", 0, "'decoder.contextSize'"),
    ("kws.defaultThreshold", 1.5, "'kws.defaultThreshold'"),
    ("kws.defaultContextScore", "high", "'kws.defaultContextScore'"),
    ("kws.autoResetSeconds", 0, "'kws.autoResetSeconds'"),
    ("feature.numMelBins", 64, "'feature.numMelBins'"),
    ("feature.sampleRate", 8000, "'feature.sampleRate'"),
    ("modelName", 3, "'modelName'"),
]


@pytest.mark.parametrize(("key", "value", "named"), BAD_CONFIGS)
def test_bad_config_names_file_and_key(
    tmp_path: Path, config: dict[str, Any], key: str, value: Any, named: str
) -> None:
    _set(config, key, value)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(ModelError) as err:
        load_config(path)
    message = str(err.value)
    assert "config.json" in message
    assert named in message
    assert "kwsd models pull --backend coreml" in message


@pytest.mark.parametrize(
    ("index", "bad", "named"),
    [
        (3, [64, 1, -128], "'encoder.layerStateShapes[3]'"),
        (5, "big", "'encoder.layerStateShapes[5]'"),
        (7, [], "'encoder.layerStateShapes[7]'"),
    ],
)
def test_bad_state_shape_entry_is_named(
    config: dict[str, Any], index: int, bad: Any, named: str
) -> None:
    config["encoder"]["layerStateShapes"][index] = bad
    with pytest.raises(ModelError, match=named.replace("[", r"\[").replace("]", r"\]")):
        parse_config(config)


@pytest.mark.parametrize(
    ("name", "flagged"),
    [("x", 0), ("processed_lens", 0), ("cached_embed_left_pad", 0), ("cached_key_1", 6)],
)
def test_state_name_clashing_with_another_input_is_refused(
    config: dict[str, Any], name: str, flagged: int
) -> None:
    """Reserved names are flagged where they appear; a duplicate at its second use."""
    config["encoder"]["layerStateNames"][0] = name
    with pytest.raises(ModelError, match=rf"layerStateNames\[{flagged}\]' repeats"):
        parse_config(config)


def test_absurd_state_size_is_refused(config: dict[str, Any]) -> None:
    config["encoder"]["layerStateShapes"][0] = [100_000, 1, 100_000]
    with pytest.raises(ModelError, match="implausible"):
        parse_config(config)


@pytest.mark.parametrize(
    ("content", "needle"),
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), (None, "no config.json")],
)
def test_unreadable_config_file(tmp_path: Path, content: str | None, needle: str) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ModelError, match=needle) as err:
        load_config(path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- the backend


def test_backend_satisfies_protocol_and_reads_config(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    backend, fake = make_backend(tmp_path, config)
    typed: Backend = backend  # mypy checks the protocol statically, isinstance at runtime
    assert isinstance(typed, Backend)
    assert backend.name == "coreml"
    assert backend.chunk.frames_in == 45 and backend.chunk.frames_shift == 32
    assert (backend.vocab_size, backend.blank_id, backend.context_size) == (500, 0, 2)
    assert backend.joiner_dim == 320
    assert backend.defaults.threshold == 0.15 and backend.defaults.boost == 0.5
    assert sorted(fake.loaded) == [
        ("decoder.mlmodelc", "cpu_and_ne"),
        ("encoder.mlmodelc", "cpu_and_ne"),
        ("joiner.mlmodelc", "cpu_and_ne"),
    ]
    # The load-time self-check ran each model once.
    assert fake.calls == {"encoder": 1, "decoder": 1, "joiner": 1}


def test_initial_state_types(tmp_path: Path, config: dict[str, Any]) -> None:
    backend, _ = make_backend(tmp_path, config)
    state = backend.init_state()
    names = config["encoder"]["layerStateNames"]
    assert set(state) == {*names, "cached_embed_left_pad", "processed_lens"}
    for name, shape in zip(names, config["encoder"]["layerStateShapes"], strict=True):
        assert state[name].shape == tuple(shape) and state[name].dtype == np.float32
        assert not state[name].any()
    assert state["cached_embed_left_pad"].shape == (1, 128, 3, 19)
    assert state["processed_lens"].dtype == np.int32 and state["processed_lens"].tolist() == [0]


def test_state_feeds_back_over_chunks(tmp_path: Path, config: dict[str, Any]) -> None:
    backend, fake = make_backend(tmp_path, config)
    state = backend.init_state()
    first = config["encoder"]["layerStateNames"][0]
    for k in range(1, 5):
        feats = feats_for(k)
        enc, state = backend.run_chunk(feats, state)
        # fp16 model output arrives as float32 with exactly the fp16 values.
        assert enc.dtype == np.float32 and enc.shape == (8, 320)
        expected = fake.encoder_frames(feats, float(k - 1)).astype(np.float32)
        np.testing.assert_array_equal(enc, expected)
        assert state["processed_lens"].tolist() == [16 * k]
        assert state["processed_lens"].dtype == np.int32
        for name in (*config["encoder"]["layerStateNames"], "cached_embed_left_pad"):
            assert state[name].dtype == np.float32, name
            assert (state[name] == k).all(), name
        assert state[first].shape == tuple(config["encoder"]["layerStateShapes"][0])


def test_run_chunk_leaves_callers_state_untouched(tmp_path: Path, config: dict[str, Any]) -> None:
    backend, _ = make_backend(tmp_path, config)
    state = backend.init_state()
    snapshot = copy.deepcopy(state)
    _, nxt = backend.run_chunk(feats_for(0), state)
    assert nxt is not state
    for name, value in snapshot.items():
        np.testing.assert_array_equal(state[name], value)


def test_missing_new_output_keeps_state_and_logs(tmp_path: Path, config: dict[str, Any]) -> None:
    frozen = config["encoder"]["layerStateNames"][10]
    backend, _ = make_backend(tmp_path, config, omit={f"new_{frozen}"})
    state = backend.init_state()
    state[frozen] = np.full_like(state[frozen], 0.5)  # a carried-over, non-initial value
    with capture_logs() as logs:
        for _ in range(3):
            _, state = backend.run_chunk(feats_for(1), state)
    assert (state[frozen] == 0.5).all()
    other = config["encoder"]["layerStateNames"][11]
    assert (state[other] == 3).all()
    assert state["processed_lens"].tolist() == [48]
    missing = [e for e in logs if e["event"] == "coreml_state_output_missing"]
    assert missing and missing[0]["log_level"] == "debug"
    assert missing[0]["outputs"] == [f"new_{frozen}"]


def test_missing_processed_lens_output_keeps_count(tmp_path: Path, config: dict[str, Any]) -> None:
    backend, _ = make_backend(tmp_path, config, omit={"new_processed_lens"})
    state = backend.init_state()
    state["processed_lens"] = np.array([32], dtype=np.int32)
    _, state = backend.run_chunk(feats_for(1), state)
    assert state["processed_lens"].tolist() == [32]


def test_missing_encoder_out_is_a_clear_error(tmp_path: Path, config: dict[str, Any]) -> None:
    with pytest.raises(ModelError, match="encoder returned no 'encoder_out'"):
        make_backend(tmp_path, config, omit={"encoder_out"})


def test_model_config_mismatch_fails_at_load(tmp_path: Path, config: dict[str, Any]) -> None:
    """config.json promising 320-dim decoder output for a model giving 256 is caught early."""
    with pytest.raises(ModelError, match="'decoder_out' has shape") as err:
        make_backend(tmp_path, config, decoder_dim=256)
    assert "do not match" in str(err.value)


def test_decode_batches_and_clamps_negative_ids(tmp_path: Path, config: dict[str, Any]) -> None:
    backend, fake = make_backend(tmp_path, config)
    contexts = np.array([[-1, 0], [5, 7], [-1, -1], [499, 3]], dtype=np.int64)
    out = backend.decode(contexts)
    assert out.dtype == np.float32 and out.shape == (4, 320)
    for row, (a, b) in zip(out, [(0, 0), (5, 7), (0, 0), (499, 3)], strict=True):
        np.testing.assert_array_equal(row, fake.decoder_row((a, b)).astype(np.float32))
    assert backend.decode(np.zeros((0, 2), np.int64)).shape == (0, 320)


def test_decode_rejects_wrong_context_shape(tmp_path: Path, config: dict[str, Any]) -> None:
    backend, _ = make_backend(tmp_path, config)
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        backend.decode(np.zeros((2, 3), np.int64))


def test_join_feeds_fp16_and_returns_fp32(tmp_path: Path, config: dict[str, Any]) -> None:
    backend, fake = make_backend(tmp_path, config)
    rng = np.random.default_rng(3)
    enc = rng.standard_normal((3, 320)).astype(np.float32)
    dec = backend.decode(np.array([[-1, 0], [5, 7], [9, 9]], dtype=np.int64))
    logits = backend.join(enc, dec)
    assert logits.dtype == np.float32 and logits.shape == (3, 500)
    for i in range(3):
        want = fake.logits_row(enc[i].astype(np.float16), dec[i].astype(np.float16))
        np.testing.assert_array_equal(logits[i], want.astype(np.float32))
    with pytest.raises(ValueError, match="joiner needs"):
        backend.join(enc, dec[:2])


def test_bundle_without_parsed_config_reads_config_json(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    fake = FakeCoreML(config)
    bundle = make_bundle(tmp_path, config, embed_config=False)
    backend = CoreMLBackend(bundle, predictor_factory=fake.factory)
    assert backend.defaults.boost == 0.5
    assert fake.loaded[0][1] == "all"


def test_bad_bundle_config_is_refused_by_backend(tmp_path: Path, config: dict[str, Any]) -> None:
    config["decoder"]["blankId"] = -1
    fake = FakeCoreML(config)
    with pytest.raises(ModelError, match=r"config\.json: key 'decoder\.blankId'"):
        CoreMLBackend(make_bundle(tmp_path, config), predictor_factory=fake.factory)
    assert fake.loaded == []


def test_missing_model_directory_is_named(tmp_path: Path, config: dict[str, Any]) -> None:
    bundle = make_bundle(tmp_path, config)
    (tmp_path / "joiner.mlmodelc").rmdir()
    with pytest.raises(ModelError, match=r"joiner\.mlmodelc: missing"):
        CoreMLBackend(bundle, predictor_factory=FakeCoreML(config).factory)


def test_onnx_bundle_is_refused(tmp_path: Path, config: dict[str, Any]) -> None:
    bundle = make_bundle(tmp_path, config, layout="onnx")
    with pytest.raises(ModelError, match="not a CoreML bundle"):
        CoreMLBackend(bundle, predictor_factory=FakeCoreML(config).factory)


def test_unknown_compute_units(tmp_path: Path, config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="cpu_and_ne"):
        CoreMLBackend(
            make_bundle(tmp_path, config), "gpu", predictor_factory=FakeCoreML(config).factory
        )


def test_prediction_failure_becomes_model_error(tmp_path: Path, config: dict[str, Any]) -> None:
    backend, _ = make_backend(tmp_path, config)
    state = backend.init_state()
    state["processed_lens"] = state["processed_lens"].astype(np.int64)  # the fake rejects it
    with pytest.raises(ModelError, match="CoreML encoder prediction failed"):
        backend.run_chunk(feats_for(0), state)


# --------------------------------------------------------------------------- off macOS


def test_off_macos_the_error_says_what_to_do(
    tmp_path: Path, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(ModelError) as err:
        CoreMLBackend(make_bundle(tmp_path, config))
    message = str(err.value)
    assert "macOS" in message
    assert "--backend onnx" in message


def test_macos_without_coremltools_says_how_to_install(
    tmp_path: Path, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setitem(sys.modules, "coremltools", None)  # makes the import fail
    with pytest.raises(ModelError, match=r"pip install 'kwsd\[coreml\]'"):
        CoreMLBackend(make_bundle(tmp_path, config))


def test_a_stream_batch_runs_coreml_one_stream_per_call(
    tmp_path: Path, config: dict[str, Any]
) -> None:
    """The compiled CoreML models take one stream: a StreamBatch calls them per stream
    and still gives each stream what it gets alone."""
    from kwsd import KeywordSpotter
    from kwsd.keywords import Tokenizer

    backend, fake = make_backend(tmp_path, config)
    model = _assets() / "model"
    spotter = KeywordSpotter(
        backend, Tokenizer(model / "tokens.txt", model / "bpe.model"), keywords=["LIGHT UP"]
    )
    batch = spotter.create_batch()
    assert not batch.plan.encoder
    assert batch.plan.joiner  # CoreML's joiner answers row by row: nothing shared
    speech, _ = sf.read(str(_assets() / "audio" / "light_up.wav"), dtype="float32")
    audio = [speech[8000:24000], speech[32000:56000]]
    members = [batch.add_stream() for _ in audio]
    for member, samples in zip(members, audio, strict=True):
        member.accept(samples)
    calls = fake.calls["encoder"]
    found = batch.drain()
    assert fake.calls["encoder"] - calls == 2 + 4  # 1 s and 1.5 s: 2 and 4 chunks
    for member, samples in zip(members, audio, strict=True):
        alone = spotter.create_stream()
        assert alone.accept(samples) == found.get(member, [])
        assert alone.frontend.state.keys() == member.frontend.state.keys()
        for name, value in alone.frontend.state.items():
            np.testing.assert_array_equal(member.frontend.state[name], value)
