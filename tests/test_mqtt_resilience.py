"""Broker outages against a real mosquitto: nothing blocks, nothing queued is lost.

The observer in these tests is a persistent MQTT session (`session=`) on a broker that
saves its state, so messages the link delivers while the observer is reconnecting
are queued by the broker instead of racing the test.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import textwrap
from collections.abc import Callable

import aiomqtt
import structlog
from async_support import scrape_metrics, wait_until
from mqtt_broker import Mosquitto, link_options, running

from kwsd.config import HomeAssistantSettings, MqttSettings
from kwsd.detection import Detection
from kwsd.health import HealthServer, health_source
from kwsd.integrations.homeassistant import HomeAssistantDiscovery
from kwsd.keywords.spec import KeywordSpec
from kwsd.metrics import Metrics
from kwsd.mqtt import KeywordsPayload, MqttLink, MqttOptions, MqttOutput

Predicate = Callable[[aiomqtt.Message], bool]
KEYWORDS = KeywordsPayload(3, (KeywordSpec(phrase="LIGHT UP"),))


def detection(n: int) -> Detection:
    return Detection(
        keyword=f"KW{n}", phrase=f"KW {n}", tokens=("▁KW",), start=n, end=n + 0.2, score=0.5,
        frame=25 * n,
    )  # fmt: skip


def make_link(broker: Mosquitto, base: str, **overrides: object) -> MqttLink:
    link = MqttLink(link_options(broker, base, **overrides), site="kitchen", model="m")
    link.publish_keywords(KEYWORDS)
    return link


def on(topic_suffix: str) -> Predicate:
    return lambda m: m.topic.value.endswith(topic_suffix)


def detection_in(ids: list[str]) -> Predicate:
    """Matches our detections only: the observer may also get a redelivered older one."""
    return lambda m: on("/detection")(m) and json.loads(m.payload)["id"] in ids


async def create_session(broker: Mosquitto, base: str) -> None:
    async with broker.subscriber(f"{base}/#", session="observer"):
        pass


async def test_broker_down_at_start_then_everything_is_delivered(
    mosquitto_restartable: Mosquitto, mqtt_base_topic: str
) -> None:
    broker, base = mosquitto_restartable, mqtt_base_topic
    await create_session(broker, base)
    broker.stop()
    link = make_link(broker, base)
    async with running(link, connect=False):
        sent = [link.publish_detection(detection(n)).id for n in range(3)]
        await wait_until(lambda: link.status.last_error is not None, what="a connect error")
        status = link.status
        assert not status.connected and status.queued == 3
        assert status.last_error is not None and "connection refused" in status.last_error
        assert f"127.0.0.1:{broker.port}" in status.last_error

        broker.start()
        await wait_until(lambda: link.connected and link.status.queued == 0, what="delivery")
        assert link.status.last_error is None and link.status.delivered == 3
        async with broker.subscriber(f"{base}/#", session="observer") as sub:
            got = [json.loads((await sub.wait_for(on("/detection"))).payload)["id"] for _ in sent]
    assert got == sent
    assert any(m.topic.value.endswith("/status") and m.payload == b"online" for m in sub.messages)


async def test_broker_restart_redelivers_and_republishes_state(
    mosquitto_restartable: Mosquitto, mqtt_base_topic: str
) -> None:
    broker, base = mosquitto_restartable, mqtt_base_topic
    link = make_link(broker, base)
    async with running(link):
        async with broker.subscriber(f"{base}/#", session="observer") as sub:
            before = link.publish_detection(detection(0))
            await sub.wait_for(lambda m: on("/detection")(m) and before.id in m.payload.decode())
            broker.stop()  # clean broker shutdown: sessions saved, clients dropped
        await wait_until(lambda: not link.connected, what="the link to notice the outage")
        during = [link.publish_detection(detection(n)).id for n in (1, 2)]
        assert link.status.queued == 2

        broker.start()
        await wait_until(lambda: link.status.connects == 2, what="the reconnect")
        async with broker.subscriber(f"{base}/#", session="observer") as sub:
            got = [
                json.loads((await sub.wait_for(detection_in(during))).payload)["id"] for _ in during
            ]
        # Live copies (not the broker replaying its retained ones) prove the link
        # re-published its state; the outbox sends state before queued events.
        live = [(m.topic.value.rsplit("/", 1)[1], m.payload) for m in sub.messages if not m.retain]
        assert ("status", b"online") in live
        assert ("keywords", KEYWORDS.to_json()) in live
        assert got == during

        # A broker that lost everything gets the retained state back as well.
        broker.stop()
        broker.wipe()
        broker.start()
        await wait_until(lambda: link.status.connects == 3, what="the second reconnect")
        await link.flush()
        async with broker.subscriber(f"{base}/status") as status:
            online = await status.next()
        async with broker.subscriber(f"{base}/keywords") as kw:
            retained = await kw.next()
    assert (online.payload, online.retain) == (b"online", True)
    assert retained.retain and KeywordsPayload.from_json(retained.payload) == KEYWORDS


async def test_detection_without_puback_is_resent(
    mosquitto_restartable: Mosquitto, mqtt_base_topic: str
) -> None:
    """Sent while connected, never acknowledged, broker died: the link sends it again."""
    broker, base = mosquitto_restartable, mqtt_base_topic
    await create_session(broker, base)
    link = make_link(broker, base, timeout_seconds=0.5)
    async with running(link):
        await link.flush()
        broker.save()  # the observer's session survives the kill below
        broker.freeze()  # the TCP connection stays up, the broker never answers
        try:
            sent = link.publish_detection(detection(7))
            await wait_until(lambda: not link.connected, what="the PUBACK timeout")
            assert link.status.queued == 1
        finally:
            broker.kill()  # whatever reached its socket dies with it
        broker.start()
        await wait_until(lambda: link.connected and link.status.queued == 0, what="the resend")
    async with broker.subscriber(f"{base}/#", session="observer") as sub:
        message = await sub.wait_for(on("/detection"))
    assert json.loads(message.payload)["id"] == sent.id


async def test_outbox_overflow_drops_oldest_and_counts(
    mosquitto_restartable: Mosquitto, mqtt_base_topic: str
) -> None:
    broker, base = mosquitto_restartable, mqtt_base_topic
    await create_session(broker, base)
    broker.stop()
    link = make_link(broker, base, outbox_size=3)
    async with running(link, connect=False):
        sent = [link.publish_detection(detection(n)).id for n in range(5)]
        assert (link.status.queued, link.status.dropped) == (3, 2)
        broker.start()
        await wait_until(lambda: link.connected and link.status.queued == 0, what="delivery")
        async with broker.subscriber(f"{base}/#", session="observer") as sub:
            got = [
                json.loads((await sub.wait_for(on("/detection"))).payload)["id"] for _ in range(3)
            ]
            await broker.publish(f"{base}/detection", b"probe")
            assert (await sub.wait_for(on("/detection"))).payload == b"probe"  # nothing more
    assert got == sent[2:]
    assert (link.status.dropped, link.status.delivered) == (2, 3)


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from kwsd.mqtt import MqttLink, MqttOptions

    async def main() -> None:
        options = MqttOptions(host="127.0.0.1", port=int(sys.argv[1]), base_topic=sys.argv[2])
        link = MqttLink(options, site="kitchen", model="m")
        task = asyncio.create_task(link.run())
        await link.wait_connected()
        await link.flush()
        print("connected", flush=True)
        await task

    asyncio.run(main())
    """
)


