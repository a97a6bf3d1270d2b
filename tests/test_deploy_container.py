"""The container entrypoint (`kwsd container start`) and its HEALTHCHECK probe, run for real.

Each test runs the entrypoint as the image does, in a process of its own: it execs kwsd,
serves real sockets, reads a microphone through the PulseAudio path (`parec` stood in
by a player of espeak-ng speech), and the probe asks the running server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
from deploy_support import (
    KwsdProcess,
    clean_env,
    fake_parec,
    speech_wav,
    wyoming_detection,
    wyoming_models,
)
from mqtt_broker import free_port
from test_model_download import MODEL_ID, _build_tarball, _release_files

from kwsd.cli import build_parser
from kwsd.config import load_settings
from kwsd.deploy.container import (
    KWSD_COMMANDS,
    health_targets,
    plan_start,
    pulse_capture,
)
from kwsd.deploy.probe import HealthState, Target, probe, write_state
from kwsd.health import CheckResult, HealthServer, health_source
from kwsd.metrics import Metrics
from kwsd.model.locations import source_checkout_models_dir


@pytest.fixture(scope="module")
def padded_speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return speech_wav(tmp_path_factory.mktemp("speech"))


def _state(tmp_path: Path) -> Path:
    return tmp_path / "tmp" / "kwsd-container-health.json"


# ---------------------------------------------------------------------------- planning


@pytest.mark.parametrize(
    ("args", "argv", "is_kwsd"),
    [
        ([], ("run",), True),
        (["kwsd"], ("run",), True),
        (["kwsd", "wyoming", "-k", "HEY"], ("wyoming", "-k", "HEY"), True),
        (["models", "list"], ("models", "list"), True),
        (["--version"], ("--version",), True),
        (["bash", "-l"], ("bash", "-l"), False),
    ],
)
def test_plan_normalises_the_command(args: list[str], argv: tuple[str, ...], is_kwsd: bool) -> None:
    plan = plan_start(args, {}, Path("/nonexistent/config.toml"))
    assert (plan.argv, plan.is_kwsd) == (argv, is_kwsd)


def test_plan_uses_the_config_volume_only_when_nothing_else_was_chosen(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    assert plan_start(["run"], {}, config).env == {}  # no file yet
    config.write_text('site_id = "kitchen"\n')
    assert plan_start(["run"], {}, config).env == {"KWSD_CONFIG": str(config)}
    assert plan_start(["run"], {"KWSD_CONFIG": "/etc/k.toml"}, config).env == {}
    assert plan_start(["run", "--config", "/x.toml"], {}, config).env == {}


def test_known_commands_are_exactly_the_cli_commands() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == KWSD_COMMANDS


def test_health_targets_follow_the_settings(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    settings = load_settings(
        empty,
        {"health": {"enabled": True, "host": "0.0.0.0", "port": 9999},
         "wyoming": {"enabled": True, "uri": "tcp://0.0.0.0:10400"}},
    )  # fmt: skip
    assert health_targets("run", settings) == (
        Target("http", "http://127.0.0.1:9999/healthz"),
        Target("wyoming", "tcp://127.0.0.1:10400"),
    )
    unix = load_settings(empty, {"wyoming": {"uri": "unix:///run/kwsd.sock"}})
    assert health_targets("wyoming", unix) == (Target("wyoming", "unix:///run/kwsd.sock"),)
    assert health_targets("run", unix) == ()


def test_pulse_capture_only_for_a_microphone_behind_pulse_server(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    mic = load_settings(empty, {"audio": {"device": "alsa_input.usb", "sample_rate": 48000}})
    command = pulse_capture(mic, {"PULSE_SERVER": "unix:/run/pulse/native"})
    assert command is not None
    assert "--rate=48000" in command and "--device=alsa_input.usb" in command
    assert pulse_capture(mic, {}) is None
    stdin = load_settings(empty, {"audio": {"source": "stdin"}})
    assert pulse_capture(stdin, {"PULSE_SERVER": "x"}) is None


# ---------------------------------------------------------------------------- the probe


def test_probe_reports_missing_state_and_error_state(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    assert probe(path) == ["kwsd has not started yet (no health state written by the entrypoint)"]
    write_state(HealthState(error="option `keywords` is required"), path)
    assert probe(path) == ["option `keywords` is required"]
    write_state(HealthState(targets=()), path)
    assert probe(path) == []


async def test_probe_passes_on_the_reasons_of_an_unhealthy_endpoint(tmp_path: Path) -> None:
    port = free_port()
    server = HealthServer(
        health_source(lambda: CheckResult("audio", False, "no audio for 9.0 s")),
        Metrics(), host="127.0.0.1", port=port,
    )  # fmt: skip
    await server.start()
    try:
        path = tmp_path / "health.json"
        write_state(HealthState((Target("http", f"http://127.0.0.1:{port}/healthz"),)), path)
        problems = await asyncio.to_thread(probe, path)
    finally:
        await server.close()
    assert len(problems) == 1
    assert "HTTP 503" in problems[0] and "no audio for 9.0 s" in problems[0]


# ---------------------------------------------------------------------------- the entrypoint


def test_entrypoint_execs_kwsd_wyoming_and_the_probe_follows_it(
    assets: Path, tmp_path: Path, padded_speech: Path
) -> None:
    port = free_port()
    env = clean_env(tmp_path, assets)
    args = ["container", "start", "wyoming", "-k", "HEY COMPUTER",
            "--uri", f"tcp://127.0.0.1:{port}"]  # fmt: skip
    child = KwsdProcess(args, env, tmp_path / "log")
    try:
        names = wyoming_models(port, child.running, lambda: child.log)
        assert names == ["hey_computer"]
        assert wyoming_detection(port, padded_speech) == "hey_computer"
        assert probe(_state(tmp_path)) == []
        # The entrypoint became kwsd (exec): same process, and SIGTERM stops it cleanly.
        cmdline = Path(f"/proc/{child.process.pid}/cmdline").read_bytes().split(b"\0")
        assert b"wyoming" in cmdline and b"container" not in cmdline
        assert child.stop() == 0
    finally:
        child.close()
    (problem,) = probe(_state(tmp_path), timeout=2)
    assert f"Wyoming server tcp://127.0.0.1:{port}" in problem


def test_entrypoint_reads_a_pulse_microphone_through_stdin(
    assets: Path, tmp_path: Path, padded_speech: Path
) -> None:
    """PULSE_SERVER set: audio comes from `parec` via kwsd's stdin source, health is up."""
    bin_dir = tmp_path / "bin"
    parec_args = fake_parec(bin_dir, padded_speech)
    health_port = free_port()
    env = clean_env(
        tmp_path, assets,
        PATH=f"{bin_dir}:/usr/bin:/bin", PULSE_SERVER="unix:/run/pulse/native",
        KWSD_HEALTH__ENABLED="true", KWSD_HEALTH__PORT=str(health_port),
    )  # fmt: skip
    child = KwsdProcess(["container", "start", "run", "-k", "HEY COMPUTER"], env, tmp_path / "log")
    try:
        assert child.process.stdout is not None
        line = child.process.stdout.readline()
        detection = json.loads(line)
        assert detection["keyword"] == "HEY COMPUTER"
        assert "the microphone is read with `parec" in child.log
        assert parec_args.read_text().split() == [
            "--raw", "--format=s16le", "--rate=16000", "--channels=1", "--latency-msec=100",
            "--client-name=kwsd",
        ]  # fmt: skip
        deadline = time.monotonic() + 15
        while (problems := probe(_state(tmp_path))) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert problems == []
        assert child.stop() == 0
    finally:
        child.close()


