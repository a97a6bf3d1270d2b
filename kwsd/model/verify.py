"""sha256 verification of a model directory against the manifest's pins.

Installs refuse anything that does not match (a tampered mirror, a truncated download
that still unpacked); `kwsd models verify` reports file by file so a user can tell a
damaged install from a model that simply is not the one the manifest describes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kwsd.errors import ModelError
from kwsd.model.manifest import ModelSource

Status = Literal["ok", "mismatch", "missing", "unpinned", "unreadable"]
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class FileCheck:
    name: str
    status: Status
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status in ("mismatch", "missing", "unreadable")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def check_pins(model_dir: Path, source: ModelSource) -> list[FileCheck]:
    """One result per file the manifest lists for `source`, in manifest order."""
    results: list[FileCheck] = []
    for pin in source.files:
        path = model_dir / pin.name
        if not path.is_file():
            results.append(FileCheck(pin.name, "missing", f"{path} does not exist"))
            continue
        try:
            size = path.stat().st_size
            if pin.size is not None and size != pin.size:
                results.append(
                    FileCheck(pin.name, "mismatch", f"size {size} bytes, expected {pin.size}")
                )
                continue
            if pin.sha256 is None:
                results.append(FileCheck(pin.name, "unpinned", "no sha256 known"))
                continue
            actual = sha256_file(path)
        except OSError as exc:
            results.append(FileCheck(pin.name, "unreadable", str(exc.strerror or exc)))
            continue
        if actual == pin.sha256:
            results.append(FileCheck(pin.name, "ok", actual))
        else:
            results.append(
                FileCheck(pin.name, "mismatch", f"sha256 {actual}, expected {pin.sha256}")
            )
    return results


def require_pins(model_dir: Path, source: ModelSource, what: str) -> None:
    """Raise `ModelError` listing every pinned file that is missing or does not match.

    `what` names the thing being checked for the message, e.g. "the archive from <url>".
    """
    failures = [c for c in check_pins(model_dir, source) if c.failed]
    if not failures:
        return
    listing = "; ".join(f"{c.name}: {c.status} ({c.detail})" for c in failures)
    raise ModelError(
        f"{what} does not match the pins of {source.id} in the model manifest: {listing}. "
        "Nothing was installed; the previous model (if any) is untouched. If you set a "
        "download URL, check that it serves exactly this model"
    )