async def test_last_will_offline_when_the_process_is_killed(
    mosquitto: Mosquitto, mqtt_base_topic: str
) -> None:
    status = f"{mqtt_base_topic}/status"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(mosquitto.port), mqtt_base_topic,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        async with asyncio.timeout(20):  # its log lines come first
            while (line := await child.stdout.readline()) != b"connected\n":
                assert line, "the child exited before connecting"
        async with mosquitto.subscriber(status) as sub:
            assert (await sub.next()).payload == b"online"
            child.kill()  # SIGKILL: no DISCONNECT, the broker sees the socket die
            await child.wait()
            will = await sub.next()
        assert will.payload == b"offline"
        async with mosquitto.subscriber(status) as late:
            retained = await late.next()
        assert (retained.payload, retained.retain) == (b"offline", True)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_connect_attempts_to_a_silent_broker_leave_no_socket_open() -> None:
    """A broker that accepts TCP but never sends CONNACK (a hung or overloaded one).

    Every timed-out attempt must close its socket: over a long outage a leak of one
    descriptor per attempt exhausts the daemon's file descriptors.
    """
    accepted = 0
    open_connections: set[asyncio.StreamWriter] = set()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        open_connections.add(writer)
        try:
            while await reader.read(1024):
                pass  # swallow CONNECT and DISCONNECT, answer nothing
        finally:
            open_connections.discard(writer)
            writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = MqttLink(
        MqttOptions(
            host="127.0.0.1", port=port, base_topic="kwsd/silent", timeout_seconds=0.2,
            reconnect_min_seconds=0.01, reconnect_max_seconds=0.05,
        ),
        site="kitchen", model="m",
    )  # fmt: skip
    async with server, running(link, connect=False):
        await wait_until(lambda: accepted >= 6, within=20, what="six connect attempts")
        # The attempt in progress may hold one connection; every earlier one was closed.
        await wait_until(
            lambda: len(open_connections) <= 1, within=5, what="timed-out attempts to close"
        )
        assert not link.connected


