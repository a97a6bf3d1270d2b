"""The daemon's wiring of HA discovery, Hermes, health/metrics and sd_notify."""

from __future__ import annotations

import asyncio
import io
import json
import socket
from pathlib import Path

import pytest
import soundfile as sf
from async_support import wait_until
from daemon_support import (
    make_settings,
    mqtt_link,
    mqtt_settings,
    running,
)
from mqtt_broker import Mosquitto, free_port
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.ping import Ping, Pong
from wyoming.wake import Detect, Detection, NotDetected

from kwsd import __version__
from kwsd.daemon import Daemon
from kwsd.mqtt.payloads import CommandReply
from kwsd.service import Notifier


async def test_home_assistant_and_hermes_are_wired(
    tmp_path: Path, assets: Path, speech: Path, mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    base = mqtt_base_topic
    prefix = f"{base}/ha"
    settings = make_settings(
        tmp_path,
        assets,
        speech,
        **{
            **mqtt_settings(mosquitto.host, mosquitto.port, base),
            "homeassistant.discovery": True,
            "homeassistant.discovery_prefix": prefix,
            "hermes.enabled": True,
            "keywords.phrases": ["HEY COMPUTER"],
            "audio.loop": True,
        },
    )
    daemon = Daemon(settings, install_signal_handlers=False)
    async with (
        mosquitto.subscriber(f"{base}/#") as sub,
        mosquitto.subscriber("hermes/hotword/hey_computer/detected") as hermes,
        running(daemon),
    ):
        config = await sub.wait_for(
            lambda m: m.topic.value == f"{prefix}/event/testsite/keyword/config"
        )
        assert json.loads(config.payload)["event_types"] == ["HEY COMPUTER"]
        event = await sub.wait_for(lambda m: m.topic.value == f"{base}/event")
        assert json.loads(event.payload)["event_type"] == "HEY COMPUTER"
        # The HA event and the detection message are one event: same id, same time.
        detections = [
            json.loads(m.payload) for m in sub.messages if m.topic.value == f"{base}/detection"
        ]
        same = [d for d in detections if d["id"] == json.loads(event.payload)["id"]]
        assert len(same) == 1 and same[0]["time"] == json.loads(event.payload)["time"]
        detected = json.loads((await hermes.wait_for(lambda m: True)).payload)
        assert detected["siteId"] == "testsite" and detected["modelId"] == "HEY COMPUTER"
        assert detected["modelVersion"] == __version__  # as the README says

        # Rhasspy's toggleOff mutes spotting (audio keeps flowing), toggleOn resumes it.
        assert daemon.pipeline is not None
        stats = daemon.pipeline.stats
        await mosquitto.publish(
            "hermes/hotword/toggleOff", '{"siteId": "testsite", "reason": "ttsSay"}'
        )
        await wait_until(lambda: daemon.mute.muted, what="the Hermes mute")
        muted = stats.muted_dropped
        await wait_until(lambda: stats.muted_dropped > muted + 1, what="muted detections")
        await mosquitto.publish(
            "hermes/hotword/toggleOn", '{"siteId": "testsite", "reason": "ttsSay"}'
        )
        await wait_until(lambda: not daemon.mute.muted, what="the Hermes unmute")

        # A keyword change updates the discovery document.
        await mosquitto.publish(f"{base}/cmd/keywords/add", '["TURN ON THE LIGHTS"]')
        config = await sub.wait_for(
            lambda m: (
                m.topic.value == f"{prefix}/event/testsite/keyword/config"
                and b"TURN ON THE LIGHTS" in m.payload
            )
        )
        assert json.loads(config.payload)["event_types"] == ["HEY COMPUTER", "TURN ON THE LIGHTS"]


async def wake_word(port: int, wav: Path) -> list[str]:
    """Stream `wav` the way Home Assistant's Wyoming integration does (with the `wyoming`
    package); the names detected, or [] after `not-detected`."""
    pcm, rate = sf.read(wav, dtype="int16")
    audio = {"rate": rate, "width": 2, "channels": 1}
    names: list[str] = []
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Detect().event())
        await client.write_event(AudioStart(**audio).event())
        step = rate // 10
        for start in range(0, len(pcm), step):
            chunk = pcm[start : start + step].tobytes()
            await client.write_event(AudioChunk(audio=chunk, **audio).event())
        await client.write_event(AudioStop().event())
        await client.write_event(Ping(text="end").event())  # answered after the stream's events
        while True:
            event = await asyncio.wait_for(client.read_event(), 30)
            assert event is not None, f"the server closed the connection after {names}"
            if Pong.is_type(event.type):
                return names
            if Detection.is_type(event.type):
                names.append(Detection.from_event(event).name or "")
            else:
                assert NotDetected.is_type(event.type), event


