"""The keyword registry with the real tokenizer: runtime changes, reloads, persistence,
precedence; and the MQTT commands mapped onto it."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import structlog

from kwsd.backends.base import ModelDefaults
from kwsd.config import load_settings
from kwsd.errors import KeywordError
from kwsd.keywords import KEYWORD_FIELDS, KeywordSpec, Tokenizer
from kwsd.mqtt.commands import CommandResult, RegistryCommands, parse_command
from kwsd.mqtt.payloads import KeywordsPayload
from kwsd.registry import (
    STATE_FILE_NAME,
    ConfigKeywords,
    KeywordChange,
    KeywordCompiler,
    KeywordRegistry,
    PauseChange,
    Refusal,
    RegistryState,
    canonical_spec,
    config_keywords,
    read_state,
)


@pytest.fixture(scope="module")
def compiler(assets: Path) -> KeywordCompiler:
    model = assets / "model"
    return KeywordCompiler(Tokenizer(model / "tokens.txt", model / "bpe.model"), ModelDefaults())


def config(*phrases: str, threshold: float | None = None) -> ConfigKeywords:
    return ConfigKeywords(tuple(KeywordSpec(phrase=p) for p in phrases), threshold=threshold)


def registry(compiler: KeywordCompiler, tmp_path: Path) -> KeywordRegistry:
    return KeywordRegistry(compiler, tmp_path / STATE_FILE_NAME)


def specs(*phrases: str) -> list[KeywordSpec]:
    return [KeywordSpec(phrase=p) for p in phrases]


def applied(result: KeywordChange | Refusal) -> KeywordChange:
    assert isinstance(result, KeywordChange), result
    return result


def refused(result: KeywordChange | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


async def command(reg: KeywordRegistry, verb: str, payload: str) -> CommandResult:
    """An MQTT command as the daemon's command channel hands it to the registry."""
    return await RegistryCommands(reg).handle(parse_command(verb, payload.encode()))


async def test_config_list_loads_with_version_one(
    compiler: KeywordCompiler, tmp_path: Path
) -> None:
    reg = registry(compiler, tmp_path)
    state = reg.load(config("HEY COMPUTER", "LIGHTS OFF"))
    assert state.keyword_set.displays() == ["HEY COMPUTER", "LIGHTS OFF"]
    assert (state.version, state.origin, state.paused) == (1, "config", False)
    assert reg.keyword_set.version == 1
    assert not (tmp_path / STATE_FILE_NAME).exists()


async def test_set_is_applied_persisted_and_restored(
    compiler: KeywordCompiler, tmp_path: Path
) -> None:
    reg = registry(compiler, tmp_path)
    reg.load(config("HEY COMPUTER"))
    seen: list[RegistryState] = []
    reg.add_listener(seen.append)
    result = applied(await reg.set(specs("OPEN THE GARAGE", "GOOD NIGHT")))
    assert result.version == 2
    assert (result.added, result.removed) == (("OPEN THE GARAGE", "GOOD NIGHT"), ("HEY COMPUTER",))
    assert reg.keyword_set.displays() == ["OPEN THE GARAGE", "GOOD NIGHT"]
    assert seen[-1].version == 2 and seen[-1].origin == "mqtt"
    payload = json.loads(KeywordsPayload.from_state(seen[-1]).to_json())
    assert [k["phrase"] for k in payload["keywords"]] == ["OPEN THE GARAGE", "GOOD NIGHT"]

    saved = read_state(tmp_path / STATE_FILE_NAME)
    assert saved is not None and saved.version == 2
    assert saved.config_digest == config("HEY COMPUTER").digest
    assert os.listdir(tmp_path) == [STATE_FILE_NAME], "the atomic write left a temporary file"

    # A restart with the same configuration gets the MQTT list back.
    again = registry(compiler, tmp_path)
    state = again.load(config("HEY COMPUTER"))
    assert state.keyword_set.displays() == ["OPEN THE GARAGE", "GOOD NIGHT"]
    assert (state.version, state.origin) == (2, "mqtt")


async def test_changed_config_wins_over_saved_list(
    compiler: KeywordCompiler, tmp_path: Path
) -> None:
    reg = registry(compiler, tmp_path)
    reg.load(config("HEY COMPUTER"))
    applied(await reg.set(specs("GOOD NIGHT")))

    again = registry(compiler, tmp_path)
    state = again.load(config("HEY COMPUTER", "LIGHTS OFF"))
    assert state.keyword_set.displays() == ["HEY COMPUTER", "LIGHTS OFF"]
    assert state.origin == "config"
    assert state.version == 3, "versions keep increasing across the switch"
    assert not (tmp_path / STATE_FILE_NAME).exists(), "the stale MQTT list must be dropped"
    # Reverting the config later does not resurrect the dropped list.
    third = registry(compiler, tmp_path)
    assert third.load(config("HEY COMPUTER")).keyword_set.displays() == ["HEY COMPUTER"]


