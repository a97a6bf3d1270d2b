"""The Wyoming server as Home Assistant and wyoming-satellite use it.

The client is the `wyoming` package (what Home Assistant's Wyoming integration and
wyoming-satellite are built on); the server runs the real decoder/joiner with the
stand-in encoder, and the speech is espeak-ng resampled to the 16 kHz 16-bit mono that
Home Assistant streams. Home Assistant sends `detect {names: [wake_word_id]}` and drops
every detection whose `name` differs from that id; an `error` ends its wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import soundfile as sf
import soxr
import structlog
from engine_support import espeak_wav
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.wake import Detect, Detection, NotDetected
from wyoming_support import pcm16

from kwsd.keywords import KeywordSet, KeywordSpec
from kwsd.spotter import KeywordSpotter
from kwsd.wyoming.limits import ConnectionLimits, RepeatedWarning
from kwsd.wyoming.server import WyomingServer

RATE, WIDTH, CHANNELS = 16000, 2, 1  # what Home Assistant streams
CHUNK_BYTES = 1024 * WIDTH


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """'hey computer, turn on the lights' as 16 kHz 16-bit mono PCM."""
    wav = espeak_wav(
        tmp_path_factory.mktemp("speech") / "s.wav", "hey computer, turn on the lights"
    )
    audio, rate = sf.read(wav, dtype="float32")
    return pcm16(soxr.resample(audio, rate, RATE))


@pytest.fixture(scope="module")
def model(assets: Path) -> tuple[KeywordSpotter, KeywordSet]:
    """HEY COMPUTER with the label "Computer" (as a user sets `display`), and a plain one."""
    spotter = KeywordSpotter.from_assets(assets)
    specs = [
        KeywordSpec(phrase="HEY COMPUTER", display="Computer", boost=2.0, threshold=0.25),
        KeywordSpec(phrase="TURN ON THE LIGHTS", boost=2.0, threshold=0.25),
    ]
    return spotter, spotter.compile(specs)


ServerFactory = Callable[..., Awaitable[WyomingServer]]


@pytest.fixture
async def serve(model: tuple[KeywordSpotter, KeywordSet]) -> AsyncIterator[ServerFactory]:
    """Start servers on a free loopback port (closed after the test)."""
    spotter, keywords = model
    servers: list[WyomingServer] = []

    async def start(
        keyword_set: KeywordSet | None = None, limits: ConnectionLimits | None = None
    ) -> WyomingServer:
        chosen = keywords if keyword_set is None else keyword_set
        server = WyomingServer(spotter, lambda: chosen, version="9.9.9", limits=limits)
        await server.start("tcp://127.0.0.1:0")
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.close()


def client_for(server: WyomingServer) -> AsyncTcpClient:
    assert server.bound is not None
    return AsyncTcpClient(*server.bound)


async def read(client: AsyncTcpClient, within: float = 30.0) -> Event | None:
    async with asyncio.timeout(within):
        return await client.read_event()


async def stream(client: AsyncTcpClient, pcm: bytes) -> None:
    """audio-start, chunks and audio-stop, as Home Assistant sends them."""
    await client.write_event(AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event())
    for offset in range(0, len(pcm), CHUNK_BYTES):
        chunk = AudioChunk(
            rate=RATE, width=WIDTH, channels=CHANNELS, audio=pcm[offset : offset + CHUNK_BYTES]
        )
        await client.write_event(chunk.event())
    await client.write_event(AudioStop().event())


async def answers(client: AsyncTcpClient) -> list[Event]:
    """Every event the server sent for what was written so far.

    Events are answered in order, so the `pong` to a ping sent now marks the end.
    """
    await client.write_event(Ping(text="end").event())
    events: list[Event] = []
    while True:
        event = await read(client)
        assert event is not None, f"the server closed the connection after {events}"
        if Pong.is_type(event.type):
            return events
        events.append(event)


def detection_names(events: list[Event]) -> list[str | None]:
    assert all(Detection.is_type(e.type) for e in events), events
    return [Detection.from_event(e).name for e in events]


# ------------------------------------------------------------- item 1: names


async def test_info_offers_stable_ids_with_the_label_as_description(
    serve: ServerFactory,
) -> None:
    server = await serve()
    async with client_for(server) as client:
        await client.write_event(Describe().event())
        event = await read(client)
    assert event is not None and Info.is_type(event.type)
    (program,) = Info.from_event(event).wake
    assert program.name == "kwsd" and program.installed
    models = [(m.name, m.description, m.phrase) for m in program.models]
    assert models == [
        ("hey_computer", "Computer", "HEY COMPUTER"),
        ("turn_on_the_lights", "Turn On The Lights", "TURN ON THE LIGHTS"),
    ]


async def test_home_assistant_gets_the_id_it_asked_for(serve: ServerFactory, speech: bytes) -> None:
    """Home Assistant's loop: pick a model from `info`, detect it, compare the name."""
    server = await serve()
    async with client_for(server) as client:
        await client.write_event(Describe().event())
        info = await read(client)
        assert info is not None
        wake_word_id = next(
            m.name for m in Info.from_event(info).wake[0].models if m.phrase == "HEY COMPUTER"
        )
        await client.write_event(Detect(names=[wake_word_id]).event())
        await stream(client, speech)
        names = detection_names(await answers(client))
    assert names == [wake_word_id]  # the only keyword asked for, named as asked


