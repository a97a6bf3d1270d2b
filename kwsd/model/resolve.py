"""Which model a run uses, decided once at start-up and logged with the reason.

Order, first match wins:
1. an explicit directory (`--model-dir` / `model.dir`). It is never silently replaced by
   another model: if it is wrong, that is an error the user must see;
2. the assets directory (`assets` / $KWSD_ASSETS): the real decoder and joiner with the
   trained stand-in encoder, for machines that cannot fetch the upstream encoder;
3. a model installed in the default models directory (`kwsd.model.locations`);
4. a download from upstream, if `model.allow_download`: the CoreML bundle on macOS when
   the backend is auto/coreml and coremltools is installed, the sherpa-onnx release
   everywhere else.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kwsd.errors import ModelError, ModelMissingError
from kwsd.liblog import LibraryLogger
from kwsd.model.bundle import (
    BPE_FILE,
    TOKENS_FILE,
    Layout,
    ModelBundle,
    Precision,
    assets_bundle,
    detect_layout,
    open_bundle,
)
from kwsd.model.locations import default_models_dir
from kwsd.model.manifest import Manifest, ModelSource, load_manifest

Backend = Literal["auto", "onnx", "coreml"]

log = LibraryLogger(__name__)


def coreml_runtime_available(platform: str = sys.platform) -> bool:
    """CoreML needs macOS and the `coreml` extra (coremltools)."""
    return platform == "darwin" and importlib.util.find_spec("coremltools") is not None


def wanted_layouts(backend: Backend, *, coreml_available: bool) -> tuple[Layout, ...]:
    """Layouts the backend setting can run, most preferred first."""
    if backend == "onnx":
        return ("onnx",)
    if backend == "coreml":
        return ("coreml",)
    return ("coreml", "onnx") if coreml_available else ("onnx",)


def find_model_root(path: Path, manifest: Manifest, layouts: tuple[Layout, ...]) -> Path:
    """`path` itself if it holds a model, else the installed model inside it.

    Users often point `model.dir` at the directory they unpacked the release *into*, or
    at the `--dest` they gave `kwsd models pull`; both hold the model one level down.
    """
    if detect_layout(path) is not None:
        return path
    if path.is_dir():
        for layout in layouts:
            for source in manifest.models:
                candidate = path / source.install_dir
                if source.layout == layout and detect_layout(candidate) == layout:
                    return candidate
        inside = [p for p in sorted(path.iterdir()) if p.is_dir() and detect_layout(p)]
        if len(inside) == 1:
            return inside[0]
    return path  # open_bundle explains what is missing


def _check_runnable(
    bundle: ModelBundle, backend: Backend, layouts: tuple[Layout, ...], origin: str
) -> None:
    if bundle.layout in layouts:
        return
    if bundle.layout == "coreml":
        why = (
            "model.backend is onnx"
            if backend == "onnx"
            else "CoreML needs macOS with the `coreml` extra (pip install 'kwsd[coreml]')"
        )
        raise ModelError(
            f"{origin} {bundle.root} holds the CoreML bundle, but {why}; point it at the "
            "sherpa-onnx model instead (`kwsd models pull --backend onnx`)"
        )
    raise ModelError(
        f"{origin} {bundle.root} holds an ONNX model, but model.backend is coreml; set "
        'model.backend = "onnx" (or "auto"), or point it at the CoreML bundle'
    )


def _source_for(
    layout: Layout, manifest: Manifest, onnx_url: str | None, coreml_repo: str | None
) -> ModelSource:
    source = manifest.default(layout)
    if layout == "onnx" and onnx_url:
        return source.with_url(onnx_url)
    if layout == "coreml" and coreml_repo and coreml_repo != source.repo:
        return source.with_repo(coreml_repo)
    return source


def _plan(
    backend: Backend, manifest: Manifest | None, coreml_available: bool | None
) -> tuple[Manifest, tuple[Layout, ...]]:
    """The manifest and the layouts to look for, most preferred first."""
    if coreml_available is None:
        coreml_available = coreml_runtime_available()
    layouts = wanted_layouts(backend, coreml_available=coreml_available)
    return manifest or load_manifest(), layouts


def _install_dirs(
    base: Path,
    layouts: tuple[Layout, ...],
    manifest: Manifest,
    onnx_url: str | None,
    coreml_repo: str | None,
) -> Iterator[tuple[Layout, Path]]:
    """Where `kwsd models pull` installs each wanted layout, most preferred first."""
    for layout in layouts:
        yield layout, base / _source_for(layout, manifest, onnx_url, coreml_repo).install_dir


def resolve_model(
    model_dir: Path | None,
    *,
    backend: Backend = "auto",
    precision: Precision = "int8",
    allow_download: bool = True,
    assets: Path | None = None,
    onnx_url: str | None = None,
    coreml_repo: str | None = None,
    progress: bool = False,
    models_dir: Path | None = None,
    manifest: Manifest | None = None,
    coreml_available: bool | None = None,
) -> ModelBundle:
    """The bundle this run should load; see the module docstring for the order.

    `models_dir` (default: `default_models_dir()`), `manifest` (default: the shipped one)
    and `coreml_available` (default: detected) exist for callers with their own layout
    and for tests. Blocking (disk and possibly network): call it from a worker thread in
    async code.
    """
    manifest, layouts = _plan(backend, manifest, coreml_available)
    if model_dir is not None:
        root = find_model_root(Path(model_dir).expanduser(), manifest, layouts)
        try:
            bundle = open_bundle(root, precision)
        except ModelMissingError as exc:
            raise ModelMissingError(
                f"{exc} (from --model-dir / model.dir; to install there run "
                f"`kwsd models pull --dest {model_dir}`)"
            ) from None
        _check_runnable(bundle, backend, layouts, "model.dir")
        log.info(
            "model selected", source="model.dir", reason="set explicitly", model=bundle.describe()
        )
        return bundle

    if assets is not None:
        bundle = assets_bundle(Path(assets), precision)
        _check_runnable(bundle, backend, layouts, "the assets model in")
        log.info(
            "model selected",
            source="assets",
            reason="assets / KWSD_ASSETS is set: real decoder and joiner, stand-in encoder",
            model=bundle.describe(),
        )
        return bundle

    base = models_dir or default_models_dir()
    for layout, target in _install_dirs(base, layouts, manifest, onnx_url, coreml_repo):
        if detect_layout(target) == layout:
            bundle = open_bundle(target, precision)
            log.info(
                "model selected",
                source="installed",
                reason=f"found in {base}",
                model=bundle.describe(),
            )
            return bundle

    source = _source_for(layouts[0], manifest, onnx_url, coreml_repo)
    if not allow_download:
        raise ModelMissingError(
            f"no model installed in {base} and downloads are off (model.allow_download = "
            "false); run `kwsd models pull`, or set model.dir / KWSD_ASSETS"
        )
    from kwsd.model.download import pull

    log.info(
        "model selected",
        source="download",
        reason=f"nothing installed in {base}",
        model=source.id,
        origin=source.location,
    )
    bundle, _downloaded = pull(source, base, precision=precision, progress=progress)
    return bundle


@dataclass(frozen=True, slots=True)
class VocabularyFiles:
    """A model's tokens.txt and bpe.model: all that keyword checking needs."""

    tokens: Path
    bpe_model: Path
    source: str  # which rule found them: "model.dir", "assets" or "installed"