async def test_invalid_set_is_refused_and_nothing_changes(
    compiler: KeywordCompiler, tmp_path: Path
) -> None:
    reg = registry(compiler, tmp_path)
    reg.load(config("HEY COMPUTER"))
    applied(await reg.set(specs("GOOD NIGHT")))
    before = (tmp_path / STATE_FILE_NAME).read_bytes()
    result = refused(await reg.set(specs("LIGHT 2", "LIGHTS OFF")))
    assert "'2'" in result.error and "as words" in result.error
    assert "Nothing was changed" in result.error
    assert result.version == 2
    assert reg.keyword_set.displays() == ["GOOD NIGHT"]
    assert (tmp_path / STATE_FILE_NAME).read_bytes() == before


async def test_add_replaces_same_keyword_and_remove_by_name(
    compiler: KeywordCompiler, tmp_path: Path
) -> None:
    reg = registry(compiler, tmp_path)
    reg.load(config("HEY COMPUTER", "LIGHTS OFF"))
    result = applied(
        await reg.add([KeywordSpec(phrase="lights off", threshold=0.4), *specs("GOOD NIGHT")])
    )
    assert (result.added, result.removed) == (("GOOD NIGHT",), ())  # LIGHTS OFF re-tuned
    ks = reg.keyword_set
    assert ks.displays() == ["HEY COMPUTER", "LIGHTS OFF", "GOOD NIGHT"]
    assert ks.keywords[1].threshold == pytest.approx(0.4)

    assert applied(await reg.remove(["hey computer"])).removed == ("HEY COMPUTER",)
    assert reg.keyword_set.displays() == ["LIGHTS OFF", "GOOD NIGHT"]

    missing = refused(await reg.remove(["OPEN SESAME"]))
    assert "OPEN SESAME" in missing.error
    assert "LIGHTS OFF" in missing.error  # lists what can be removed
    assert reg.keyword_set.displays() == ["LIGHTS OFF", "GOOD NIGHT"]


async def test_empty_set_is_allowed_with_a_warning(
    compiler: KeywordCompiler, tmp_path: Path
) -> None:
    reg = registry(compiler, tmp_path)
    reg.load(config("HEY COMPUTER"))
    result = applied(await reg.set([]))
    assert any("empty" in w for w in result.warnings)
    assert len(reg.keyword_set) == 0


async def test_reload(compiler: KeywordCompiler, tmp_path: Path) -> None:
    reg = registry(compiler, tmp_path)
    reg.load(config("HEY COMPUTER"))
    applied(await reg.set(specs("GOOD NIGHT")))
    # Same configured keywords (e.g. SIGHUP after an unrelated edit): the MQTT list stays.
    assert await reg.reload(config("HEY COMPUTER"))
    assert reg.keyword_set.displays() == ["GOOD NIGHT"]
    # A bad configuration is rejected, logged, and the running list stays.
    with structlog.testing.capture_logs() as logs:
        assert not await reg.reload(config("HEY COMPUTER", "R2D2"))
    assert reg.keyword_set.displays() == ["GOOD NIGHT"]
    errors = [e for e in logs if e["log_level"] == "error"]
    assert errors and "R2D2" in errors[0]["error"]
    # A real change wins over the MQTT list and drops it.
    assert await reg.reload(config("HEY COMPUTER", "LIGHTS OFF"))
    assert reg.keyword_set.displays() == ["HEY COMPUTER", "LIGHTS OFF"]
    assert reg.origin == "config"
    assert not (tmp_path / STATE_FILE_NAME).exists()
    # A threshold change alone is a configuration change too.
    assert await reg.reload(config("HEY COMPUTER", "LIGHTS OFF", threshold=0.5))
    assert reg.keyword_set.keywords[0].threshold == pytest.approx(0.5)


async def test_pause_and_resume(compiler: KeywordCompiler, tmp_path: Path) -> None:
    reg = registry(compiler, tmp_path)
    reg.load(config("HEY COMPUTER"))
    seen: list[RegistryState] = []
    reg.add_listener(seen.append)
    assert reg.pause("tv") == PauseChange(paused=True, muted=True, version=1)
    assert reg.paused and reg.mute.muted
    assert seen[-1].paused
    assert json.loads(KeywordsPayload.from_state(seen[-1]).to_json())["paused"] is True
    reg.mute.add("hermes", "ttsSay")
    assert reg.resume() == PauseChange(paused=False, muted=True, version=1)
    assert not reg.paused and not seen[-1].paused
    assert reg.version == 1, "pausing does not change the keyword list"


