"""CoreML backend (macOS): a thin adapter over three compiled `.mlmodelc` models.

All tensor mapping lives in `coreml_io`; this module only loads the models and calls
`predict`. The loading is injectable (`predictor_factory`) so the whole class runs on
Linux CI against a contract-checking fake: the CoreML call is the only faked part.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from kwsd.backends import coreml_io as io
from kwsd.backends.base import ChunkSpec, EncoderState, FloatArray, IntArray, ModelDefaults
from kwsd.errors import ConfigError, ModelError
from kwsd.model.bundle import ModelBundle

log = structlog.get_logger(__name__)

# kwsd's names for CoreML compute units (config `coreml_compute_units`) → coremltools'.
COMPUTE_UNITS: Mapping[str, str] = {
    "all": "ALL",
    "cpu_only": "CPU_ONLY",
    "cpu_and_gpu": "CPU_AND_GPU",
    "cpu_and_ne": "CPU_AND_NE",
}

Predictor = Callable[[dict[str, Any]], Mapping[str, Any]]
# (path of one .mlmodelc, compute units) -> a predict function for it.
PredictorFactory = Callable[[Path, str], Predictor]


def coremltools_factory() -> PredictorFactory:
    """The real loader; explains what to do instead of failing with an ImportError."""
    if sys.platform != "darwin":
        raise ModelError(
            "CoreML backend needs macOS with `pip install 'kwsd[coreml]'`; use --backend onnx"
        )
    try:
        import coremltools as ct
    except ImportError:
        raise ModelError(
            "CoreML backend needs coremltools: run `pip install 'kwsd[coreml]'`, "
            "or use --backend onnx"
        ) from None

    def load(path: Path, compute_units: str) -> Predictor:
        units = getattr(ct.ComputeUnit, COMPUTE_UNITS[compute_units])
        try:
            model = ct.models.CompiledMLModel(str(path), compute_units=units)
        except Exception as exc:  # coremltools raises bare RuntimeError/Exception types
            raise ModelError(
                f"{path}: CoreML cannot load this compiled model ({exc}); re-download it with "
                "`kwsd models pull --backend coreml`, or use --backend onnx"
            ) from exc
        predict: Predictor = model.predict
        return predict

    return load


class _Part:
    """One loaded model. The lock serialises predictions: one backend object is shared by
    every stream and CoreML does not promise that concurrent predictions are safe."""

    def __init__(self, part: str, predict: Predictor) -> None:
        self.part = part
        self._predict = predict
        self._lock = threading.Lock()

    def __call__(self, inputs: dict[str, Any]) -> Mapping[str, Any]:
        try:
            with self._lock:
                return self._predict(inputs)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"CoreML {self.part} prediction failed: {exc}") from exc


class CoreMLBackend:
    """The `Backend` protocol over a CoreML bundle (docs/algorithm.md §3)."""

    name = "coreml"

    def __init__(
        self,
        bundle: ModelBundle,
        compute_units: str = "all",
        *,
        predictor_factory: PredictorFactory | None = None,
    ) -> None:
        if compute_units not in COMPUTE_UNITS:
            raise ConfigError(
                f"unknown CoreML compute units {compute_units!r}; "
                f"choose one of: {', '.join(COMPUTE_UNITS)}"
            )
        factory = predictor_factory or coremltools_factory()
        if bundle.layout != "coreml":
            raise ModelError(
                f"{bundle.root}: this is an {bundle.layout} model, not a CoreML bundle; "
                "use --backend onnx, or pull one with `kwsd models pull --backend coreml`"
            )
        if bundle.config is not None:
            self.config = io.parse_config(bundle.config, str(bundle.root / io.CONFIG_FILE))
        else:
            self.config = io.load_config(bundle.root / io.CONFIG_FILE)
        for path in (bundle.encoder, bundle.decoder, bundle.joiner):
            if not path.exists():
                raise ModelError(
                    f"{path}: missing from the CoreML bundle; re-download it with "
                    "`kwsd models pull --backend coreml`"
                )
        cfg = self.config
        self.chunk: ChunkSpec = cfg.chunk
        self.joiner_dim: int = cfg.joiner_dim
        self.vocab_size: int = cfg.vocab_size
        self.blank_id: int = cfg.blank_id
        self.context_size: int = cfg.context_size
        self.defaults: ModelDefaults = cfg.defaults
        self.compute_units = compute_units
        self._encoder = _Part("encoder", factory(bundle.encoder, compute_units))
        self._decoder = _Part("decoder", factory(bundle.decoder, compute_units))
        self._joiner = _Part("joiner", factory(bundle.joiner, compute_units))
        self._self_check()
        log.debug(
            "coreml_backend_loaded",
            model=cfg.model_name,
            root=str(bundle.root),
            compute_units=compute_units,
            layer_states=len(cfg.layer_states),
        )

    def _self_check(self) -> None:
        """One call of each model, so a config.json that does not match the models fails
        at load time with a clear error rather than mid-stream; it also warms CoreML up."""
        enc, _ = self.run_chunk(
            np.zeros((self.chunk.frames_in, self.config.num_mel_bins), np.float32),
            self.init_state(),
        )
        dec = self.decode(np.full((1, self.context_size), -1, dtype=np.int64))
        self.join(enc[:1], dec)

    def init_state(self) -> EncoderState:
        return io.initial_state(self.config)

    def run_chunk(self, feats: FloatArray, state: EncoderState) -> tuple[FloatArray, EncoderState]:
        outputs = self._encoder(io.encoder_inputs(self.config, feats, state))
        return io.encoder_outputs(self.config, outputs, state)

    def decode(self, contexts: IntArray) -> FloatArray:
        rows = [
            io.decoder_output(self.config, self._decoder(inputs))
            for inputs in io.decoder_inputs(self.config, contexts)
        ]
        if not rows:
            return np.zeros((0, self.joiner_dim), np.float32)
        return np.stack(rows)

    def join(self, enc: FloatArray, dec: FloatArray) -> FloatArray:
        io.check_pair(enc, dec, self.config)
        rows = [
            io.joiner_output(self.config, self._joiner(io.joiner_inputs(e, d)))
            for e, d in zip(enc, dec, strict=True)
        ]
        if not rows:
            return np.zeros((0, self.vocab_size), np.float32)
        return np.stack(rows)
