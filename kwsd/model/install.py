"""Atomic installs: a model directory is either the old complete model or the new one.

Everything is downloaded and unpacked into a hidden staging directory *inside the
models directory* (same filesystem, so the final step is a rename, not a copy), checked
there, and only then swapped into place. A failed or interrupted pull therefore never
leaves a half-written model where the daemon looks, and never destroys a model that
worked. A crash can at worst leave a hidden `.kwsd-partial-*` directory behind, which the
next install removes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog

from kwsd.errors import ModelError

STAGING_PREFIX = ".kwsd-partial-"
_STALE_SECONDS = 24 * 3600

log = structlog.get_logger(__name__)


def _remove_stale(models_dir: Path) -> None:
    """Remove staging directories a killed pull left behind (older than a day, so a pull
    running concurrently in another process is never disturbed)."""
    now = time.time()
    for path in models_dir.glob(f"{STAGING_PREFIX}*"):
        try:
            if now - path.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
                log.info("removed an abandoned partial download", path=str(path))
        except OSError:
            continue


@contextmanager
def staging_dir(models_dir: Path) -> Iterator[Path]:
    """A fresh hidden directory in `models_dir`, removed with all its contents on exit."""
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale(models_dir)
        path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=models_dir))
    except OSError as exc:
        raise ModelError(
            f"cannot write to the models directory {models_dir}: {exc.strerror or exc}; "
            "choose another with --dest / model.dir"
        ) from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def swap_into_place(new: Path, target: Path, staging: Path) -> None:
    """Move the verified directory `new` to `target`, replacing an old install.

    The old install is first renamed into `staging` (removed with it afterwards) and put
    back if the second rename fails. Both renames stay within one directory's filesystem.
    """
    previous = staging / "previous"
    had_previous = target.exists() or target.is_symlink()
    try:
        if had_previous:
            os.replace(target, previous)
        try:
            os.replace(new, target)
        except OSError:
            if had_previous:
                os.replace(previous, target)
            raise
    except OSError as exc:
        raise ModelError(
            f"could not move the new model into {target}: {exc.strerror or exc}; the previous "
            "model is unchanged"
        ) from None