async def test_corrupt_state_file_is_ignored(compiler: KeywordCompiler, tmp_path: Path) -> None:
    (tmp_path / STATE_FILE_NAME).write_text("{not json")
    reg = registry(compiler, tmp_path)
    with structlog.testing.capture_logs() as logs:
        state = reg.load(config("HEY COMPUTER"))
    assert state.keyword_set.displays() == ["HEY COMPUTER"]
    assert any("corrupt" in e["event"] for e in logs)


def test_invalid_config_without_saved_list_is_an_error(
    compiler: KeywordCompiler, tmp_path: Path
) -> None:
    with pytest.raises(KeywordError, match="as words"):
        registry(compiler, tmp_path).load(config("ROOM 101"))


def test_config_keywords_reads_inline_and_file(tmp_path: Path) -> None:
    words = tmp_path / "keywords.txt"
    words.write_text("# my keywords\nturn on the lights\n▁GOOD ▁NIGHT :1.5 #0.3 @good_night\n")
    settings = load_settings(
        None,
        {
            "keywords.phrases": ["HEY COMPUTER"],
            "keywords.file": str(words),
            "search.threshold": 0.3,
            "data_dir": str(tmp_path),
        },
    )
    cfg = config_keywords(settings.keywords, settings.search)
    assert [s.phrase or s.display for s in cfg.specs] == [
        "HEY COMPUTER",
        "turn on the lights",
        "good_night",
    ]
    assert cfg.threshold == 0.3
    digest = cfg.digest
    words.write_text("turn on the lights\n")
    assert config_keywords(settings.keywords, settings.search).digest != digest

    words.unlink()
    with pytest.raises(KeywordError, match="does not exist"):
        config_keywords(settings.keywords, settings.search)


async def test_mqtt_commands_map_onto_the_registry(
    compiler: KeywordCompiler, tmp_path: Path
) -> None:
    reg = registry(compiler, tmp_path)
    reg.load(config("HEY COMPUTER"))
    added = await command(reg, "keywords/add", '["GOOD NIGHT"]')
    assert added == CommandResult(ok=True, keywords_version=2)
    assert reg.keyword_set.displays() == ["HEY COMPUTER", "GOOD NIGHT"]
    emptied = await command(reg, "keywords/set", "[]")
    assert emptied.ok and emptied.keywords_version == 3
    assert any("empty" in w for w in emptied.warnings)
    bad = await command(reg, "keywords/set", '["ROOM 101"]')
    assert (bad.ok, bad.keywords_version) == (False, 3)
    assert bad.error is not None and "Nothing was changed" in bad.error
    missing = await command(reg, "keywords/remove", '["OPEN SESAME"]')
    assert not missing.ok and missing.error is not None and "OPEN SESAME" in missing.error
    assert await command(reg, "pause", '{"reason": "tv"}') == CommandResult(
        ok=True, keywords_version=3
    )
    assert reg.mute.reasons == {("pause", "tv")}
    assert (await command(reg, "resume", '{"reason": "tv"}')).ok and not reg.mute.muted


def test_config_digest_is_pinned_and_independent_of_the_mqtt_payload() -> None:
    """A saved MQTT list is kept only while the digest matches: a digest that changed
    between versions would silently drop every user's saved list on upgrade."""
    cfg = ConfigKeywords(
        (
            KeywordSpec(phrase="HEY COMPUTER"),
            KeywordSpec(
                pieces=("▁", "L", "IGHT", "▁UP"),
                boost=2.0,
                threshold=0.25,
                display="LIGHT_UP",
                alternates=(("▁LI", "GHT", "▁UP"),),
            ),
            KeywordSpec(phrase="Café au lait", display="Café"),
        ),
        boost=1.5,
    )
    assert cfg.digest == "4685abb5b63fa4918995039372edb32f53ac81544825c50f892e36793c616b3f"
    assert ConfigKeywords(()).digest == (
        "e7b63ed0162bbe45e1b4f9b5c9841023e22ad55dc4d9e3568071d8c89b76b9f6"
    )
    assert canonical_spec(cfg.specs[1]) == {
        "pieces": ["▁", "L", "IGHT", "▁UP"],
        "boost": 2.0,
        "threshold": 0.25,
        "display": "LIGHT_UP",
        "alternates": [["▁LI", "GHT", "▁UP"]],
    }
    # Every KeywordSpec field takes part: changing any one of them changes the digest.
    variants = {
        "phrase": "HEY COMPUTERS",
        "pieces": ("▁HE", "Y"),
        "boost": 3.0,
        "threshold": 0.5,
        "display": "HEY",
        "alternates": (("▁HE", "Y"),),
    }
    assert set(variants) == set(KEYWORD_FIELDS)
    for name, value in variants.items():
        changed = ConfigKeywords(
            (dataclasses.replace(cfg.specs[0], **{name: value}), *cfg.specs[1:]), boost=1.5
        )
        assert changed.digest != cfg.digest, name
