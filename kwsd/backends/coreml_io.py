"""Everything the CoreML backend knows about the bundle's tensors, as pure functions.

The CoreML call itself only runs on macOS, so every decision that can be wrong (names,
dtypes, shapes, state feedback, fp16 conversion, config.json validation) lives here,
free of coremltools, where Linux CI exercises it against a contract-checking fake.
The layer-state names and shapes come from the bundle's `config.json`
(docs/algorithm.md §3); none are hard-coded, so a re-export with other layer counts
keeps working.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from kwsd.backends.base import ChunkSpec, EncoderState, FloatArray, ModelDefaults
from kwsd.errors import ModelError

log = structlog.get_logger(__name__)

CONFIG_FILE = "config.json"

# Tensor names fixed by the CoreML export (docs/algorithm.md §3); the layer caches are not.
X = "x"
EMBED_PAD = "cached_embed_left_pad"
PROCESSED_LENS = "processed_lens"
ENCODER_OUT = "encoder_out"
DECODER_Y = "y"
DECODER_OUT = "decoder_out"
JOINER_ENC = "encoder_out"
JOINER_DEC = "decoder_out"
JOINER_OUT = "logits"
NEW_PREFIX = "new_"
RESERVED_INPUTS = frozenset({X, EMBED_PAD, PROCESSED_LENS})

# kwsd's front end computes exactly these features (docs/algorithm.md §1); a bundle wanting
# anything else cannot be fed correctly, so it is refused instead of mis-decoded.
SUPPORTED_SAMPLE_RATE = 16000
SUPPORTED_MEL_BINS = 80
# Guards against a corrupt config.json asking for gigabytes of zeros (real: ~0.2 M).
MAX_STATE_ELEMENTS = 20_000_000

_FIX = "re-download the bundle with `kwsd models pull --backend coreml`, or use --backend onnx"

Outputs = Mapping[str, Any]
Inputs = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True, slots=True)
class StateSpec:
    """One encoder cache tensor: fed as `name`, returned as `new_<name>`."""

    name: str
    shape: tuple[int, ...]

    @property
    def output_name(self) -> str:
        return NEW_PREFIX + self.name


@dataclass(frozen=True, slots=True)
class CoreMLConfig:
    """The validated `config.json` of a CoreML bundle (only what decoding needs)."""

    model_name: str
    num_mel_bins: int
    frame_shift_ms: float
    chunk_size: int
    total_input_frames: int
    output_frames: int
    joiner_dim: int
    layer_states: tuple[StateSpec, ...]
    embed_pad_shape: tuple[int, ...]
    vocab_size: int
    blank_id: int
    context_size: int
    decoder_dim: int
    defaults: ModelDefaults

    @property
    def chunk(self) -> ChunkSpec:
        # chunkSize counts frames after the 2x embed subsampling, so the stream advances
        # 2*chunkSize feature frames per call and each output frame spans shift/out of them.
        shift = 2 * self.chunk_size
        return ChunkSpec(
            frames_in=self.total_input_frames,
            frames_shift=shift,
            frames_out=self.output_frames,
            frame_seconds=shift * self.frame_shift_ms / 1000.0 / self.output_frames,
        )

    @property
    def states(self) -> tuple[StateSpec, ...]:
        """Every fed-back float tensor: the layer caches, then the embed left pad."""
        return (*self.layer_states, StateSpec(EMBED_PAD, self.embed_pad_shape))


# --------------------------------------------------------------------------- config.json


class _Reader:
    """Typed access to one JSON section; every complaint names the file and the key path."""

    def __init__(self, source: str, data: Mapping[str, Any], prefix: str) -> None:
        self.source = source
        self.data = data
        self.prefix = prefix

    def fail(self, key: str, problem: str) -> ModelError:
        return ModelError(f"{self.source}: key '{self.prefix}{key}' {problem}; {_FIX}")

    def section(self, key: str, *, required: bool = True) -> _Reader:
        value = self.data.get(key)
        if value is None and not required:
            value = {}
        if not isinstance(value, Mapping):
            problem = "is missing" if key not in self.data else "must be a JSON object"
            raise self.fail(key, problem)
        return _Reader(self.source, value, f"{self.prefix}{key}.")

    def _get(self, key: str, default: Any) -> Any:
        if key in self.data:
            return self.data[key]
        if default is None:
            raise self.fail(key, "is missing")
        return default

    def int_(self, key: str, *, minimum: int = 0, default: int | None = None) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self.fail(key, f"must be >= {minimum}, got {value}")
        return value

    def float_(
        self,
        key: str,
        *,
        minimum: float = -math.inf,
        maximum: float = math.inf,
        exclusive_min: bool = False,
        default: float | None = None,
    ) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, got {value!r}")
        number = float(value)
        too_low = number <= minimum if exclusive_min else number < minimum
        if not math.isfinite(number) or too_low or number > maximum:
            low = f"> {minimum}" if exclusive_min else f">= {minimum}"
            raise self.fail(key, f"must be {low} and <= {maximum}, got {value!r}")
        return number

    def str_(self, key: str, *, default: str | None = None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string, got {value!r}")
        return value

    def list_(self, key: str) -> list[Any]:
        value = self._get(key, None)
        if not isinstance(value, list):
            raise self.fail(key, f"must be a JSON list, got {type(value).__name__}")
        return value

    def shape(self, key: str) -> tuple[int, ...]:
        return self.check_shape(key, self._get(key, None))

    def check_shape(self, key: str, value: Any) -> tuple[int, ...]:
        ok = (
            isinstance(value, list)
            and len(value) > 0
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)
        )
        if not ok:
            raise self.fail(key, f"must be a non-empty list of positive integers, got {value!r}")
        return tuple(value)


def _layer_states(enc: _Reader) -> tuple[StateSpec, ...]:
    names = enc.list_("layerStateNames")
    shapes = enc.list_("layerStateShapes")
    if not names:
        raise enc.fail("layerStateNames", "must list at least one state")
    if len(names) != len(shapes):
        raise enc.fail(
            "layerStateShapes",
            f"has {len(shapes)} entries but layerStateNames has {len(names)}",
        )
    specs: list[StateSpec] = []
    seen: set[str] = set()
    for i, (name, shape) in enumerate(zip(names, shapes, strict=True)):
        if not isinstance(name, str) or not name.strip():
            raise enc.fail(f"layerStateNames[{i}]", f"must be a non-empty string, got {name!r}")
        if name in RESERVED_INPUTS or name in seen:
            raise enc.fail(f"layerStateNames[{i}]", f"repeats the input name {name!r}")
        seen.add(name)
        specs.append(StateSpec(name, enc.check_shape(f"layerStateShapes[{i}]", shape)))
    return tuple(specs)


def parse_config(data: Any, source: str = CONFIG_FILE) -> CoreMLConfig:
    """Validate a decoded config.json; `source` names the file in every error."""
    if not isinstance(data, Mapping):
        raise ModelError(f"{source}: must hold a JSON object, got {type(data).__name__}; {_FIX}")
    top = _Reader(source, data, "")
    feature = top.section("feature", required=False)
    enc = top.section("encoder")
    dec = top.section("decoder")
    kws = top.section("kws", required=False)

    sample_rate = feature.int_("sampleRate", minimum=1, default=SUPPORTED_SAMPLE_RATE)
    if sample_rate != SUPPORTED_SAMPLE_RATE:
        raise feature.fail("sampleRate", f"is {sample_rate}; kwsd feeds {SUPPORTED_SAMPLE_RATE}")
    mel_bins = feature.int_("numMelBins", minimum=1, default=SUPPORTED_MEL_BINS)
    if mel_bins != SUPPORTED_MEL_BINS:
        raise feature.fail("numMelBins", f"is {mel_bins}; kwsd computes {SUPPORTED_MEL_BINS}")
    frame_shift_ms = feature.float_("frameShiftMs", minimum=0.0, exclusive_min=True, default=10.0)

    chunk_size = enc.int_("chunkSize", minimum=1)
    total_in = enc.int_("totalInputFrames", minimum=1)
    if total_in < 2 * chunk_size:
        raise enc.fail(
            "totalInputFrames",
            f"is {total_in}, fewer than the {2 * chunk_size} frames a chunk advances",
        )
    output_frames = enc.int_("outputFrames", minimum=1)
    joiner_dim = enc.int_("joinerDim", minimum=1)
    layer_states = _layer_states(enc)
    embed_pad = enc.shape("cachedEmbedLeftPadShape")
    elements = sum(math.prod(s.shape) for s in layer_states) + math.prod(embed_pad)
    if elements > MAX_STATE_ELEMENTS:
        raise enc.fail("layerStateShapes", f"ask for {elements} state values, an implausible size")

    vocab_size = dec.int_("vocabSize", minimum=2)
    blank_id = dec.int_("blankId", minimum=0)
    if blank_id >= vocab_size:
        raise dec.fail("blankId", f"is {blank_id}, outside vocabSize {vocab_size}")
    context_size = dec.int_("contextSize", minimum=1)
    decoder_dim = dec.int_("decoderDim", minimum=1)
    if decoder_dim != joiner_dim:
        raise dec.fail(
            "decoderDim", f"is {decoder_dim} but encoder.joinerDim is {joiner_dim}; they must match"
        )

    base = ModelDefaults()
    defaults = ModelDefaults(
        threshold=kws.float_(
            "defaultThreshold", minimum=0.0, maximum=1.0, exclusive_min=True, default=base.threshold
        ),
        boost=kws.float_("defaultContextScore", minimum=0.0, default=base.boost),
        num_trailing_blanks=kws.int_(
            "defaultNumTrailingBlanks", minimum=0, default=base.num_trailing_blanks
        ),
        auto_reset_seconds=kws.float_(
            "autoResetSeconds", minimum=0.0, exclusive_min=True, default=base.auto_reset_seconds
        ),
    )
    return CoreMLConfig(
        model_name=top.str_("modelName", default="coreml"),
        num_mel_bins=mel_bins,
        frame_shift_ms=frame_shift_ms,
        chunk_size=chunk_size,
        total_input_frames=total_in,
        output_frames=output_frames,
        joiner_dim=joiner_dim,
        layer_states=layer_states,
        embed_pad_shape=embed_pad,
        vocab_size=vocab_size,
        blank_id=blank_id,
        context_size=context_size,
        decoder_dim=decoder_dim,
        defaults=defaults,
    )


def load_config(path: Path) -> CoreMLConfig:
    """Read and validate a bundle's config.json."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path}: CoreML bundle has no config.json; {_FIX}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read config.json ({exc}); {_FIX}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: config.json is not valid JSON ({exc}); {_FIX}") from None
    return parse_config(data, source=str(path))


