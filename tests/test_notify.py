"""sd_notify, the watchdog and the service lifecycle, against real unix datagram sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from kwsd.heartbeat import Heartbeat
from kwsd.service.notify import Notifier, parse_address, parse_watchdog
from kwsd.service.watchdog import ServiceLifecycle, Watchdog


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Receiver:
    """The service manager's end: a bound AF_UNIX datagram socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def notifier(self, **env: str) -> Notifier:
        return Notifier.from_env({"NOTIFY_SOCKET": self.env_value, **env})

    def recv(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode("utf-8")

    def pending(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        messages = []
        self.sock.setblocking(False)
        try:
            while True:
                messages.append(self.sock.recv(4096).decode("utf-8"))
        except BlockingIOError:
            return messages


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can exceed that.
    path = Path("/tmp") / f"kwsd-notify-{uuid.uuid4().hex[:12]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield Receiver(sock, str(path))
    finally:
        sock.close()
        path.unlink(missing_ok=True)


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"kwsd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield Receiver(sock, "@" + name)
    finally:
        sock.close()


def test_ready_status_stopping_arrive_on_path_socket(receiver: Receiver) -> None:
    notifier = receiver.notifier()
    assert notifier.enabled
    assert notifier.ready("listening for 3 keywords")
    assert receiver.recv() == "READY=1\nSTATUS=listening for 3 keywords"
    assert notifier.status("line one\nline two")
    assert receiver.recv() == "STATUS=line one line two"
    assert notifier.watchdog()
    assert receiver.recv() == "WATCHDOG=1"
    assert notifier.extend_timeout(2.5)
    assert receiver.recv() == "EXTEND_TIMEOUT_USEC=2500000"
    assert notifier.stopping()
    assert receiver.recv() == "STOPPING=1"


def test_reloading_carries_monotonic_timestamp(receiver: Receiver) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert receiver.notifier().reloading()
    first, second = receiver.recv().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert int(value) >= before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux-only")
def test_abstract_namespace_socket(abstract_receiver: Receiver) -> None:
    notifier = abstract_receiver.notifier()
    assert notifier.ready()
    assert abstract_receiver.recv() == "READY=1"


def test_no_socket_means_silent_noop() -> None:
    notifier = Notifier.from_env({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.watchdog()


def test_unsupported_address_disables_with_warning() -> None:
    with structlog.testing.capture_logs() as logs:
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert any("NOTIFY_SOCKET" in entry["event"] for entry in logs)


def test_vanished_receiver_is_logged_once_and_never_raises() -> None:
    notifier = Notifier.from_env({"NOTIFY_SOCKET": f"/tmp/kwsd-absent-{uuid.uuid4().hex}.sock"})
    with structlog.testing.capture_logs() as logs:
        assert not notifier.watchdog()
        assert not notifier.watchdog()
    failures = [e for e in logs if e["event"] == "service manager notification failed"]
    assert len(failures) == 1


def test_parse_address() -> None:
    assert parse_address("/run/systemd/notify") == b"/run/systemd/notify"
    assert parse_address("@abc") == b"\0abc"
    assert parse_address("@") is None
    assert parse_address("relative/path") is None


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # meant for another
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_parse_watchdog(env: dict[str, str], expected: float | None) -> None:
    assert parse_watchdog(env, pid=4242) == expected


def test_watchdog_interval_from_env_uses_own_pid(receiver: Receiver) -> None:
    mine = receiver.notifier(WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid()))
    assert mine.watchdog_interval == 2.0
    other = receiver.notifier(WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid() + 1))
    assert other.watchdog_interval is None


def test_heartbeat_age_and_freshness() -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(clock)
    assert heartbeat.age() is None
    assert not heartbeat.started
    assert not heartbeat.fresh(10)
    heartbeat.beat()
    clock.now += 3.0
    assert heartbeat.age() == 3.0
    assert heartbeat.fresh(3.0)
    assert not heartbeat.fresh(2.9)
    assert heartbeat.beats == 1


def test_watchdog_pings_only_while_heartbeat_is_fresh(receiver: Receiver) -> None:
    clock = FakeClock()
    heartbeat = Heartbeat(clock)
    notifier = receiver.notifier(WATCHDOG_USEC="10000000")
    watchdog = Watchdog(notifier, heartbeat)
    assert watchdog.interval == 10.0

    with structlog.testing.capture_logs() as logs:
        assert not watchdog.tick()  # nothing processed yet: no ping
    assert watchdog.stalled
    assert receiver.pending() == ["STATUS=stalled: last audio chunk processed never"]
    assert any("stalled" in e["event"] for e in logs)

    heartbeat.beat()
    clock.now += 4.0
    assert watchdog.tick()
    assert receiver.pending() == ["STATUS=listening", "WATCHDOG=1"]  # recovered, then ping

    clock.now += 7.0  # 11 s since the last chunk: the pipeline is stuck
    assert not watchdog.tick()
    assert not watchdog.tick()
    assert receiver.pending() == ["STATUS=stalled: last audio chunk processed 11.0 s ago"]

    heartbeat.beat()
    assert watchdog.tick()
    assert receiver.pending() == ["STATUS=listening", "WATCHDOG=1"]


async def test_watchdog_task_stops_pinging_when_the_pipeline_stalls(receiver: Receiver) -> None:
    # systemd asks for a 0.2 s watchdog; kwsd pings every 0.1 s while chunks flow.
    notifier = receiver.notifier(WATCHDOG_USEC="200000")
    heartbeat = Heartbeat()
    heartbeat.beat()
    task = asyncio.create_task(Watchdog(notifier, heartbeat).run())
    try:
        pings = 0
        while pings < 3:  # the pipeline is alive: pings keep arriving
            heartbeat.beat()
            await asyncio.sleep(0.02)
            pings += receiver.pending().count("WATCHDOG=1")
        # The pipeline stalls. Once the last beat is older than the interval, no tick
        # may ping; wait past that, drop what was sent before, then listen.
        await asyncio.sleep(0.45)
        receiver.pending()
        await asyncio.sleep(0.5)  # five ping periods
        late = receiver.pending()
        assert "WATCHDOG=1" not in late
        assert not task.done()
        # Audio flows again: pings resume.
        heartbeat.beat()
        resumed = []
        while "WATCHDOG=1" not in resumed:
            heartbeat.beat()
            await asyncio.sleep(0.02)
            resumed += receiver.pending()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_run_returns_without_watchdog(receiver: Receiver) -> None:
    await asyncio.wait_for(Watchdog(receiver.notifier(), Heartbeat()).run(), 5)
    assert receiver.pending() == []


async def test_lifecycle_ready_after_first_chunk_from_worker_thread(receiver: Receiver) -> None:
    notifier = receiver.notifier(WATCHDOG_USEC="200000")
    heartbeat = Heartbeat()
    lifecycle = ServiceLifecycle(notifier, heartbeat, ready_status="listening for LIGHT UP")
    task = asyncio.create_task(lifecycle.run())
    await asyncio.sleep(0.1)
    assert receiver.pending() == ["STATUS=loading model and opening audio"]
    assert not lifecycle.ready

    stop = threading.Event()

    def pipeline() -> None:  # the engine's worker thread
        while not stop.is_set():
            heartbeat.beat()
            time.sleep(0.01)

    worker = threading.Thread(target=pipeline)
    worker.start()
    try:
        # Receive off the loop: the lifecycle task needs the loop to send.
        assert await asyncio.to_thread(receiver.recv) == "READY=1\nSTATUS=listening for LIGHT UP"
        assert await asyncio.to_thread(receiver.recv) == "WATCHDOG=1"
        assert lifecycle.ready
    finally:
        stop.set()
        worker.join()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert receiver.pending()[-1] == "STOPPING=1"


async def test_lifecycle_outside_systemd_is_quiet_and_cancellable() -> None:
    heartbeat = Heartbeat()
    lifecycle = ServiceLifecycle(Notifier(None), heartbeat)
    task = asyncio.create_task(lifecycle.run())
    heartbeat.beat()
    for _ in range(100):
        if lifecycle.ready:
            break
        await asyncio.sleep(0.01)
    assert lifecycle.ready
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_wait_started_returns_at_once_after_a_beat() -> None:
    heartbeat = Heartbeat()
    heartbeat.beat()
    await asyncio.wait_for(heartbeat.wait_started(), 1)
