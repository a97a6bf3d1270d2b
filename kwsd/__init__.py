"""kwsd: an open-vocabulary keyword-spotting daemon for home automation, and a library.

    from kwsd import KeywordSpotter

    spotter = KeywordSpotter.installed(keywords=["hey computer", "lights off"])
    stream = spotter.create_stream(sample_rate=48000)
    for det in stream.accept(samples):      # int16 or float32 numpy array, any size
        print(det.keyword, det.start, det.score)

See `kwsd.spotter` for the whole API. The names below load on first use, so that
`import kwsd` (and every `kwsd` command) stays fast: the model stack (numpy, ONNX
Runtime, SentencePiece) is imported only by code that decodes audio.
"""

from __future__ import annotations

from kwsd.lazy import lazy_exports

# `typing` itself costs more than the rest of this file; type checkers read this as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from kwsd.batch import BatchStream, StreamBatch
    from kwsd.detection import Detection
    from kwsd.engine import KeywordStream
    from kwsd.errors import (
        AudioError,
        ConfigError,
        KeywordError,
        KwsdError,
        ModelError,
        ModelMissingError,
        NetworkError,
    )
    from kwsd.keywords.compile import KeywordSet
    from kwsd.keywords.spec import KeywordSpec
    from kwsd.search.beam import SearchOptions
    from kwsd.spotter import BackendOptions, KeywordSpotter
    from kwsd.vad import VadOptions

_ERRORS = "kwsd.errors"
_LAZY = {
    "KeywordSpotter": "kwsd.spotter",
    "BackendOptions": "kwsd.spotter",
    "KeywordStream": "kwsd.engine",
    "StreamBatch": "kwsd.batch",
    "BatchStream": "kwsd.batch",
    "SearchOptions": "kwsd.search.beam",
    "VadOptions": "kwsd.vad",
    "Detection": "kwsd.detection",
    "KeywordSpec": "kwsd.keywords.spec",
    "KeywordSet": "kwsd.keywords.compile",
    "KwsdError": _ERRORS,
    "ConfigError": _ERRORS,
    "ModelError": _ERRORS,
    "ModelMissingError": _ERRORS,
    "KeywordError": _ERRORS,
    "AudioError": _ERRORS,
    "NetworkError": _ERRORS,
}

__all__ = [
    "AudioError",
    "BackendOptions",
    "BatchStream",
    "ConfigError",
    "Detection",
    "KeywordError",
    "KeywordSet",
    "KeywordSpec",
    "KeywordSpotter",
    "KeywordStream",
    "KwsdError",
    "ModelError",
    "ModelMissingError",
    "NetworkError",
    "SearchOptions",
    "StreamBatch",
    "VadOptions",
    "__version__",
]


def _version() -> str:
    """One version source: pyproject.toml, as installed (wheel, sdist or editable)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kwsd")
    except PackageNotFoundError:  # a bare source tree on sys.path, never installed
        return "0+unknown"


def _lazy_getattr(name: str) -> Any:
    if name == "__version__":
        globals()[name] = value = _version()
        return value
    return _exported(name)


def _lazy_dir() -> list[str]:
    return sorted({*_exported_dir(), "__version__"})


_exported, _exported_dir = lazy_exports(__name__, _LAZY)
__getattr__, __dir__ = _lazy_getattr, _lazy_dir
