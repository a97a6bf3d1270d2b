"""Commands the way users and misbehaving clients send them, against the real keyword
registry (real tokenizer) and a real mosquitto: `mosquitto_pub`, retained and empty
messages, floods, and names no topic or log line can carry.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import structlog
from async_support import scrape_metrics, wait_until
from mqtt_broker import Mosquitto, Subscriber, link_options, running

from kwsd.backends.base import ModelDefaults
from kwsd.health import HealthServer, health_source
from kwsd.keywords import KeywordSpec, Tokenizer
from kwsd.metrics import Metrics
from kwsd.mqtt import (
    Command,
    CommandChannel,
    CommandHandler,
    CommandReply,
    CommandResult,
    MqttLink,
    MqttOutput,
    RegistryCommands,
)
from kwsd.mute import MuteState
from kwsd.registry import STATE_FILE_NAME, ConfigKeywords, KeywordCompiler, KeywordRegistry

MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
VERBS = ("pause", "resume", "keywords/set", "keywords/add", "keywords/remove")


@pytest.fixture(scope="module")
def compiler(assets: Path) -> KeywordCompiler:
    model = assets / "model"
    return KeywordCompiler(Tokenizer(model / "tokens.txt", model / "bpe.model"), ModelDefaults())


@pytest.fixture
def registry(compiler: KeywordCompiler, tmp_path: Path) -> KeywordRegistry:
    registry = KeywordRegistry(compiler, tmp_path / STATE_FILE_NAME, MuteState())
    registry.load(ConfigKeywords((KeywordSpec(phrase="HEY COMPUTER"),)))
    return registry


@asynccontextmanager
async def serving(
    broker: Mosquitto, base: str, registry: KeywordRegistry, **options: object
) -> AsyncIterator[tuple[MqttLink, Subscriber]]:
    """kwsd's link serving commands on `registry`, and a client watching the replies."""
    link = MqttLink(link_options(broker, base, **options), site="kitchen", model="m")
    CommandChannel(link, RegistryCommands(registry))
    async with running(link), broker.subscriber(f"{base}/cmd/result") as results:
        yield link, results


def mosquitto_pub(broker: Mosquitto, topic: str, *args: str, stdin: bytes | None = None) -> None:
    subprocess.run(
        [MOSQUITTO_PUB, "-h", broker.host, "-p", str(broker.port), "-q", "1", "-t", topic, *args],
        input=stdin,
        check=True,
        capture_output=True,
        timeout=30,
    )


async def marker(broker: Mosquitto, base: str, results: Subscriber, ident: str) -> CommandReply:
    """Send a harmless command and return its reply: commands are handled in order, so
    everything sent before it has been handled by then."""
    mosquitto_pub(
        broker,
        f"{base}/cmd/keywords/remove",
        "-m",
        json.dumps({"id": ident, "keywords": ["NOT THERE"]}),
    )
    message = await results.wait_for(lambda m: CommandReply.from_json(m.payload).id == ident)
    return CommandReply.from_json(message.payload)


# ------------------------------------------------------------ empty and retained


async def test_clearing_a_retained_command_is_not_a_command(
    mosquitto: Mosquitto, mqtt_base_topic: str, registry: KeywordRegistry
) -> None:
    """kwsd's own advice for clearing a retained command must not pause it (or anything)."""
    base = mqtt_base_topic
    async with serving(mosquitto, base, registry) as (_link, results):
        with structlog.testing.capture_logs() as logs:
            for verb in VERBS:
                mosquitto_pub(mosquitto, f"{base}/cmd/{verb}", "-r", "-n")
                mosquitto_pub(mosquitto, f"{base}/cmd/{verb}", "-n")
            await marker(mosquitto, base, results, "after-the-empty-ones")
    assert len(results.messages) == 1  # the marker's reply only
    assert not registry.paused and not registry.mute.muted
    assert registry.keyword_set.displays() == ["HEY COMPUTER"] and registry.version == 1
    ignored = [e for e in logs if e["event"].startswith("ignoring an empty MQTT message")]
    assert len(ignored) == 2 * len(VERBS)
    complaints = [e for e in logs if e["log_level"] in ("warning", "error")]
    assert [e.get("id") for e in complaints] == ["after-the-empty-ones"]


async def test_retained_command_is_refused_with_how_to_clear_it(
    mosquitto: Mosquitto, mqtt_base_topic: str, registry: KeywordRegistry
) -> None:
    base = mqtt_base_topic
    pause = f"{base}/cmd/pause"
    try:
        async with serving(mosquitto, base, registry) as (_link, results):
            # Published live with the retain flag: refused, not applied once.
            mosquitto_pub(mosquitto, pause, "-r", "-m", '{"reason": "stuck"}')
            live = CommandReply.from_json((await results.next()).payload)
            assert not registry.paused
            # ... and refused again when the broker replays it on a new connection.
            link2 = MqttLink(link_options(mosquitto, base), site="kitchen", model="m")
            CommandChannel(link2, RegistryCommands(registry))
            with structlog.testing.capture_logs() as logs:
                async with running(link2):
                    replayed = CommandReply.from_json((await results.next()).payload)
            assert not registry.paused
    finally:
        mosquitto_pub(mosquitto, pause, "-r", "-n")
    for reply in (live, replayed):
        assert (reply.command, reply.ok) == ("pause", False)
        assert reply.error is not None and "retained commands are refused" in reply.error
        assert f"mosquitto_pub -r -n -t '{pause}'" in reply.error
    [warning] = [e for e in logs if e["event"] == "MQTT command refused"]
    assert warning["log_level"] == "warning" and "mosquitto_pub -r -n" in warning["error"]


