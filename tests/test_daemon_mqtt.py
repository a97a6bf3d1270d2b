"""The whole daemon against a real mosquitto: detections, commands, outages, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt
from async_support import wait_until
from daemon_support import (
    make_settings,
    mqtt_link,
    mqtt_settings,
    running,
)
from mqtt_broker import Mosquitto

from kwsd.config import Settings
from kwsd.daemon import Daemon
from kwsd.mqtt.payloads import CommandReply, DetectionPayload, KeywordsPayload


def settings_for(
    tmp_path: Path, assets: Path, speech: Path, broker: Mosquitto, base: str, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        **mqtt_settings(broker.host, broker.port, base),
        "keywords.phrases": ["HEY COMPUTER"],
    }
    values.update(extra)
    return make_settings(tmp_path, assets, speech, **values)


def is_detection(base: str, keyword: str | None = None) -> Any:
    def check(message: aiomqtt.Message) -> bool:
        if message.topic.value != f"{base}/detection":
            return False
        return keyword is None or json.loads(message.payload)["keyword"] == keyword

    return check


def on_topic(topic: str) -> Any:
    return lambda message: message.topic.value == topic


async def retained(broker: Mosquitto, topic: str) -> aiomqtt.Message:
    async with broker.subscriber(topic) as sub:
        message = await sub.next(within=5)
    assert message.retain
    return message


async def test_detection_status_and_keywords_on_mqtt(
    tmp_path: Path, assets: Path, speech: Path, mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    base = mqtt_base_topic
    settings = settings_for(tmp_path, assets, speech, mosquitto, base)
    async with mosquitto.subscriber(f"{base}/#") as sub:
        daemon = Daemon(settings, install_signal_handlers=False)
        assert await daemon.run() == 0  # end of file: delivers, publishes offline, exits
        message = await sub.wait_for(is_detection(base))
    det = DetectionPayload.from_json(message.payload)
    assert det.keyword == "HEY COMPUTER" and det.site == "testsite"
    assert not message.retain
    state = KeywordsPayload.from_json((await retained(mosquitto, f"{base}/keywords")).payload)
    assert [k.phrase for k in state.keywords] == ["HEY COMPUTER"] and state.version == 1
    assert (await retained(mosquitto, f"{base}/status")).payload == b"offline"


async def test_set_command_swaps_keywords_without_restart(
    tmp_path: Path, assets: Path, speech: Path, mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    base = mqtt_base_topic
    settings = settings_for(tmp_path, assets, speech, mosquitto, base, **{"audio.loop": True})
    daemon = Daemon(settings, install_signal_handlers=False)
    async with mosquitto.subscriber(f"{base}/#") as sub, running(daemon):
        await sub.wait_for(is_detection(base, "HEY COMPUTER"))
        blocks_before = daemon.pipeline.stats.blocks if daemon.pipeline else 0
        await mosquitto.publish(
            f"{base}/cmd/keywords/set", '{"id": "7", "keywords": ["TURN ON THE LIGHTS"]}'
        )
        reply = CommandReply.from_json((await sub.wait_for(on_topic(f"{base}/cmd/result"))).payload)
        assert (reply.ok, reply.id, reply.keywords_version) == (True, "7", 2), reply
        # The retained list is updated before the reply is sent.
        updates = [m for m in sub.messages if m.topic.value == f"{base}/keywords"]
        state = KeywordsPayload.from_json(updates[-1].payload)
        assert [k.phrase for k in state.keywords] == ["TURN ON THE LIGHTS"]
        assert state.version == 2
        await sub.wait_for(is_detection(base, "TURN ON THE LIGHTS"))
        # After the swap only the new list is spotted.
        later = [json.loads((await sub.wait_for(is_detection(base))).payload) for _ in range(3)]
        assert {d["keyword"] for d in later} == {"TURN ON THE LIGHTS"}
        assert daemon.pipeline is not None
        assert daemon.pipeline.stats.keyword_versions == [2], "swapped once, in place"
        assert daemon.pipeline.stats.blocks > blocks_before
    assert (await retained(mosquitto, f"{base}/keywords")).payload == state.to_json()


async def test_bad_commands_get_error_replies_while_spotting_goes_on(
    tmp_path: Path, assets: Path, speech: Path, mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    base = mqtt_base_topic
    settings = settings_for(tmp_path, assets, speech, mosquitto, base, **{"audio.loop": True})
    daemon = Daemon(settings, install_signal_handlers=False)
    bad = [
        ("cmd/keywords/set", "this is not json"),
        ("cmd/keywords/set", '["ROOM 101"]'),
        ("cmd/keywords/remove", '["OPEN SESAME"]'),
        ("cmd/keywords/delete", '["HEY COMPUTER"]'),
        ("cmd/keywords/add", '[{"phrase": "GOOD NIGHT", "treshold": 0.3}]'),
    ]
    async with mosquitto.subscriber(f"{base}/#") as sub, running(daemon):
        await sub.wait_for(is_detection(base))
        for topic, payload in bad:
            await mosquitto.publish(f"{base}/{topic}", payload)
            reply = CommandReply.from_json(
                (await sub.wait_for(on_topic(f"{base}/cmd/result"))).payload
            )
            assert not reply.ok and reply.error, (topic, payload)
            assert reply.keywords_version == 1
        errors = [
            json.loads(m.payload)["error"] for m in sub.messages if "cmd/result" in m.topic.value
        ]
        assert "not valid JSON" in errors[0]
        assert "'1'" in errors[1] or "as words" in errors[1]
        assert "OPEN SESAME" in errors[2]
        assert "unknown command" in errors[3]
        assert "treshold" in errors[4]
        seen = len(sub.messages)
        await sub.wait_for(is_detection(base, "HEY COMPUTER"))  # still spotting
        assert len(sub.messages) > seen
        assert daemon.registry is not None and daemon.registry.version == 1


async def test_detections_during_a_broker_outage_arrive_after_reconnect(
    tmp_path: Path,
    assets: Path,
    speech: Path,
    mosquitto_restartable: Mosquitto,
    mqtt_base_topic: str,
) -> None:
    broker, base = mosquitto_restartable, mqtt_base_topic
    # Real-time pacing: one detection per 3.2 s pass, like a person talking to a mic.
    settings = settings_for(
        tmp_path, assets, speech, broker, base, **{"audio.loop": True, "audio.realtime": True}
    )
    daemon = Daemon(settings, install_signal_handlers=False)
    session = f"outage-{os.getpid()}"
    async with running(daemon):
        link = mqtt_link(daemon)
        assert daemon.pipeline is not None
        stats = daemon.pipeline.stats
        async with broker.subscriber(f"{base}/detection", session=session) as sub:
            await sub.next(within=10)
        broker.save()  # keep the subscriber's session across the kill
        broker.kill()
        killed = time.time()
        await wait_until(lambda: not link.connected, what="the link to notice")
        during = stats.detections
        await wait_until(lambda: stats.detections > during, what="a detection in the outage")
        await wait_until(lambda: link.status.queued >= 1, what="it to be queued")
        broker.start()
        restarted = time.time()
        await wait_until(lambda: link.connected, what="reconnect")
        async with broker.subscriber(f"{base}/detection", session=session) as sub:
            message = await sub.wait_for(
                lambda m: killed <= _epoch(DetectionPayload.from_json(m.payload).time) <= restarted,
                within=10,
            )
    assert DetectionPayload.from_json(message.payload).keyword == "HEY COMPUTER"


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_keywords_set_over_mqtt_survive_a_restart(
    tmp_path: Path, assets: Path, speech: Path, mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    base = mqtt_base_topic
    settings = settings_for(tmp_path, assets, speech, mosquitto, base, **{"audio.loop": True})
    first = Daemon(settings, install_signal_handlers=False)
    async with mosquitto.subscriber(f"{base}/cmd/result") as sub, running(first):
        await wait_until(lambda: mqtt_link(first).connected)
        await mosquitto.publish(f"{base}/cmd/keywords/set", '["TURN ON THE LIGHTS"]')
        assert CommandReply.from_json((await sub.next()).payload).ok

    second = Daemon(settings, install_signal_handlers=False)
    async with mosquitto.subscriber(f"{base}/#") as sub, running(second):
        assert second.registry is not None
        assert second.registry.keyword_set.displays() == ["TURN ON THE LIGHTS"]
        assert second.registry.origin == "mqtt"
        await sub.wait_for(is_detection(base, "TURN ON THE LIGHTS"))
        states = [m for m in sub.messages if m.topic.value == f"{base}/keywords"]
        assert {KeywordsPayload.from_json(m.payload).version for m in states} == {2}


def kwsd_run(tmp_path: Path, assets: Path, speech: Path, broker: Mosquitto, base: str) -> Any:
    """`kwsd run` as a service runs it: real-time looped speech, JSON logs on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KWSD_")}
    env.pop("NOTIFY_SOCKET", None)
    argv = [
        sys.executable,
        "-m",
        "kwsd",
        "run",
        "--assets",
        str(assets),
        "--file",
        str(speech),
        "--loop",
        "-k",
        "hey computer",
        "--log-format",
        "json",
        *("--set", f"data_dir={tmp_path}"),
        *("--set", f"mqtt.host={broker.host}"),
        *("--set", f"mqtt.port={broker.port}"),
        *("--set", f"mqtt.base_topic={base}"),
        *("--set", "homeassistant.discovery=false"),
    ]
    return asyncio.create_subprocess_exec(
        *argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


async def test_sigterm_publishes_offline_and_exits_0_within_2s(
    tmp_path: Path, assets: Path, speech: Path, mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    base = mqtt_base_topic
    async with mosquitto.subscriber(f"{base}/#") as sub:
        process = await kwsd_run(tmp_path, assets, speech, mosquitto, base)
        try:
            await sub.wait_for(
                lambda m: m.topic.value == f"{base}/status" and m.payload == b"online", within=30
            )
            await sub.wait_for(is_detection(base), within=15)  # audio is flowing (real time)
            process.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            _out, err_bytes = await asyncio.wait_for(process.communicate(), timeout=5)
            elapsed = time.monotonic() - sent
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        err = err_bytes.decode()
        assert process.returncode == 0, err
        assert elapsed < 2.0, f"took {elapsed:.2f} s to stop"
        await sub.wait_for(
            lambda m: m.topic.value == f"{base}/status" and m.payload == b"offline", within=5
        )
    assert (await retained(mosquitto, f"{base}/status")).payload == b"offline"
    assert '"kwsd stopped"' in err


async def test_sigterm_while_the_broker_is_down_says_how_many_detections_are_lost(
    tmp_path: Path,
    assets: Path,
    speech: Path,
    mosquitto_restartable: Mosquitto,
    mqtt_base_topic: str,
) -> None:
    broker, base = mosquitto_restartable, mqtt_base_topic
    async with broker.subscriber(f"{base}/detection") as sub:
        process = await kwsd_run(tmp_path, assets, speech, broker, base)
        await sub.next(within=30)  # connected, and audio flows
    assert process.stderr is not None
    lines: list[dict[str, Any]] = []

    async def read_log() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))

    reader = asyncio.create_task(read_log())
    try:
        broker.stop()

        def detections_after_the_loss() -> int:
            lost = [
                i
                for i, e in enumerate(lines)
                if "connection" in e["event"] and "lost" in e["event"]
            ]
            return sum(1 for e in lines[lost[0] :] if e["event"] == "detection") if lost else 0

        await wait_until(lambda: detections_after_the_loss() >= 1, within=20, what="a detection")
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=5)
        await reader
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    [warning] = [e for e in lines if "not delivered" in e["event"]]
    assert warning["level"] == "warning"
    count = detections_after_the_loss()
    assert f"stopping with {count} detection(s)" in warning["event"], (count, warning)
