"""`kwsd wyoming` as users run it: a real process, a real socket, a clean SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mqtt_broker import free_port
from wyoming.client import AsyncTcpClient
from wyoming_support import espeak_pcm, utterance

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


async def test_cli_with_decode_processes_detects_and_leaves_none_behind(
    assets: Path, tmp_path: Path
) -> None:
    """`--workers 2`: two decode processes of the CLI's own; speech is detected through
    them, and SIGTERM ends them with the server."""
    pcm = espeak_pcm("hey computer, lights off", tmp_path / "s.wav")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KWSD_")}
    env["KWSD_CONFIG"] = str(tmp_path / "none.toml")
    (tmp_path / "none.toml").write_text("")
    argv = [
        sys.executable, "-m", "kwsd", "wyoming", "--assets", str(assets), "--workers", "2",
        "--uri", f"tcp://127.0.0.1:{port}", "-k", "HEY COMPUTER", "-k", "LIGHTS OFF",
        "--no-zeroconf", "--log-format", "json",
    ]  # fmt: skip
    process = subprocess.Popen(  # noqa: ASYNC220 - a long-running child, waited for below
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _reader, writer = await _connect(port, process)
        writer.close()
        # The socket listens (and queues connections) while the decode processes
        # start; the answer comes once they run.
        async with AsyncTcpClient("127.0.0.1", port) as client:
            assert await utterance(client, pcm) == ["hey_computer", "lights_off"]
        children = await asyncio.to_thread(_children, process.pid)
        assert len(children) >= 2  # the decode processes (and multiprocessing's tracker)
        process.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(process.wait, 30)
        assert code == 0, process.communicate()
        left = await asyncio.to_thread(_still_running, children, 10.0)
        assert not left, f"processes left behind: {left}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _children(pid: int) -> list[int]:
    """Every child process of `pid` (whose parent it is, per /proc/*/stat)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        if parent == pid:
            found.append(int(entry.name))
    return found


def _still_running(pids: list[int], within: float) -> dict[int, str]:
    """Those of `pids` still running after `within` seconds, with their command lines
    (a zombie, ended but not yet reaped by its new parent, counts as ended)."""
    deadline = time.monotonic() + within
    while True:
        left: dict[int, str] = {}
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    left[pid] = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
            except OSError:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_cli_workers_must_be_a_number_or_auto(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["wyoming", "--workers", "two", "-k", "HEY COMPUTER"])
    assert exited.value.code == 2
    assert "'two': give a number of processes (0 = one thread) or auto" in capsys.readouterr().err
