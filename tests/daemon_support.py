"""Helpers shared by the daemon tests (no tests here): settings, running a daemon."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from kwsd.config import Settings, load_settings
from kwsd.daemon import Daemon
from kwsd.mqtt import MqttLink, MqttOutput


def make_settings(
    tmp_path: Path,
    assets: Path,
    audio_file: Path,
    *,
    config: Path | None = None,
    **overrides: Any,
) -> Settings:
    """Settings for an in-process daemon: stand-in model, file input, private data dir."""
    values: dict[str, Any] = {
        "assets": str(assets),
        "site_id": "testsite",
        "data_dir": str(tmp_path / "data"),
        "audio.source": "file",
        "audio.file": str(audio_file),
        "audio.realtime": False,
        "audio.silence_warning_seconds": 0,
    }
    values.update(overrides)
    return load_settings(config, values)


def mqtt_settings(host: str, port: int, base_topic: str) -> dict[str, Any]:
    return {
        "mqtt.host": host,
        "mqtt.port": port,
        "mqtt.base_topic": base_topic,
        "mqtt.reconnect_min_seconds": 0.05,
        "mqtt.reconnect_max_seconds": 0.3,
        "homeassistant.discovery": False,
    }


@asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[int]]:
    """Run `daemon` for the block (started first), then stop it and check it exited 0."""
    task = asyncio.create_task(daemon.run())
    started = asyncio.ensure_future(daemon.started.wait())
    await asyncio.wait({task, started}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        raise AssertionError(f"daemon ended before it started: {task.result()}")
    assert daemon.started.is_set(), "daemon did not start within 30 s"
    try:
        yield task
    finally:
        daemon.stop()
        try:
            async with asyncio.timeout(10):
                code = await task
        except BaseException:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise
        assert code == 0


def mqtt_link(daemon: Daemon) -> MqttLink:
    """The link of the daemon's MQTT output (the daemon must be running with a broker)."""
    output = daemon.outputs.find(MqttOutput)
    assert output is not None, "the daemon has no MQTT output"
    return output.link


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