# --------------------------------------------------------------------------- encoder


def initial_state(cfg: CoreMLConfig) -> EncoderState:
    """Zeros of every declared shape and processed_lens 0 (int32, as the export declares)."""
    state: EncoderState = {s.name: np.zeros(s.shape, dtype=np.float32) for s in cfg.states}
    state[PROCESSED_LENS] = np.zeros(1, dtype=np.int32)
    return state


def encoder_inputs(cfg: CoreMLConfig, feats: FloatArray, state: EncoderState) -> Inputs:
    """The encoder's feature dict for one chunk of [totalInputFrames, numMelBins] fbank."""
    expected = (cfg.total_input_frames, cfg.num_mel_bins)
    if feats.shape != expected:
        raise ValueError(f"CoreML encoder needs feats of shape {expected}, got {feats.shape}")
    inputs: Inputs = {X: np.ascontiguousarray(feats, dtype=np.float32).reshape(1, *expected)}
    for spec in cfg.states:
        inputs[spec.name] = state[spec.name]
    inputs[PROCESSED_LENS] = state[PROCESSED_LENS]
    return inputs


def _output(outputs: Outputs, name: str, part: str) -> npt.NDArray[Any]:
    if name not in outputs:
        have = ", ".join(sorted(outputs)) or "nothing"
        raise ModelError(f"CoreML {part} returned no '{name}' (it returned {have}); {_FIX}")
    return np.asarray(outputs[name])


