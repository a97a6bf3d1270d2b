"""`kwsd wyoming` as users run it: a real process, a real socket, a clean SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mqtt_broker import free_port

from kwsd.cli import main
from kwsd.wyoming.event import Event, EventReader, write_event


async def _connect(
    port: int, process: subprocess.Popen[str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect once the server listens (the model loads first)."""
    for _ in range(600):
        if process.poll() is not None:
            raise AssertionError(f"kwsd wyoming exited early: {process.communicate()}")
        try:
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError("kwsd wyoming did not start listening")


async def test_cli_serves_describe_and_stops_on_sigterm(assets: Path, tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KWSD_")}
    env["KWSD_CONFIG"] = str(tmp_path / "none.toml")
    (tmp_path / "none.toml").write_text("")
    argv = [
        sys.executable, "-m", "kwsd", "wyoming", "--assets", str(assets),
        "--uri", f"tcp://127.0.0.1:{port}", "-k", "HEY COMPUTER", "-k", "LIGHTS OFF",
        "--log-format", "json",
    ]  # fmt: skip
    process = subprocess.Popen(  # noqa: ASYNC220 - a long-running child, waited for below
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        reader, writer = await _connect(port, process)
        await write_event(writer, Event("describe"))
        info = await EventReader(reader).read()
        assert info is not None and info.type == "info"
        names = [m["name"] for m in info.data["wake"][0]["models"]]
        assert names == ["hey_computer", "lights_off"]
        writer.close()
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 20)
        assert code == 0, process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_bad_uri_is_a_config_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["wyoming", "--uri", "tcp://nohost", "-k", "HEY COMPUTER"])
    assert code == 3
    assert "wyoming.uri" in capsys.readouterr().err