# ------------------------------------------------------- nothing lost unaccounted


async def test_detections_older_than_the_maximum_age_are_dropped_not_delivered_late(
    mosquitto_restartable: Mosquitto, mqtt_base_topic: str
) -> None:
    broker, base = mosquitto_restartable, mqtt_base_topic
    await create_session(broker, base)
    broker.stop()
    link = make_link(broker, base, outbox_max_age_seconds=1.0)
    with structlog.testing.capture_logs() as logs:
        async with running(link, connect=False):
            stale = link.publish_detection(detection(1)).id
            await asyncio.sleep(1.3)
            fresh = link.publish_detection(detection(2)).id
            assert (link.status.queued, link.status.expired) == (1, 1)
            broker.start()
            await wait_until(lambda: link.connected and link.status.queued == 0, what="delivery")
            async with broker.subscriber(f"{base}/#", session="observer") as sub:
                got = json.loads((await sub.wait_for(on("/detection"))).payload)["id"]
                await broker.publish(f"{base}/detection", b"probe")
                assert (await sub.wait_for(on("/detection"))).payload == b"probe"  # no more
    assert got == fresh != stale
    assert (link.status.expired, link.status.delivered) == (1, 1)
    [warning] = [e for e in logs if "older than 1 s" in e["event"]]
    assert warning["log_level"] == "warning" and "dropped 1 queued message" in warning["event"]


async def test_stopping_with_undelivered_detections_warns_with_the_count(
    mosquitto_restartable: Mosquitto, mqtt_base_topic: str
) -> None:
    broker, base = mosquitto_restartable, mqtt_base_topic
    broker.stop()
    link = make_link(broker, base)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(link.run())
        await wait_until(lambda: link.status.last_error is not None, what="a failed connect")
        for n in range(3):
            link.publish_detection(detection(n))
        link.publish(f"{base}/event", b"{}")  # e.g. the Home Assistant event of one of them
        link.stop()
        await asyncio.wait_for(task, 5)
    [warning] = [e for e in logs if "not delivered" in e["event"]]
    assert warning["log_level"] == "warning"
    assert "stopping with 3 detection(s) (4 message(s) in all)" in warning["event"]
    assert warning["broker"] == f"127.0.0.1:{broker.port}"


async def test_dropped_and_expired_events_are_counters_in_metrics(
    mosquitto_restartable: Mosquitto, mqtt_base_topic: str
) -> None:
    broker, base = mosquitto_restartable, mqtt_base_topic
    broker.stop()
    link = make_link(broker, base, outbox_size=3, outbox_max_age_seconds=1.0)
    metrics = Metrics()
    output = MqttOutput(link, metrics=metrics)
    async with HealthServer(health_source(), metrics, port=0) as health:
        await output.start()
        try:
            for n in range(5):
                link.publish_detection(detection(n))  # two pushed out of the full outbox
            await asyncio.sleep(1.2)
            link.publish_detection(detection(5))  # the three others have expired
            await asyncio.sleep(1.2)  # one export of the counters
            body = await scrape_metrics(health.port)
        finally:
            await output.close()
    assert 'kwsd_outbox_dropped_total{reason="full"} 2.0' in body
    assert 'kwsd_outbox_dropped_total{reason="expired"} 3.0' in body
    assert "kwsd_outbox_messages 1.0" in body