@pytest.mark.parametrize(
    "requested",
    [
        "hey_computer",  # typed in a satellite config, openWakeWord style
        "HEY COMPUTER",  # the id Home Assistant stored before the keyword got a label
        "Computer",  # the label
        "Hey-Computer",
    ],
)
async def test_detection_name_is_exactly_the_requested_name(
    serve: ServerFactory, speech: bytes, requested: str
) -> None:
    server = await serve()
    async with client_for(server) as client:
        await client.write_event(Detect(names=[requested]).event())
        await stream(client, speech)
        assert detection_names(await answers(client)) == [requested]


async def test_without_names_detections_carry_the_advertised_names(
    serve: ServerFactory, speech: bytes
) -> None:
    server = await serve()
    async with client_for(server) as client:
        await client.write_event(Describe().event())
        info = await read(client)
        assert info is not None
        advertised = [m.name for m in Info.from_event(info).wake[0].models]
        await client.write_event(Detect(names=None).event())
        await stream(client, speech)
        assert detection_names(await answers(client)) == advertised


# ----------------------------------------------- item 2: unknown names, no keywords


async def test_unknown_name_is_an_error_that_keeps_the_connection(
    serve: ServerFactory, speech: bytes
) -> None:
    server = await serve()
    async with client_for(server) as client:
        await client.write_event(Detect(names=["open_sesame"]).event())
        event = await read(client)
        assert event is not None and Error.is_type(event.type), event
        error = Error.from_event(event)
        assert error.code == "unknown-wake-word"
        assert "'open_sesame'" in error.text
        assert "hey_computer (Computer), turn_on_the_lights" in error.text

        # The stream is served and ends in not-detected, although it holds the keyword.
        await stream(client, speech)
        events = await answers(client)
        assert [e.type for e in events] == [NotDetected().event().type]

        # The same connection works once the client asks for a keyword that exists.
        await client.write_event(Detect(names=["hey_computer"]).event())
        await stream(client, speech)
        assert detection_names(await answers(client)) == ["hey_computer"]


async def test_known_names_beside_an_unknown_one_are_spotted_without_an_error(
    serve: ServerFactory, speech: bytes
) -> None:
    server = await serve()
    async with client_for(server) as client:
        await client.write_event(Detect(names=["nope", "HEY_COMPUTER"]).event())
        await stream(client, speech)
        assert detection_names(await answers(client)) == ["HEY_COMPUTER"]


async def test_no_active_keywords_is_an_error_that_keeps_the_connection(
    serve: ServerFactory, speech: bytes
) -> None:
    server = await serve(KeywordSet())
    async with client_for(server) as client:
        await stream(client, speech)
        events = await answers(client)
    assert [e.type for e in events] == ["error", "not-detected"]
    error = Error.from_event(events[0])
    assert error.code == "no-keywords" and "no active keywords" in error.text


# ------------------------------------------------------------------- item 5: limits


