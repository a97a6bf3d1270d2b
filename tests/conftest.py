"""Shared fixtures: where the real assets live (never copied into the repo), and plugins.

The plugins hold the fixtures every module may use: the mosquitto brokers (mqtt_broker)
and the generated `speech` (engine_support).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ("mqtt_broker", "engine_support")

REPO = Path(__file__).resolve().parents[1]


def assets_dir() -> Path:
    """The shared real-data directory, from KWSD_ASSETS or beside the checkout."""
    return Path(os.environ.get("KWSD_ASSETS", REPO.parent / "shared" / "kws-assets")).resolve()


@pytest.fixture(scope="session")
def assets() -> Path:
    path = assets_dir()
    if not (path / "model" / "tokens.txt").is_file():
        pytest.fail(f"KWSD_ASSETS={path} does not hold the kws assets (model/tokens.txt missing)")
    return path