# ---------------------------------------------------------------- retained state


async def test_deletions_of_removed_keywords_are_sent_once(
    mosquitto_restartable: Mosquitto, mqtt_base_topic: str
) -> None:
    """Home Assistant discovery deletes the trigger of every removed keyword with an empty
    retained config. After the broker has it, a reconnect must not send it again: rounds
    of keyword changes would otherwise grow what every reconnect re-sends, ahead of the
    detections."""
    broker, base = mosquitto_restartable, mqtt_base_topic
    prefix = f"{base}-ha"
    link = make_link(broker, base)
    ha = HomeAssistantDiscovery(
        link, HomeAssistantSettings(discovery_prefix=prefix, node_id="kitchen"), "kitchen", "1"
    )
    async with running(link):
        for round_ in range(3):  # 20 keywords each, all removed by the next round
            ha.publish([f"KEYWORD {round_} {n}" for n in range(20)])
            await link.flush()
        ha.publish(["HEY COMPUTER"])
        await link.flush()
        async with broker.subscriber(f"{prefix}/#", session="ha-observer"):
            pass  # the broker queues what the reconnect sends while the observer is away
        broker.stop()
        await wait_until(lambda: not link.connected, what="the link to notice")
        broker.start()
        await wait_until(lambda: link.status.connects == 2, what="the reconnect")
        await link.flush()
        async with broker.subscriber(f"{prefix}/#", session="ha-observer") as sub:
            await broker.publish(f"{prefix}/probe", b"end")
            await sub.wait_for(lambda m: m.payload == b"end")
    resent = [m for m in sub.messages if m.topic.value != f"{prefix}/probe"]
    deletions = [m.topic.value for m in resent if not m.payload]
    assert deletions == []
    live = {m.topic.value for m in resent}
    assert f"{prefix}/device_automation/kitchen/keyword_hey_computer/config" in live
    assert len(live) == 2  # the event entity and the one trigger


# ------------------------------------------------------------------- reconnecting


async def test_reconnects_within_3_s_of_the_broker_returning(
    mosquitto_restartable: Mosquitto, mqtt_base_topic: str
) -> None:
    """With the default reconnect settings, a 7 s outage.

    That is long enough for the exponential schedule (1, 2, 4, 8 s, jittered) to wait
    4-8 s, often past the broker's return. During the first minute of an outage the
    delay is held at 1-2 s however many attempts failed, so the gaps between attempts
    measured here bound the delay for any outage under a minute.
    """
    broker, base = mosquitto_restartable, mqtt_base_topic
    defaults = MqttSettings()
    link = make_link(
        broker,
        base,
        reconnect_min_seconds=defaults.reconnect_min_seconds,
        reconnect_max_seconds=defaults.reconnect_max_seconds,
    )
    loop = asyncio.get_running_loop()
    attempts: list[float] = []  # when the loss, each failed attempt and the reconnect were seen

    def outcomes() -> int:
        return link.status.failures + link.status.connects

    async def record() -> None:
        seen = outcomes()
        while True:
            if outcomes() != seen:
                seen = outcomes()
                attempts.append(loop.time())
            await asyncio.sleep(0.005)

    async with running(link):
        recorder = asyncio.create_task(record())
        broker.stop()
        await wait_until(lambda: not link.connected, what="the link to notice")
        lost = loop.time()
        await asyncio.sleep(lost + 7.0 - loop.time())
        broker.start()  # returns once the broker accepts connections
        back = loop.time()
        await wait_until(lambda: link.connected, within=20, what="the reconnect")
        elapsed = loop.time() - back
        await asyncio.sleep(0.05)
        recorder.cancel()
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert len(attempts) >= 5, attempts  # lost, >= 3 failed attempts, reconnected
    assert max(gaps) < 2.7, f"a {max(gaps):.1f} s gap between attempts: {gaps}"
    assert elapsed < 3.0, f"reconnected {elapsed:.1f} s after the broker came back"
