"""The deployment files agree with the code that reads them.

The add-on's schema, defaults and translations must name exactly the options
`kwsd.deploy.addon.AddonOptions` takes; the compose config must be a valid kwsd config
that sends detections to the compose broker with discovery on; versions must match.
scripts/container-check builds and runs these files; these tests catch drift early.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import yaml

from kwsd import __version__
from kwsd.config import load_settings
from kwsd.deploy.addon import AddonKeyword, AddonOptions, parse_options

REPO = Path(__file__).resolve().parents[1]
ADDON = REPO / "deploy" / "homeassistant" / "kwsd"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_addon_schema_names_exactly_the_options_kwsd_reads() -> None:
    config = _yaml(ADDON / "config.yaml")
    schema = config["schema"]
    assert set(schema) == set(AddonOptions.model_fields)
    (keyword_schema,) = schema["keywords"]
    assert set(keyword_schema) == set(AddonKeyword.model_fields)
    # Required in the schema (no "?") exactly where the model has no default.
    for name, field in AddonOptions.model_fields.items():
        kind = schema[name]
        if isinstance(kind, str):
            assert kind.endswith("?") == (field.default is None), name
    # The defaults the store shows are valid options.
    assert parse_options(json.dumps(config["options"])).command == "wyoming"


def test_addon_translations_cover_every_option_and_the_port() -> None:
    config = _yaml(ADDON / "config.yaml")
    translations = _yaml(ADDON / "translations" / "en.yaml")
    assert set(translations["configuration"]) == set(config["schema"])
    for name, entry in translations["configuration"].items():
        assert entry["name"] and entry["description"], name
    assert set(translations["network"]) == set(config["ports"]) == {"10400/tcp"}


def test_addon_metadata_follows_the_conventions() -> None:
    config = _yaml(ADDON / "config.yaml")
    assert config["version"] == __version__
    assert config["slug"] == "kwsd" and "wyoming" in config["discovery"]
    assert "mqtt:want" in config["services"]
    build = _yaml(ADDON / "build.yaml")
    assert set(build["build_from"]) == set(config["arch"])
    assert all(image.endswith(f":{config['version']}") for image in build["build_from"].values())
    repository = _yaml(REPO / "deploy" / "homeassistant" / "repository.yaml")
    assert repository["name"] and repository["url"]
    for name in ("DOCS.md", "README.md", "CHANGELOG.md", "Dockerfile"):
        assert (ADDON / name).is_file(), name
    assert (ADDON / "run.sh").stat().st_mode & 0o111
    assert "kwsd container addon" in (ADDON / "run.sh").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["version"] == __version__


def test_compose_runs_kwsd_with_mosquitto_and_a_config_that_reaches_them() -> None:
    compose = _yaml(REPO / "compose.yaml")
    kwsd, broker = compose["services"]["kwsd"], compose["services"]["mosquitto"]
    assert kwsd["build"]["dockerfile"] == "Containerfile"
    assert "10400:10400" in kwsd["ports"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in kwsd["volumes"]}
    assert mounts["/data"] == "kwsd-data"
    config_path = REPO / mounts["/config"] / "config.toml"
    settings = load_settings(config_path)
    assert settings.mqtt.host == "mosquitto" and settings.mqtt.host in compose["services"]
    assert settings.mqtt.port == 1883 and "1883:1883" in broker["ports"]
    assert settings.homeassistant.discovery
    assert settings.wyoming.enabled and settings.wyoming.uri.endswith(":10400")
    assert settings.keywords.items
    mosquitto_conf = (
        REPO
        / next(v.split(":")[0] for v in broker["volumes"] if v.split(":")[1] == "/mosquitto/config")
        / "mosquitto.conf"
    )
    assert "listener 1883" in mosquitto_conf.read_text()


def test_containerfile_contract() -> None:
    text = (REPO / "Containerfile").read_text()
    assert "ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim" in text
    assert 'VOLUME ["/data", "/config"]' in text and "EXPOSE 10400" in text
    assert "USER ${KWSD_UID}:${KWSD_UID}" in text and "ARG KWSD_UID=1000" in text
    assert 'CMD ["run"]' in text and "HEALTHCHECK" in text and "kwsd.deploy.probe" in text
    assert "--require-hashes" in text
