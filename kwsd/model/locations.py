"""Where installed models live when nobody said otherwise.

In a source checkout that is the repository's `models/` directory (git-ignored), so a
developer's models sit beside the manifest they came from and survive `pip install -e`.
Everywhere else it is the platform's user cache directory: a model is re-downloadable
data, which is what a cache is for (`~/.cache/kwsd/models`, `~/Library/Caches/kwsd/models`).

The system-wide service has one rule, `SYSTEM`, used by everything that names its paths:
`kwsd models pull --system` installs into `SYSTEM.models`, the system unit exports the XDG
variables that make the daemon's own default lookup land on the same directory, and the
installer and README name it. A test holds them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import platformdirs

import kwsd

APP_NAME = "kwsd"


@dataclass(frozen=True)
class SystemLocations:
    """Where the system-wide service keeps things (FHS: state, cache, configuration)."""

    xdg_data_home: Path = Path("/var/lib")
    xdg_cache_home: Path = Path("/var/cache")
    xdg_config_home: Path = Path("/etc")

    @property
    def data(self) -> Path:
        return self.xdg_data_home / APP_NAME

    @property
    def cache(self) -> Path:
        return self.xdg_cache_home / APP_NAME

    @property
    def config(self) -> Path:
        return self.xdg_config_home / APP_NAME

    @property
    def models(self) -> Path:
        """Re-downloadable, so under the cache, as `user_models_dir` is for a user."""
        return self.cache / "models"


SYSTEM = SystemLocations()


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


def default_models_dir(*, system: bool = False) -> Path:
    """The directory `kwsd models pull` installs into and the daemon looks in by default.

    `system=True` is the system-wide service's directory, wherever kwsd is installed.
    """
    if system:
        return SYSTEM.models
    return source_checkout_models_dir() or user_models_dir()