def resolve_vocabulary(
    model_dir: Path | None,
    *,
    backend: Backend = "auto",
    assets: Path | None = None,
    onnx_url: str | None = None,
    coreml_repo: str | None = None,
    models_dir: Path | None = None,
    manifest: Manifest | None = None,
    coreml_available: bool | None = None,
) -> VocabularyFiles:
    """The vocabulary of the model `resolve_model` would pick, without loading the model.

    Same order as `resolve_model`, but only tokens.txt and bpe.model must exist, so this
    works where the encoder is missing or cannot load (and it never downloads). Used by
    `kwsd config check`. Raises ModelMissingError saying what to do when there is none.
    """
    manifest, layouts = _plan(backend, manifest, coreml_available)
    if model_dir is not None:
        root = find_model_root(Path(model_dir).expanduser(), manifest, layouts)
        if (found := _vocabulary_in(root, "model.dir")) is not None:
            return found
        raise ModelMissingError(
            f"model.dir {model_dir} holds no {TOKENS_FILE} and {BPE_FILE}; run "
            f"`kwsd models pull --dest {model_dir}`, or point model.dir at the model"
        )
    if assets is not None:
        if (found := _vocabulary_in(Path(assets).expanduser() / "model", "assets")) is not None:
            return found
        raise ModelMissingError(
            f"the assets directory {assets} (assets / $KWSD_ASSETS) has no model/"
            f"{TOKENS_FILE} and model/{BPE_FILE}; point it at a kws-assets directory"
        )
    base = models_dir or default_models_dir()
    for _layout, target in _install_dirs(base, layouts, manifest, onnx_url, coreml_repo):
        if (found := _vocabulary_in(target, "installed")) is not None:
            return found
    raise ModelMissingError(
        f"no model installed in {base}; run `kwsd models pull` (or set model.dir / KWSD_ASSETS)"
    )


def _vocabulary_in(root: Path, source: str) -> VocabularyFiles | None:
    tokens, bpe = root / TOKENS_FILE, root / BPE_FILE
    if tokens.is_file() and bpe.is_file():
        return VocabularyFiles(tokens, bpe, source)
    return None
