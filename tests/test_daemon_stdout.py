"""The whole daemon without a broker: real file source, fbank, encoder, search, stdout."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from async_support import wait_until
from daemon_support import (
    json_lines,
    make_settings,
    running,
)
from engine_support import espeak_wav

from kwsd.backends.base import Backend
from kwsd.backends.replay import ReplayBackend, read_frames
from kwsd.cli import main
from kwsd.daemon import Daemon
from kwsd.errors import ExitCode


async def test_detections_are_json_lines_on_stdout(
    tmp_path: Path, assets: Path, speech: Path
) -> None:
    settings = make_settings(
        tmp_path, assets, speech, **{"keywords.phrases": ["HEY COMPUTER", "TURN ON THE LIGHTS"]}
    )
    out = io.StringIO()
    daemon = Daemon(settings, stdout=out, install_signal_handlers=False)
    assert await daemon.run() == 0  # the file ends: the daemon drains and exits cleanly
    lines = json_lines(out)
    assert [d["keyword"] for d in lines] == ["HEY COMPUTER", "TURN ON THE LIGHTS"]
    hey = lines[0]
    assert 0.8 <= hey["start"] <= 1.3 and hey["start"] < hey["end"] <= 1.8
    assert hey["site"] == "testsite"
    assert "stand-in" in hey["model"]
    assert set(hey) >= {"id", "tokens", "score", "time", "phrase"}
    assert daemon.pipeline is not None and daemon.pipeline.stats.detections == 2
    # ~3.2 s of speech beats 8+ times; the shutdown padding's chunks run but do not beat
    assert 8 <= daemon.heartbeat.beats < daemon.pipeline.stats.chunks
    metrics = daemon.metrics.render()[0].decode()
    assert 'kwsd_detections_total{keyword="HEY COMPUTER"} 1.0' in metrics
    assert "kwsd_keywords 2.0" in metrics


async def test_replayed_real_encoder_frames_find_light_up(tmp_path: Path, assets: Path) -> None:
    """Real speech (light_up.wav) through file source + fbank; the encoder output is the
    reference encoder's, replayed, so the real decoder/joiner/search must find LIGHT UP."""
    frames = read_frames(assets / "fixtures" / "ref_encoder_light_up.bin")

    def replay(inner: Backend) -> Backend:
        return ReplayBackend(inner, frames)

    settings = make_settings(
        tmp_path,
        assets,
        assets / "audio" / "light_up.wav",
        **{"keywords.entries": [{"phrase": "LIGHT UP", "boost": 2.0, "threshold": 0.25}]},
    )
    out = io.StringIO()
    daemon = Daemon(settings, stdout=out, backend_wrapper=replay, install_signal_handlers=False)
    assert await daemon.run() == 0
    lines = json_lines(out)
    assert len(lines) == 1, lines
    assert lines[0]["keyword"] == "LIGHT UP"
    assert lines[0]["start"] == pytest.approx(3.04, abs=0.041)
    assert lines[0]["tokens"][-1] == "▁UP"


async def test_refractory_period_drops_quick_repeats(tmp_path: Path, assets: Path) -> None:
    twice = espeak_wav(tmp_path / "twice.wav", "hey computer hey computer")
    found = {}
    for seconds in (0.0, 3.0):
        settings = make_settings(
            tmp_path,
            assets,
            twice,
            **{"keywords.phrases": ["HEY COMPUTER"], "search.refractory_seconds": seconds},
        )
        out = io.StringIO()
        daemon = Daemon(settings, stdout=out, install_signal_handlers=False)
        assert await daemon.run() == 0
        found[seconds] = [d["start"] for d in json_lines(out)]
    assert len(found[0.0]) == 2, found
    assert found[3.0] == found[0.0][:1]


async def test_pause_consumes_audio_but_publishes_nothing(
    tmp_path: Path, assets: Path, speech: Path
) -> None:
    settings = make_settings(
        tmp_path, assets, speech, **{"keywords.phrases": ["HEY COMPUTER"], "audio.loop": True}
    )
    out = io.StringIO()
    daemon = Daemon(settings, stdout=out, install_signal_handlers=False)
    async with running(daemon):
        assert daemon.registry is not None and daemon.pipeline is not None
        stats = daemon.pipeline.stats
        await wait_until(lambda: stats.detections >= 1, what="a first detection")
        daemon.mute.pause("test")
        await wait_until(lambda: stats.muted_dropped >= 2, what="detections while muted")
        published = stats.detections
        beats = daemon.heartbeat.beats
        await wait_until(lambda: stats.muted_dropped >= 4, what="more muted detections")
        assert stats.detections == published
        assert daemon.heartbeat.beats > beats, "audio keeps flowing while paused"
        daemon.mute.resume()
        await wait_until(lambda: stats.detections > published, what="detections after resume")
    assert len(json_lines(out)) == stats.detections


def test_missing_model_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "no-model"
    empty.mkdir()
    code = main(
        ["run", "--model-dir", str(empty), "--set", f"data_dir={tmp_path}", "--source", "stdin"]
    )
    assert code == ExitCode.NOT_CONFIGURED == 78


def test_cli_run_prints_detections(tmp_path: Path, assets: Path, speech: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("KWSD_") and k != "NOTIFY_SOCKET"
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kwsd",
            "run",
            "--assets",
            str(assets),
            "--file",
            str(speech),
            "--fast",
            "-k",
            "hey computer",
            "--set",
            f"data_dir={tmp_path}",
            "--log-format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [d["keyword"] for d in lines] == ["HEY COMPUTER"]
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "stand_in_encoder" for e in events)
    assert [e["keyword"] for e in events if e["event"] == "detection"] == ["HEY COMPUTER"]


def test_cli_run_bad_keyword_is_a_clear_error(tmp_path: Path, assets: Path, speech: Path) -> None:
    code = main(
        [
            "run",
            "--assets",
            str(assets),
            "--file",
            str(speech),
            "-k",
            "room 101",
            "--set",
            f"data_dir={tmp_path}",
        ]
    )
    assert code == ExitCode.KEYWORDS