def test_entrypoint_explains_an_unwritable_data_volume(assets: Path, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "data-file"
    not_a_dir.write_text("")
    env = clean_env(tmp_path, assets, KWSD_DATA_DIR=str(not_a_dir))
    child = KwsdProcess(["container", "start", "wyoming", "-k", "HEY"], env, tmp_path / "log")
    assert child.process.wait(60) == 3
    child.close()
    assert f"{not_a_dir} (data_dir, kwsd's state) is not writable" in child.log
    assert "chown" in child.log and "named volume" in child.log


def test_entrypoint_first_start_downloads_into_the_data_volume_with_sha256_pins(
    assets: Path, tmp_path: Path
) -> None:
    """No model and no KWSD_ASSETS: the pinned download of the shipped manifest runs.

    The archive holds a stand-in under the int8 encoder's name, so the pin refuses it:
    proof that the first start checks the sha256 pins and installs nothing unverified.
    """
    archive = tmp_path / "sherpa-onnx-kws.tar.bz2"
    _build_tarball(archive, _release_files(assets))
    env = clean_env(tmp_path, assets, KWSD_MODEL__ONNX_URL=str(archive))
    del env["KWSD_ASSETS"]
    started = time.time()
    child = KwsdProcess(["container", "start", "wyoming", "-k", "HEY"], env, tmp_path / "log")
    assert child.process.wait(120) == 4
    child.close()
    assert (
        "sha256" in child.log and "encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx" in child.log
    )
    # In the image that is /data/kwsd/models ($XDG_CACHE_HOME=/data); a source checkout
    # keeps its models in the checkout's models/ instead.
    models = source_checkout_models_dir() or tmp_path / "cache" / "kwsd" / "models"
    assert not (models / MODEL_ID).exists() or (models / MODEL_ID).stat().st_mtime < started

    if (models / MODEL_ID).exists():
        return  # a real model is installed in this checkout: nothing is "missing" here
    env["KWSD_MODEL__ALLOW_DOWNLOAD"] = "false"
    child = KwsdProcess(["container", "start", "wyoming", "-k", "HEY"], env, tmp_path / "log2")
    assert child.process.wait(60) == 78
    child.close()
    assert f"no model installed in {models}" in child.log


def test_entrypoint_runs_other_commands_as_given(assets: Path, tmp_path: Path) -> None:
    env = clean_env(tmp_path, assets)
    child = KwsdProcess(["container", "start", "sh", "-c", "echo from-sh"], env, tmp_path / "log")
    assert child.process.communicate(timeout=30)[0] == b"from-sh\n"
    assert child.process.returncode == 0
    child.close()


def test_sigterm_reaches_kwsd_run_through_the_entrypoint(
    assets: Path, tmp_path: Path, padded_speech: Path
) -> None:
    env = clean_env(tmp_path, assets)
    args = [
        "container",
        "start",
        "run",
        "--file",
        str(padded_speech),
        "--loop",
        "-k",
        "HEY COMPUTER",
    ]
    child = KwsdProcess(args, env, tmp_path / "log")
    try:
        assert child.process.stdout is not None
        assert json.loads(child.process.stdout.readline())["keyword"] == "HEY COMPUTER"
        child.process.send_signal(signal.SIGTERM)
        assert child.process.wait(10) == 0
    finally:
        child.close()