@pytest.mark.parametrize(("scope", "wyoming_hears"), [("source", True), ("all", False)])
async def test_mute_scope_decides_whether_a_pause_silences_wyoming_clients(
    tmp_path: Path,
    assets: Path,
    speech: Path,
    mosquitto: Mosquitto,
    mqtt_base_topic: str,
    scope: str,
    wyoming_hears: bool,
) -> None:
    """By default the pause switch, cmd/pause and Hermes toggleOff mute the daemon's own
    microphone only; Home Assistant satellites streaming over Wyoming keep working."""
    base = mqtt_base_topic
    port = free_port()
    values = {
        **mqtt_settings(mosquitto.host, mosquitto.port, base),
        "keywords.phrases": ["HEY COMPUTER"],
        "audio.loop": True,
        "audio.realtime": True,
        "wyoming.enabled": True,
        "wyoming.uri": f"tcp://127.0.0.1:{port}",
    }
    if scope != "source":
        values["mute.scope"] = scope
    daemon = Daemon(
        make_settings(tmp_path, assets, speech, **values), install_signal_handlers=False
    )
    async with mosquitto.subscriber(f"{base}/cmd/result") as results, running(daemon):
        await wait_until(lambda: mqtt_link(daemon).connected, what="MQTT")
        assert await wake_word(port, speech) == ["hey_computer"]  # not paused yet
        await mosquitto.publish(f"{base}/cmd/pause", b'{"reason": "movie night"}')
        assert CommandReply.from_json((await results.next()).payload).ok
        assert daemon.mute.paused
        heard = await wake_word(port, speech)
        assert daemon.pipeline is not None
        stats = daemon.pipeline.stats
        muted = stats.muted_dropped
        await wait_until(lambda: stats.muted_dropped > muted, what="the own source muted")
    assert heard == (["hey_computer"] if wyoming_hears else [])


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_health_endpoint_and_service_notifications(
    tmp_path: Path, assets: Path, speech: Path
) -> None:
    port = free_port()
    sock_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(sock_path))
    receiver.setblocking(False)
    settings = make_settings(
        tmp_path,
        assets,
        speech,
        **{
            "health.enabled": True,
            "health.port": port,
            "keywords.phrases": ["HEY COMPUTER"],
            "audio.loop": True,
        },
    )
    daemon = Daemon(
        settings,
        stdout=io.StringIO(),
        notifier=Notifier(str(sock_path).encode()),
        install_signal_handlers=False,
    )
    try:
        async with running(daemon):
            await wait_until(lambda: daemon.heartbeat.beats > 5, what="audio")
            status, body = await _get(port, "/healthz")
            assert status == 200, body
            assert json.loads(body)["checks"]["audio"]["ok"] is True
            await wait_until(
                lambda: daemon.pipeline is not None and daemon.pipeline.stats.detections > 0
            )
            status, metrics = await _get(port, "/metrics")
            assert status == 200
            assert 'kwsd_detections_total{keyword="HEY COMPUTER"}' in metrics
            assert "kwsd_chunk_seconds_count" in metrics
            assert "kwsd_keywords 1.0" in metrics
        messages = []
        while True:
            try:
                messages.append(receiver.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        receiver.close()
    assert any("READY=1" in m for m in messages), messages
    assert any("STOPPING=1" in m for m in messages), messages
