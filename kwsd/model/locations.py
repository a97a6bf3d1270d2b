"""Where installed models live when nobody said otherwise.

In a source checkout that is the repository's `models/` directory (git-ignored), so a
developer's models sit beside the manifest they came from and survive `pip install -e`.
Everywhere else it is the platform's user cache directory: a model is re-downloadable
data, which is what a cache is for (`~/.cache/kwsd/models`, `~/Library/Caches/kwsd/models`,
and `/var/cache/kwsd/models` under the system service, whose unit sets XDG_CACHE_HOME).
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

import kwsd

APP_NAME = "kwsd"


def source_checkout_models_dir() -> Path | None:
    """The checkout's `models/`, if kwsd runs from a source tree rather than site-packages.

    Both `models/` and `pyproject.toml` must sit beside the package: site-packages has
    neither together, even when some other distribution installed a top-level `models`.
    """
    repo = Path(kwsd.__file__).resolve().parent.parent
    models = repo / "models"
    if models.is_dir() and (repo / "pyproject.toml").is_file():
        return models
    return None


def user_models_dir() -> Path:
    return Path(platformdirs.user_cache_dir(APP_NAME)) / "models"


def default_models_dir() -> Path:
    """The directory `kwsd models pull` installs into and the daemon looks in by default."""
    return source_checkout_models_dir() or user_models_dir()