async def test_pause_and_resume_need_a_payload(
    mosquitto: Mosquitto, mqtt_base_topic: str, registry: KeywordRegistry
) -> None:
    base = mqtt_base_topic
    async with serving(mosquitto, base, registry) as (_link, results):
        mosquitto_pub(mosquitto, f"{base}/cmd/pause", "-m", "{}")
        assert CommandReply.from_json((await results.next()).payload).ok
        assert registry.paused
        mosquitto_pub(mosquitto, f"{base}/cmd/resume", "-m", '{"id": "r1"}')
        reply = CommandReply.from_json((await results.next()).payload)
        assert (reply.ok, reply.id) == (True, "r1")
        assert not registry.paused


# ----------------------------------------------------------------------- floods


@asynccontextmanager
async def exported(
    broker: Mosquitto, base: str, handler: CommandHandler, **options: object
) -> AsyncIterator[tuple[MqttLink, Subscriber, int]]:
    """The daemon's MQTT output serving commands, its metrics on a real /metrics port."""
    link = MqttLink(link_options(broker, base, **options), site="kitchen", model="m")
    CommandChannel(link, handler)
    metrics = Metrics()
    output = MqttOutput(link, metrics=metrics)
    async with HealthServer(health_source(), metrics, port=0) as health:
        await output.start()
        try:
            await wait_until(lambda: link.connected, what="the link to connect")
            async with broker.subscriber(f"{base}/cmd/result") as results:
                yield link, results, health.port
        finally:
            await output.close()


async def metric_lines(port: int, name: str) -> dict[str, float]:
    """`name`'s samples on /metrics (the exporter polls the link once a second)."""
    body = await scrape_metrics(port)
    samples = {}
    for line in body.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def flood(count: int) -> bytes:
    return "".join(json.dumps({"id": n}) + "\n" for n in range(count)).encode()


async def test_a_flood_of_commands_gets_one_reply_each(
    mosquitto: Mosquitto, mqtt_base_topic: str, registry: KeywordRegistry
) -> None:
    """2,000 commands as fast as `mosquitto_pub -l` sends them: 2,000 replies, none dropped."""
    base = mqtt_base_topic
    count = 2000
    async with exported(mosquitto, base, RegistryCommands(registry)) as (link, results, port):
        await asyncio.to_thread(
            mosquitto_pub, mosquitto, f"{base}/cmd/pause", "-l", stdin=flood(count)
        )
        await wait_until(lambda: len(results.messages) >= count, within=60, what="every reply")
        await marker(mosquitto, base, results, "end")
        await asyncio.sleep(1.2)  # one export of the counters
        dropped = await metric_lines(port, "kwsd_mqtt_incoming_dropped_total")
        outbox = await metric_lines(port, "kwsd_outbox_dropped_total")
    replies = [CommandReply.from_json(m.payload) for m in results.messages[:count]]
    assert len(results.messages) == count + 1  # and the marker's, nothing more
    assert sorted(int(r.id or "-1") for r in replies) == list(range(count))
    assert all(r.ok for r in replies)
    assert registry.paused
    assert (link.status.commands_dropped, link.status.dropped) == (0, 0)
    assert dropped == {
        'kwsd_mqtt_incoming_dropped_total{kind="command"}': 0.0,
        'kwsd_mqtt_incoming_dropped_total{kind="other"}': 0.0,
    }
    assert outbox['kwsd_outbox_dropped_total{reason="full"}'] == 0.0


class Stalled:
    """A handler stuck on its first command until released (a compile that takes long)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.handled = 0

    async def handle(self, command: Command) -> CommandResult:
        await self.release.wait()
        self.handled += 1
        return CommandResult(ok=True)


async def test_commands_beyond_the_backlog_are_dropped_counted_and_logged(
    mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    base = mqtt_base_topic
    handler = Stalled()
    sent = 60
    with structlog.testing.capture_logs() as logs:
        async with exported(mosquitto, base, handler, inbox_messages=10) as (link, results, port):
            await asyncio.to_thread(
                mosquitto_pub, mosquitto, f"{base}/cmd/pause", "-l", stdin=flood(sent)
            )
            await wait_until(lambda: link.status.commands_dropped >= sent - 11, what="drops")
            dropped = link.status.commands_dropped
            handler.release.set()
            await wait_until(lambda: len(results.messages) == sent - dropped, what="the replies")
            await wait_until(lambda: link.status.commands_dropped == dropped)
            await asyncio.sleep(1.2)  # one export of the counters
            samples = await metric_lines(port, "kwsd_mqtt_incoming_dropped_total")
    assert dropped in (sent - 11, sent - 10)  # 10 waiting (+ 1 in the handler, if taken)
    assert handler.handled == sent - dropped
    assert samples['kwsd_mqtt_incoming_dropped_total{kind="command"}'] == dropped
    [first, *_] = [e for e in logs if e["event"].startswith("MQTT: too many received messages")]
    assert first["log_level"] == "warning" and "gets no reply" in first["event"]


# ---------------------------------------------------------------- display names


@pytest.mark.parametrize("display", ["HEY\x00COMPUTER", "HEY\tCOMPUTER", "HEY\r\nCOMPUTER"])
async def test_display_names_with_control_characters_are_refused(
    mosquitto: Mosquitto, mqtt_base_topic: str, registry: KeywordRegistry, display: str
) -> None:
    base = mqtt_base_topic
    payload = json.dumps([{"phrase": "TURN ON THE LIGHTS", "display": display}])
    async with serving(mosquitto, base, registry) as (_link, results):
        mosquitto_pub(mosquitto, f"{base}/cmd/keywords/add", "-m", payload)
        reply = CommandReply.from_json((await results.next()).payload)
    assert not reply.ok and reply.error is not None
    assert "contains a control character" in reply.error
    assert registry.keyword_set.displays() == ["HEY COMPUTER"]  # the running list stays