def _as_shape(
    value: npt.NDArray[Any], shape: tuple[int, ...], name: str, part: str, dtype: type[Any]
) -> npt.NDArray[Any]:
    """Reshape to `shape` (CoreML may add or drop unit axes) and cast, or explain the mismatch."""
    if value.size != math.prod(shape):
        raise ModelError(
            f"CoreML {part} output '{name}' has shape {value.shape}, config.json "
            f"declares {shape}: the bundle's model and config.json do not match; {_FIX}"
        )
    return np.ascontiguousarray(value.reshape(shape), dtype=dtype)


def encoder_outputs(
    cfg: CoreMLConfig, outputs: Outputs, state: EncoderState
) -> tuple[FloatArray, EncoderState]:
    """(encoder frames [outputFrames, joinerDim] float32, next state) from one prediction.

    A missing `new_<name>` keeps that state as it was, as upstream does, so a bundle that
    folds a constant cache into the model still runs. The caller's dict is not modified.
    """
    enc = _as_shape(
        _output(outputs, ENCODER_OUT, "encoder"),
        (cfg.output_frames, cfg.joiner_dim),
        ENCODER_OUT,
        "encoder",
        np.float32,
    )
    nxt: EncoderState = {}
    missing: list[str] = []
    for spec in cfg.states:
        if spec.output_name in outputs:
            value = np.asarray(outputs[spec.output_name])
            nxt[spec.name] = _as_shape(value, spec.shape, spec.output_name, "encoder", np.float32)
        else:
            missing.append(spec.output_name)
            nxt[spec.name] = state[spec.name]
    lens_name = NEW_PREFIX + PROCESSED_LENS
    if lens_name in outputs:
        value = np.asarray(outputs[lens_name])
        nxt[PROCESSED_LENS] = _as_shape(value, (1,), lens_name, "encoder", np.int32)
    else:
        missing.append(lens_name)
        nxt[PROCESSED_LENS] = state[PROCESSED_LENS]
    if missing:
        log.debug("coreml_state_output_missing", outputs=missing, effect="state kept unchanged")
    return enc, nxt


