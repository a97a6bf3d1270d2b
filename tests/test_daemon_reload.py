"""Reloading a running daemon: config/keywords file edits and SIGHUP; bad edits are refused."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path
from typing import Any

import structlog
from async_support import wait_until
from daemon_support import (
    json_lines,
    make_settings,
    running,
)

from kwsd.config import Settings
from kwsd.daemon import Daemon


def replace_file(path: Path, text: str) -> None:
    """Save the way editors do: write a new file, then rename it over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def daemon_for(tmp_path: Path, assets: Path, speech: Path, config: Path, **extra: Any) -> Daemon:
    values = {"audio.loop": True, **extra}

    def load() -> Settings:
        return make_settings(tmp_path, assets, speech, config=config, **values)

    return Daemon(load(), reload_settings=load, stdout=io.StringIO(), install_signal_handlers=False)


def displays(daemon: Daemon) -> list[str]:
    assert daemon.registry is not None
    return daemon.registry.keyword_set.displays()


async def test_config_edit_reloads_and_bad_edits_keep_the_old_keywords(
    tmp_path: Path, assets: Path, speech: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[keywords]\nphrases = ["HEY COMPUTER"]\n')
    daemon = daemon_for(tmp_path, assets, speech, config)
    async with running(daemon):
        assert daemon.pipeline is not None
        stats = daemon.pipeline.stats
        await wait_until(lambda: stats.detections >= 1, what="a first detection")

        replace_file(config, '[keywords]\nphrases = ["TURN ON THE LIGHTS"]\n')
        await wait_until(lambda: displays(daemon) == ["TURN ON THE LIGHTS"], what="the reload")
        await wait_until(lambda: 2 in stats.keyword_versions, what="the engine swap")
        seen = stats.detections
        await wait_until(lambda: stats.detections > seen + 1, what="detections after reload")

        for bad in (
            '[keywords]\nphrases = ["ROOM 101"]\n',  # not speakable by the model
            '[keywords]\nphrases = ["HEY COMPUTER"\n',  # not TOML
            '[keywords]\nphrase = ["HEY COMPUTER"]\n',  # unknown key
        ):
            reloads = daemon.reloads
            with structlog.testing.capture_logs() as logs:
                config.write_text(bad)
                await wait_until(lambda r=reloads: daemon.reloads > r, what="the reload attempt")
                await wait_until(lambda: any(e["log_level"] == "error" for e in logs))
            assert displays(daemon) == ["TURN ON THE LIGHTS"]
            assert daemon.registry is not None and daemon.registry.version == 2
            errors = [e for e in logs if e["log_level"] == "error"]
            assert "rejected" in errors[0]["event"], errors
        seen = stats.detections
        await wait_until(lambda: stats.detections > seen, what="spotting after bad edits")
    keywords = {d["keyword"] for d in json_lines(daemon._stdout)}  # type: ignore[arg-type]
    assert keywords == {"HEY COMPUTER", "TURN ON THE LIGHTS"}


async def test_keywords_file_edit_is_picked_up(tmp_path: Path, assets: Path, speech: Path) -> None:
    words = tmp_path / "keywords.txt"
    words.write_text("hey computer\n")
    config = tmp_path / "config.toml"
    config.write_text('[keywords]\nfile = "keywords.txt"\n')
    daemon = daemon_for(tmp_path, assets, speech, config)
    async with running(daemon):
        assert displays(daemon) == ["HEY COMPUTER"]
        words.write_text("hey computer\n▁TURN ▁ON ▁THE ▁ L IGHT S :2.0 @lights_on\n")
        await wait_until(lambda: displays(daemon) == ["HEY COMPUTER", "lights_on"])


async def test_sighup_reloads_without_a_watcher(tmp_path: Path, assets: Path, speech: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[keywords]\nphrases = ["HEY COMPUTER"]\nwatch = false\n')
    values = {"audio.loop": True}

    def load() -> Settings:
        return make_settings(tmp_path, assets, speech, config=config, **values)

    daemon = Daemon(load(), reload_settings=load, stdout=io.StringIO())
    async with running(daemon):
        config.write_text('[keywords]\nphrases = ["GOOD NIGHT"]\nwatch = false\n')
        assert displays(daemon) == ["HEY COMPUTER"], "no watcher: nothing changes by itself"
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_until(lambda: displays(daemon) == ["GOOD NIGHT"], what="the SIGHUP reload")
        assert daemon.reloads == 1


async def test_reload_names_settings_that_need_a_restart(
    tmp_path: Path, assets: Path, speech: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[keywords]\nphrases = ["HEY COMPUTER"]\n')
    daemon = daemon_for(tmp_path, assets, speech, config)
    async with running(daemon):
        with structlog.testing.capture_logs() as logs:
            replace_file(
                config,
                '[keywords]\nphrases = ["GOOD NIGHT"]\n[search]\nbeam = 8\n'
                "refractory_seconds = 2.5\n",
            )
            await wait_until(lambda: displays(daemon) == ["GOOD NIGHT"], what="the reload")
        warnings = [e for e in logs if "restart" in e["event"]]
        assert warnings and warnings[0]["settings"] == ["search.beam"], logs
        assert daemon.pipeline is not None
        assert daemon.pipeline.gate.refractory_seconds == 2.5  # applied live
