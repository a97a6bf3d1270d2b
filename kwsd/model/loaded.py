"""One call from settings to a ready model: bundle, backend and tokenizer.

Every entry point (detect, run, wyoming, eval, bench) loads the model the same way,
so a model problem gives the same actionable message wherever it shows up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from kwsd.backends.base import Backend
from kwsd.backends.loader import load_backend
from kwsd.keywords import KeywordSet, KeywordSpec, Tokenizer, compile_keywords
from kwsd.model.bundle import ModelBundle
from kwsd.model.resolve import resolve_model

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class LoadedModel:
    bundle: ModelBundle
    backend: Backend
    tokenizer: Tokenizer
    stand_in: bool  # True when the trained stand-in encoder from KWSD_ASSETS is in use

    @property
    def label(self) -> str:
        """Short model name for detection payloads."""
        return f"{self.bundle.root.name}{' (stand-in encoder)' if self.stand_in else ''}"

    def compile(
        self,
        specs: list[KeywordSpec],
        *,
        boost: float | None = None,
        threshold: float | None = None,
        version: int = 0,
    ) -> KeywordSet:
        return compile_keywords(
            specs,
            self.tokenizer,
            self.backend.defaults,
            boost=boost,
            threshold=threshold,
            version=version,
        )


def load_model(settings: Any, *, progress: bool = False) -> LoadedModel:
    """settings: kwsd.config.Settings (model section + assets)."""
    model = settings.model
    bundle = resolve_model(
        model.dir,
        backend=model.backend,
        precision=model.precision,
        allow_download=model.allow_download,
        assets=settings.assets,
        onnx_url=model.onnx_url,
        coreml_repo=model.coreml_repo,
        progress=progress,
    )
    stand_in = settings.assets is not None and model.dir is None
    if stand_in:
        log.warning(
            "stand_in_encoder",
            message="using the trained stand-in encoder from KWSD_ASSETS with the real "
            "decoder/joiner: it recognises generated (espeak-ng) speech, not real voices; "
            "run `kwsd models pull` on a machine with internet for the real model",
            encoder=str(bundle.encoder),
        )
    backend = load_backend(
        bundle,
        model.backend,
        num_threads=model.num_threads,
        compute_units=model.coreml_compute_units,
    )
    tokenizer = Tokenizer(bundle.tokens, bundle.bpe_model)
    log.info("model_loaded", root=str(bundle.root), layout=bundle.layout, backend=backend.name)
    return LoadedModel(bundle, backend, tokenizer, stand_in)