# --------------------------------------------------------------------------- decoder, joiner


def decoder_inputs(cfg: CoreMLConfig, contexts: npt.NDArray[np.integer[Any]]) -> list[Inputs]:
    """One `y` int32 [1, contextSize] dict per context row (the export is batch 1).

    Token id -1 ("no token yet") is clamped to 0, the blank, as the CoreML export expects;
    the ONNX decoder embeds -1 to zeros instead, one of the small known backend differences.
    """
    if contexts.ndim != 2 or contexts.shape[1] != cfg.context_size:
        raise ValueError(
            f"CoreML decoder needs contexts [B, {cfg.context_size}], got {contexts.shape}"
        )
    if contexts.size and int(contexts.max()) >= cfg.vocab_size:
        raise ValueError(f"token id {int(contexts.max())} outside vocabSize {cfg.vocab_size}")
    clamped = np.maximum(contexts, 0).astype(np.int32)
    return [{DECODER_Y: np.ascontiguousarray(row.reshape(1, -1))} for row in clamped]


def decoder_output(cfg: CoreMLConfig, outputs: Outputs) -> FloatArray:
    """decoder_out (float16 in the published bundle) as float32 [decoderDim]."""
    value = _output(outputs, DECODER_OUT, "decoder")
    out: FloatArray = _as_shape(value, (cfg.decoder_dim,), DECODER_OUT, "decoder", np.float32)
    return out


def joiner_inputs(enc_row: FloatArray, dec_row: FloatArray) -> Inputs:
    """The joiner takes float16 [1, joinerDim] for both inputs."""
    return {
        JOINER_ENC: np.ascontiguousarray(enc_row, dtype=np.float16).reshape(1, -1),
        JOINER_DEC: np.ascontiguousarray(dec_row, dtype=np.float16).reshape(1, -1),
    }


def joiner_output(cfg: CoreMLConfig, outputs: Outputs) -> FloatArray:
    """logits as float32 [vocabSize]."""
    value = _output(outputs, JOINER_OUT, "joiner")
    out: FloatArray = _as_shape(value, (cfg.vocab_size,), JOINER_OUT, "joiner", np.float32)
    return out


def check_pair(enc: FloatArray, dec: FloatArray, cfg: CoreMLConfig) -> None:
    """The search hands the joiner equal batches of joiner-space rows."""
    want = cfg.joiner_dim
    if enc.ndim != 2 or dec.ndim != 2 or enc.shape != dec.shape or enc.shape[1] != want:
        raise ValueError(
            f"CoreML joiner needs enc and dec [B, {want}], got {enc.shape} {dec.shape}"
        )
