"""Choosing and constructing a backend for a model bundle."""

from __future__ import annotations

import sys
from typing import Literal

from kwsd.backends.base import Backend
from kwsd.errors import ModelError
from kwsd.model.bundle import ModelBundle

BackendName = Literal["auto", "onnx", "coreml"]


def load_backend(
    bundle: ModelBundle,
    backend: BackendName | str = "auto",
    *,
    num_threads: int = 1,
    compute_units: str = "all",
) -> Backend:
    """`auto` picks CoreML for a CoreML bundle on macOS and ONNX Runtime otherwise."""
    kind = backend
    if kind == "auto":
        kind = "coreml" if bundle.layout == "coreml" and sys.platform == "darwin" else "onnx"
    if kind == "coreml":
        if bundle.layout != "coreml":
            raise ModelError(
                f"{bundle.root} is a sherpa-onnx model; the CoreML backend needs the CoreML "
                "bundle (`kwsd models pull --backend coreml`) or use --backend onnx"
            )
        from kwsd.backends.coreml import CoreMLBackend

        return CoreMLBackend(bundle, compute_units=compute_units)
    if kind != "onnx":
        raise ModelError(f"unknown backend {backend!r}: choose auto, onnx or coreml")
    if bundle.layout != "onnx":
        raise ModelError(
            f"{bundle.root} is a CoreML bundle, which only runs on macOS; on this machine "
            "pull the ONNX model: `kwsd models pull --backend onnx`"
        )
    from kwsd.backends.onnx import OnnxBackend

    return OnnxBackend(bundle.encoder, bundle.decoder, bundle.joiner, num_threads=num_threads)