async def test_connections_beyond_the_cap_are_refused_with_an_error(
    serve: ServerFactory, speech: bytes
) -> None:
    server = await serve(limits=ConnectionLimits(max_connections=3))
    served = [client_for(server) for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        for client in served:
            await stack.enter_async_context(client)
            await client.write_event(Describe().event())
            info = await read(client)
            assert info is not None and Info.is_type(info.type)

        for _ in range(20):
            async with client_for(server) as refused:
                event = await read(refused, within=5)
                assert event is not None and Error.is_type(event.type), event
                assert Error.from_event(event).code == "too-many-connections"
                assert "at most 3" in Error.from_event(event).text
                assert await read(refused, within=5) is None  # closed by the server
        assert server.refusals is not None and server.refusals.count == 20

        # The served ones were never disturbed.
        await served[0].write_event(Detect(names=["hey_computer"]).event())
        await stream(served[0], speech)
        assert detection_names(await answers(served[0])) == ["hey_computer"]

        await served[1].disconnect()
        for _ in range(100):  # the server notices the close on its next read
            if server.active_connections < 3:
                break
            await asyncio.sleep(0.02)
        async with client_for(server) as newcomer:
            await newcomer.write_event(Describe().event())
            info = await read(newcomer, within=5)
            assert info is not None and Info.is_type(info.type)


async def _trickle(port: int, data: bytes, interval: float) -> tuple[bytes, float]:
    """Send `data` one byte per `interval` (slowloris); return what came back and when
    the server closed the connection (seconds after the first byte)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    received = b""

    async def collect() -> None:
        nonlocal received
        while chunk := await reader.read(4096):
            received += chunk

    collector = asyncio.create_task(collect())
    try:
        for byte in data:
            if collector.done():
                break
            writer.write(bytes([byte]))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(interval)
        async with asyncio.timeout(10):
            await collector
    finally:
        collector.cancel()
        writer.close()
    return received, time.monotonic() - started


async def test_a_trickled_message_is_cut_off_after_the_message_timeout(
    serve: ServerFactory,
) -> None:
    server = await serve(limits=ConnectionLimits(message_timeout=1.0))
    assert server.bound is not None
    # 33 bytes at one per 0.1 s never complete within 1 s.
    received, closed_after = await _trickle(
        server.bound[1], b'{"type": "describe", "x": 12345}\n', 0.1
    )
    # Cut off mid-message: sending all of it would have taken 3.3 s.
    assert 0.9 < closed_after < 3.0, closed_after
    assert b'"error"' in received and b"complete within 1 s" in received
    assert b'"info"' not in received


async def test_a_message_in_pieces_within_the_timeout_is_fine(serve: ServerFactory) -> None:
    server = await serve(limits=ConnectionLimits(message_timeout=2.0))
    assert server.bound is not None
    reader, writer = await asyncio.open_connection(*server.bound)
    try:
        for piece in (b'{"type": ', b'"describe"', b"}\n"):
            writer.write(piece)
            await asyncio.sleep(0.3)
        header = await asyncio.wait_for(reader.readline(), 5)
        assert b'"info"' in header
    finally:
        writer.close()


async def test_an_idle_connection_is_closed_and_an_active_one_is_not(
    serve: ServerFactory,
) -> None:
    server = await serve(limits=ConnectionLimits(idle_timeout=1.0))
    async with client_for(server) as idle, client_for(server) as active:
        started = time.monotonic()
        for _ in range(6):  # 2.4 s, more than twice the idle timeout
            await active.write_event(Ping(text="still here").event())
            pong = await read(active, within=5)
            assert pong is not None and Pong.is_type(pong.type)
            await asyncio.sleep(0.4)
        event = await read(idle, within=5)
        assert event is not None and Error.is_type(event.type), event
        assert Error.from_event(event).code == "idle-timeout"
        assert await read(idle, within=5) is None
        assert time.monotonic() - started < 4


def test_a_low_open_file_limit_lowers_the_cap_and_says_so() -> None:
    """Under `ulimit -n 100` there is no room for 32 connections plus the reserve."""
    script = (
        "import resource, structlog.testing\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (100, 100))\n"
        "from kwsd.wyoming.limits import connection_capacity\n"
        "with structlog.testing.capture_logs() as logs:\n"
        "    print(connection_capacity(32), connection_capacity(8))\n"
        "print(logs[0]['fix'] if logs else 'no warning', len(logs))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    capacities, warning = result.stdout.splitlines()
    lowered, untouched = map(int, capacities.split())
    assert 1 <= lowered < 32 and untouched == 8
    assert "LimitNOFILE" in warning and warning.endswith(" 1")


def test_repeated_warning_logs_once_then_summaries() -> None:
    now = [0.0]
    warning = RepeatedWarning("accept failed", interval=10.0, clock=lambda: now[0])
    with structlog.testing.capture_logs() as logs:
        for _ in range(5000):  # 5,000 failures in 25 s
            warning.record(error="Too many open files")
            now[0] += 0.005
        warning.resolved("accepting again")
    assert [entry["event"] for entry in logs] == [
        "accept failed",  # the first, in full
        "accept failed",  # a summary after 10 s
        "accept failed",  # and after 20 s
        "accepting again",
    ]
    assert "repeated" not in logs[0] and logs[0]["error"] == "Too many open files"
    assert 1990 <= logs[1]["repeated"] <= 2010 and logs[1]["within_seconds"] >= 10
    assert logs[-1]["occurrences"] == 5000


async def test_a_stuck_reader_does_not_hold_the_refusal(serve: ServerFactory) -> None:
    """A refused client that never reads nor closes costs its socket for about a second."""
    server = await serve(limits=ConnectionLimits(max_connections=1))
    assert server.bound is not None
    async with client_for(server):
        socks = [socket.create_connection(server.bound) for _ in range(40)]
        try:
            refusals = server.refusals
            assert refusals is not None
            for _ in range(100):
                if refusals.count == 40:
                    break
                await asyncio.sleep(0.02)
            assert refusals.count == 40
            assert 0 < refusals.lingering <= 16  # the rest were closed at once
            await asyncio.sleep(1.5)
            assert refusals.lingering == 0
        finally:
            for sock in socks:
                sock.close()
