"""The model manifest: each known model's upstream source, layout and sha256 pins.

The canonical manifest is `kwsd/data/models.toml`, shipped inside the package because a
pip-installed kwsd has no source tree to read `models/` from. A different manifest file
(`kwsd models pull --manifest FILE`) is how a user installs another model archive with
its own pins, and how the tests feed pins for a locally built archive through the same
code path as the real ones. Ids and paths from a manifest become directory and file
names, so they are validated here, before anything touches the disk.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from kwsd.errors import ModelError

Layout = Literal["onnx", "coreml"]
SourceKind = Literal["archive", "huggingface"]

SCHEMA_VERSION = 1
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class FilePin:
    """A file a model must contain, with its sha256 (and size) where known."""

    name: str  # relative to the model directory, "/"-separated
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True, slots=True)
class ModelSource:
    """One downloadable model: where it comes from and what its files must hash to."""

    id: str
    layout: Layout
    description: str = ""
    license: str = ""
    homepage: str | None = None
    url: str | None = None  # archive download
    archive_dir: str | None = None  # model directory inside the archive
    repo: str | None = None  # Hugging Face repository id
    revision: str | None = None
    files: tuple[FilePin, ...] = ()

    @property
    def kind(self) -> SourceKind:
        return "archive" if self.url is not None else "huggingface"

    @property
    def install_dir(self) -> str:
        """Directory name under the models directory; the id is validated to be safe."""
        return self.id

    @property
    def location(self) -> str:
        """Where it downloads from, for messages."""
        if self.url is not None:
            return self.url
        rev = f"@{self.revision}" if self.revision else ""
        return f"huggingface.co/{self.repo}{rev}"

    def pin(self, name: str) -> FilePin | None:
        return next((p for p in self.files if p.name == name), None)

    def with_url(self, url: str) -> ModelSource:
        """The same model from a mirror: the pins still apply, which is what makes mirrors safe."""
        return replace(self, url=url, repo=None)

    def with_repo(self, repo: str) -> ModelSource:
        return replace(self, repo=repo, url=None)


@dataclass(frozen=True, slots=True)
class Manifest:
    origin: str  # file path or package resource, for messages
    models: tuple[ModelSource, ...]

    def get(self, model_id: str) -> ModelSource:
        for model in self.models:
            if model.id == model_id:
                return model
        known = ", ".join(m.id for m in self.models)
        raise ModelError(f"no model {model_id!r} in the manifest {self.origin}; known: {known}")

    def default(self, layout: Layout) -> ModelSource:
        """The first model of that layout: the one `kwsd models pull` installs by default."""
        for model in self.models:
            if model.layout == layout:
                return model
        raise ModelError(f"the manifest {self.origin} lists no {layout} model")

    def match_files(self, names: set[str]) -> ModelSource | None:
        """The model whose pinned file names overlap `names` most (for verifying a directory)."""
        best: tuple[int, ModelSource | None] = (0, None)
        for model in self.models:
            overlap = sum(1 for p in model.files if p.name in names)
            if overlap > best[0]:
                best = (overlap, model)
        return best[1]


def default_manifest_text() -> str:
    return (resources.files("kwsd") / "data" / "models.toml").read_text(encoding="utf-8")


def load_manifest(path: Path | None = None) -> Manifest:
    """The manifest at `path`, or the one shipped with kwsd; raise `ModelError` if invalid."""
    if path is None:
        origin = "kwsd/data/models.toml"
        text = default_manifest_text()
    else:
        origin = str(path)
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(
                f"cannot read the model manifest {path}: {exc.strerror or exc}"
            ) from None
        except UnicodeDecodeError:
            raise ModelError(f"the model manifest {path} is not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"the model manifest {origin} is not valid TOML: {exc}") from None
    return parse_manifest(data, origin)


def parse_manifest(data: Mapping[str, Any], origin: str) -> Manifest:
    schema = data.get("schema", SCHEMA_VERSION)
    if schema != SCHEMA_VERSION:
        raise ModelError(
            f"the model manifest {origin} has schema {schema!r}; this kwsd reads schema "
            f"{SCHEMA_VERSION} (upgrade kwsd or fix the file)"
        )
    entries = data.get("models")
    if not isinstance(entries, list) or not entries:
        raise ModelError(f"the model manifest {origin} has no [[models]] entries")
    models = tuple(_parse_model(entry, f"{origin}: models[{i}]") for i, entry in enumerate(entries))
    ids = [m.id for m in models]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ModelError(f"the model manifest {origin} lists id {duplicates[0]!r} twice")
    return Manifest(origin=origin, models=models)


def _text(entry: Mapping[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
    value = entry.get(key)
    if value is None:
        if required:
            raise ModelError(f"{where}: `{key}` is required")
        return None
    if not isinstance(value, str) or not value.strip():
        raise ModelError(f"{where}: `{key}` must be a non-empty string")
    return value


def _relative_path(value: str, where: str) -> str:
    """A "/"-separated path that stays inside the directory it is joined to."""
    pure = PurePosixPath(value)
    if pure.is_absolute() or "\\" in value or any(part in ("", "..") for part in value.split("/")):
        raise ModelError(f"{where}: {value!r} must be a relative path without '..'")
    return str(pure)


def _parse_model(entry: Any, where: str) -> ModelSource:
    if not isinstance(entry, dict):
        raise ModelError(f"{where} must be a table")
    allowed = {
        "id", "layout", "description", "license", "homepage", "url", "archive_dir", "repo",
        "revision", "files",
    }  # fmt: skip
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ModelError(
            f"{where}: unknown key `{unknown[0]}` (allowed: {', '.join(sorted(allowed))})"
        )
    model_id = _text(entry, "id", where, required=True)
    assert model_id is not None
    if not _SAFE_NAME.fullmatch(model_id):
        raise ModelError(
            f"{where}: id {model_id!r} must be letters, digits, '.', '_' or '-' "
            "(it becomes a directory name)"
        )
    layout = entry.get("layout")
    if layout not in ("onnx", "coreml"):
        raise ModelError(f'{where}: layout must be "onnx" or "coreml", not {layout!r}')
    url = _text(entry, "url", where)
    repo = _text(entry, "repo", where)
    if (url is None) == (repo is None):
        raise ModelError(
            f"{where}: give exactly one of `url` (an archive) or `repo` (Hugging Face)"
        )
    archive_dir = _text(entry, "archive_dir", where)
    if archive_dir is not None:
        archive_dir = _relative_path(archive_dir, f"{where}.archive_dir")
    files_table = entry.get("files", {})
    if not isinstance(files_table, dict):
        raise ModelError(f"{where}: `files` must be a table of file name = {{ sha256 = ... }}")
    pins = tuple(
        _parse_pin(name, spec, f"{where}.files") for name, spec in sorted(files_table.items())
    )
    return ModelSource(
        id=model_id,
        layout=layout,
        description=_text(entry, "description", where) or "",
        license=_text(entry, "license", where) or "",
        homepage=_text(entry, "homepage", where),
        url=url,
        archive_dir=archive_dir,
        repo=repo,
        revision=_text(entry, "revision", where),
        files=pins,
    )


def _parse_pin(name: str, spec: Any, where: str) -> FilePin:
    name = _relative_path(name, where)
    if not isinstance(spec, dict):
        raise ModelError(f'{where}.{name} must be a table like {{ sha256 = "..." }}')
    unknown = sorted(set(spec) - {"sha256", "size"})
    if unknown:
        raise ModelError(f"{where}.{name}: unknown key `{unknown[0]}` (allowed: sha256, size)")
    digest = spec.get("sha256")
    if digest is not None:
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest.lower()):
            raise ModelError(f"{where}.{name}: sha256 must be 64 hexadecimal digits")
        digest = digest.lower()
    size = spec.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise ModelError(f"{where}.{name}: size must be a number of bytes")
    return FilePin(name=name, sha256=digest, size=size)
