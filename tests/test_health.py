"""The health/metrics endpoint, over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from kwsd.errors import ConfigError
from kwsd.health import (
    HealthReport,
    HealthServer,
    LinkState,
    audio_check,
    health_source,
    mqtt_check,
)
from kwsd.heartbeat import Heartbeat
from kwsd.metrics import Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Daemon:
    """The state a running daemon would expose to the endpoint."""

    clock: FakeClock
    heartbeat: Heartbeat
    metrics: Metrics
    link: LinkState
    server: HealthServer


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    clock = FakeClock()
    heartbeat = Heartbeat(clock)
    metrics = Metrics()
    metrics.watch_heartbeat(heartbeat)
    state = Daemon(clock, heartbeat, metrics, LinkState(True), None)  # type: ignore[arg-type]
    source = health_source(audio_check(heartbeat, max_age=5.0), mqtt_check(lambda: state.link))
    state.server = HealthServer(source, metrics, port=0)
    async with state.server:
        yield state


def fetch(
    url: str, method: str = "GET", accept: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, method=method)
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


async def get(
    url: str, method: str = "GET", accept: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(fetch, url, method, accept)


async def raw(server: HealthServer, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return data


async def test_binds_loopback_by_default(daemon: Daemon) -> None:
    assert daemon.server.host == "127.0.0.1"
    assert daemon.server.url.startswith("http://127.0.0.1:")
    assert daemon.server.addresses == [("127.0.0.1", daemon.server.port)]
    # And not reachable on another address of this host, where it has one.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing address
        other = probe.getsockname()[0]
    except OSError:
        other = "127.0.0.1"
    finally:
        probe.close()
    if not other.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((other, daemon.server.port), timeout=2).close()


async def test_healthz_ok_when_audio_flows_and_mqtt_connected(daemon: Daemon) -> None:
    daemon.heartbeat.beat()
    daemon.clock.now += 0.3
    status, headers, body = await get(f"{daemon.server.url}/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    report = json.loads(body)
    assert report["status"] == "ok"
    assert report["reasons"] == []
    assert report["checks"]["audio"] == {"ok": True, "age_s": 0.3}
    assert report["checks"]["mqtt"] == {"ok": True, "connected": True}


async def test_healthz_503_names_every_reason(daemon: Daemon) -> None:
    daemon.heartbeat.beat()
    daemon.clock.now += 12.3
    daemon.link = LinkState(False, "[Errno 111] Connection refused")
    status, _, body = await get(f"{daemon.server.url}/healthz")
    assert status == 503
    report = json.loads(body)
    assert report["status"] == "unhealthy"
    assert report["reasons"] == [
        "no audio for 12.3 s",
        "mqtt disconnected: [Errno 111] Connection refused",
    ]


async def test_healthz_503_before_first_audio(daemon: Daemon) -> None:
    status, _, body = await get(f"{daemon.server.url}/healthz")
    assert status == 503
    assert "no audio processed yet" in json.loads(body)["reasons"][0]


async def test_healthz_recovers(daemon: Daemon) -> None:
    daemon.heartbeat.beat()
    daemon.clock.now += 6
    assert (await get(f"{daemon.server.url}/healthz"))[0] == 503
    daemon.heartbeat.beat()
    assert (await get(f"{daemon.server.url}/healthz"))[0] == 200


async def test_metrics_expose_names_and_updated_values(daemon: Daemon) -> None:
    m = daemon.metrics
    m.record_detection("LIGHT UP")
    m.record_detection("LIGHT UP")
    m.record_detection("LOVELY CHILD")
    m.record_dropped(0.64)
    m.record_chunk(0.004)
    m.set_mqtt_connected(True)
    m.set_outbox(3)
    m.set_keywords(2)
    m.set_build_info(backend="onnx")
    daemon.heartbeat.beat()
    daemon.clock.now += 1.5

    status, headers, body = await get(f"{daemon.server.url}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'kwsd_detections_total{keyword="LIGHT UP"} 2.0' in text
    assert 'kwsd_detections_total{keyword="LOVELY CHILD"} 1.0' in text
    assert "kwsd_audio_dropped_seconds_total 0.64" in text
    assert 'kwsd_chunk_seconds_bucket{le="0.005"} 1.0' in text
    assert 'kwsd_chunk_seconds_bucket{le="0.003"} 0.0' in text
    assert "kwsd_chunk_seconds_count 1.0" in text
    assert "kwsd_mqtt_connected 1.0" in text
    assert "kwsd_realtime_factor 0.0125" in text
    assert "kwsd_outbox_messages 3.0" in text
    assert "kwsd_keywords 2.0" in text
    assert "kwsd_audio_age_seconds 1.5" in text
    assert 'kwsd_build_info{backend="onnx",version="' in text


async def test_mqtt_drop_counters_follow_the_links_totals(daemon: Daemon) -> None:
    m = daemon.metrics
    before = (await get(f"{daemon.server.url}/metrics"))[2].decode()
    assert 'kwsd_outbox_dropped_total{reason="expired"} 0.0' in before  # there from the start
    assert 'kwsd_mqtt_incoming_dropped_total{kind="command"} 0.0' in before
    totals = {"outbox_full": 2, "outbox_expired": 5, "commands_dropped": 7}
    m.set_mqtt_totals(**totals, incoming_dropped=1, connections=1)
    m.set_mqtt_totals(**totals, incoming_dropped=1, connections=3)  # two reconnects later
    text = (await get(f"{daemon.server.url}/metrics"))[2].decode()
    assert 'kwsd_outbox_dropped_total{reason="full"} 2.0' in text
    assert 'kwsd_outbox_dropped_total{reason="expired"} 5.0' in text
    assert 'kwsd_mqtt_incoming_dropped_total{kind="command"} 7.0' in text
    assert 'kwsd_mqtt_incoming_dropped_total{kind="other"} 1.0' in text
    assert "kwsd_mqtt_connections_total 3.0" in text


async def test_metrics_openmetrics_negotiation(daemon: Daemon) -> None:
    status, headers, body = await get(
        f"{daemon.server.url}/metrics", accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.decode().rstrip().endswith("# EOF")


async def test_unknown_path_404_and_wrong_method_405(daemon: Daemon) -> None:
    status, _, body = await get(f"{daemon.server.url}/nope")
    assert status == 404
    assert b"/healthz" in body
    status, headers, _ = await get(f"{daemon.server.url}/healthz", method="POST")
    assert status == 405
    assert headers["Allow"] == "GET, HEAD"


async def test_head_has_no_body_and_query_is_ignored(daemon: Daemon) -> None:
    daemon.heartbeat.beat()
    response = await raw(daemon.server, b"HEAD /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"Content-Length: " in head
    assert body == b""


async def test_malformed_and_oversized_requests_get_400(daemon: Daemon) -> None:
    response = await raw(daemon.server, b"garbage\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 400 ")
    huge = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n"
    response = await raw(daemon.server, huge)
    assert response.startswith(b"HTTP/1.1 400 ")
    # The listener is still fine afterwards.
    assert (await get(f"{daemon.server.url}/metrics"))[0] == 200


async def test_client_that_disconnects_midway_does_not_hurt(daemon: Daemon) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", daemon.server.port)
    writer.write(b"GET /heal")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    assert (await get(f"{daemon.server.url}/metrics"))[0] == 200


async def test_a_raising_source_answers_500_and_server_survives() -> None:
    calls = 0

    def source() -> HealthReport:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return HealthReport()

    async with HealthServer(source, port=0) as server:
        assert (await get(f"{server.url}/healthz"))[0] == 500
        assert (await get(f"{server.url}/healthz"))[0] == 200
        # Without a Metrics object there is no /metrics.
        assert (await get(f"{server.url}/metrics"))[0] == 404


async def test_a_raising_check_is_an_unhealthy_reason() -> None:
    def broken() -> LinkState:
        raise RuntimeError("client not started")

    report = health_source(mqtt_check(broken))()
    assert not report.healthy
    assert report.reasons == ["mqtt check raised: client not started"]


async def test_port_in_use_is_a_config_error() -> None:
    async with HealthServer(HealthReport, port=0) as first:
        second = HealthServer(HealthReport, port=first.port)
        with pytest.raises(ConfigError, match=r"cannot listen on 127\.0\.0\.1:\d+"):
            await second.start()


async def test_serve_runs_until_cancelled() -> None:
    server = HealthServer(HealthReport, port=0)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        await asyncio.sleep(0.01)
        try:
            port = server.port
            break
        except RuntimeError:
            continue
    assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_metrics_instances_do_not_share_a_registry() -> None:
    a, b = Metrics(), Metrics()  # the default global registry would raise "Duplicated"
    a.record_detection("HEY")
    assert b'kwsd_detections_total{keyword="HEY"}' in a.render()[0]
    assert b'kwsd_detections_total{keyword="HEY"}' not in b.render()[0]


def test_realtime_factor_is_smoothed() -> None:
    m = Metrics()
    m.record_chunk(0.032)  # RTF 0.1
    m.record_chunk(0.32)  # RTF 1.0, one slow chunk moves the gauge a tenth of the way
    value = m.registry.get_sample_value("kwsd_realtime_factor")
    assert value is not None
    assert math.isclose(value, 0.19)


def test_audio_age_is_nan_until_heartbeat_watched() -> None:
    m = Metrics()
    value = m.registry.get_sample_value("kwsd_audio_age_seconds")
    assert value is not None and math.isnan(value)
