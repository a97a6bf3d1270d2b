"""The Wyoming server's decode engine: whole chunks handed over, one batch, graphs once.

The client is the `wyoming` package; the server runs the real decoder/joiner with the
stand-in encoder on espeak-ng speech at the 16 kHz 16-bit mono Home Assistant streams,
sent in its 1,024-sample (64 ms) chunks.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from wyoming.client import AsyncTcpClient
from wyoming.wake import Detect
from wyoming_support import CHUNK_SAMPLES, WIDTH, espeak_pcm, utterance

import kwsd.search.shared as shared
from kwsd.batch import BatchStream
from kwsd.engine import Frontend
from kwsd.keywords import KeywordSet, KeywordSpec
from kwsd.search.graph import ContextGraph
from kwsd.spotter import KeywordSpotter
from kwsd.wyoming import server as server_module
from kwsd.wyoming.decoding import BatchWorker
from kwsd.wyoming.engine import chunk_boundaries
from kwsd.wyoming.server import MAX_BACKLOG_CHUNKS, WyomingServer
from kwsd.wyoming.shards import ThreadShard


@pytest.fixture(scope="module")
def spotter(assets: Path) -> KeywordSpotter:
    return KeywordSpotter.from_assets(assets)


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """'hey computer, turn on the lights' as 16 kHz 16-bit mono PCM."""
    path = tmp_path_factory.mktemp("speech") / "s.wav"
    return espeak_pcm("hey computer, turn on the lights", path)


def _fresh_keywords(spotter: KeywordSpotter, extra: str) -> KeywordSet:
    """A list no other test compiled, so its graph is not in the spotter's cache yet."""
    phrases = ["HEY COMPUTER", "TURN ON THE LIGHTS", extra]
    return spotter.compile([KeywordSpec(phrase=p, boost=2.0, threshold=0.25) for p in phrases])


class _Stall:
    """A command that holds the decode worker until `released` is set."""

    def __init__(self, released: threading.Event) -> None:
        self.released = released

    def apply(self, worker: BatchWorker) -> None:
        self.released.wait(30)


class _Counter:
    """Counts the calls of a real function and passes them through."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        assert callable(self.real)
        return self.real(*args, **kwargs)


@pytest.fixture
def graph_builds(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Counter]:
    counter = _Counter(shared.build_graph)
    monkeypatch.setattr(shared, "build_graph", counter)
    yield counter


@pytest.fixture
def selections(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Counter]:
    counter = _Counter(server_module.select)
    monkeypatch.setattr(server_module, "select", counter)
    yield counter


@pytest.fixture
def hand_overs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The number of samples of every hand-over to a batch stream."""
    sizes: list[int] = []
    real = BatchStream.accept

    def accept(stream: BatchStream, samples: object) -> int:
        sizes.append(len(samples))  # type: ignore[arg-type]
        return real(stream, samples)  # type: ignore[arg-type]

    monkeypatch.setattr(BatchStream, "accept", accept)
    yield sizes


def test_hand_over_points_are_where_the_model_completes_a_chunk(
    spotter: KeywordSpotter,
) -> None:
    first, chunk = chunk_boundaries(spotter)
    assert chunk == 5120  # 320 ms at 16 kHz
    silence = np.zeros(first + 3 * chunk, np.float32)
    for k in range(4):
        due = first + k * chunk
        # Just before a hand-over point the chunk is not complete; at it, it is.
        assert len(Frontend(spotter.backend).windows(silence[: due - 80])) == k
        assert len(Frontend(spotter.backend).windows(silence[:due])) == k + 1


async def test_audio_is_handed_over_in_whole_chunks_and_detected(
    spotter: KeywordSpotter, speech: bytes, hand_overs: list[int]
) -> None:
    keywords = _fresh_keywords(spotter, "GOOD MORNING")
    server = WyomingServer(spotter, lambda: keywords, version="1")
    await server.start("tcp://127.0.0.1:0")
    assert server.bound is not None and server.engine is not None
    first, chunk = server.engine.first_chunk_samples, server.engine.chunk_samples
    try:
        async with AsyncTcpClient(*server.bound) as client:
            await client.write_event(Detect(names=["hey_computer"]).event())
            assert await utterance(client, speech) == ["hey_computer"]
    finally:
        await server.close()
    samples = len(speech) // WIDTH
    ends = np.cumsum(hand_overs)
    # Not one hand-over per 64 ms piece: one per encoder chunk, as soon as the piece that
    # completes it arrives, plus the tail at audio-stop.
    for k, end in enumerate(ends[:-1]):
        due = first + k * chunk
        assert due <= end < due + CHUNK_SAMPLES
    assert len(hand_overs) <= 1 + (samples - first) // chunk + 1
    assert len(hand_overs) < samples // CHUNK_SAMPLES / 4
    assert sum(hand_overs) == samples


async def test_audio_starts_with_the_same_list_build_its_graph_once(
    spotter: KeywordSpotter,
    speech: bytes,
    graph_builds: _Counter,
    selections: _Counter,
) -> None:
    keywords = _fresh_keywords(spotter, "GOOD EVENING")
    server = WyomingServer(spotter, lambda: keywords, version="1")
    await server.start("tcp://127.0.0.1:0")
    assert server.bound is not None
    try:
        for _connection in range(2):
            async with AsyncTcpClient(*server.bound) as client:
                await client.write_event(Detect(names=["turn_on_the_lights"]).event())
                for _utterance_number in range(3):
                    assert await utterance(client, speech) == ["turn_on_the_lights"]
    finally:
        await server.close()
    assert graph_builds.calls == 1  # the selected list's graph, for all six utterances
    assert selections.calls == 1  # "turn_on_the_lights" of this list, worked out once


async def test_a_new_keyword_list_reaches_the_next_utterance_of_a_connection(
    spotter: KeywordSpotter, speech: bytes, graph_builds: _Counter
) -> None:
    first = _fresh_keywords(spotter, "GOOD AFTERNOON")
    second = spotter.compile([KeywordSpec(phrase="TURN ON THE LIGHTS", boost=2.0)])
    current = [first]
    server = WyomingServer(spotter, lambda: current[0], version="1")
    await server.start("tcp://127.0.0.1:0")
    assert server.bound is not None
    try:
        async with AsyncTcpClient(*server.bound) as client:
            assert await utterance(client, speech) == ["hey_computer", "turn_on_the_lights"]
            current[0] = second
            assert await utterance(client, speech) == ["turn_on_the_lights"]
            current[0] = first
            assert await utterance(client, speech) == ["hey_computer", "turn_on_the_lights"]
    finally:
        await server.close()
    # Each list once (the first one's graph is still cached when it comes back).
    assert graph_builds.calls <= 2


async def test_concurrent_connections_get_what_each_gets_alone(
    spotter: KeywordSpotter, speech: bytes
) -> None:
    keywords = _fresh_keywords(spotter, "GOOD NIGHT")
    silence = bytes(len(speech))
    server = WyomingServer(spotter, lambda: keywords, version="1")
    await server.start("tcp://127.0.0.1:0")
    assert server.bound is not None
    try:
        clients = [AsyncTcpClient(*server.bound) for _ in range(4)]
        for client in clients:
            await client.connect()
        # Two connections hear speech, two silence, all at once through one batch.
        sounds = [speech, silence, speech, silence]
        results = await asyncio.gather(
            *(utterance(c, pcm) for c, pcm in zip(clients, sounds, strict=True))
        )
        for client in clients:
            await client.disconnect()
    finally:
        await server.close()
    hit = ["hey_computer", "turn_on_the_lights"]
    assert results == [hit, ["not-detected"], hit, ["not-detected"]]


def test_graph_counter_sees_real_builds(spotter: KeywordSpotter, graph_builds: _Counter) -> None:
    """The counter above counts: a list never seen before builds a graph here."""
    keywords = _fresh_keywords(spotter, "OPEN THE GARAGE")
    spotter.prepare(keywords)
    assert graph_builds.calls == 1
    assert isinstance(shared.build_graph(keywords), ContextGraph)


async def test_a_client_ahead_of_its_decoding_is_read_no_further(
    spotter: KeywordSpotter, speech: bytes
) -> None:
    """While the worker is busy, a connection hands over a few chunks, then waits: its
    audio stays in its socket instead of piling up in kwsd; nothing is lost."""
    keywords = _fresh_keywords(spotter, "GOOD NIGHT")
    server = WyomingServer(spotter, lambda: keywords, version="1")
    await server.start("tcp://127.0.0.1:0")
    assert server.bound is not None and server.engine is not None
    engine = server.engine
    busy = threading.Event()
    try:
        async with AsyncTcpClient(*server.bound) as client:
            (shard,) = engine.shards
            assert isinstance(shard, ThreadShard)
            shard.submit(_Stall(busy))  # the worker is stuck in a long step
            talking = asyncio.create_task(utterance(client, speech + bytes(len(speech))))
            await asyncio.sleep(1.0)
            (stream,) = engine.streams
            assert 0 < stream.backlog <= MAX_BACKLOG_CHUNKS + 1
            assert not talking.done()
            busy.set()
            assert await talking == ["hey_computer", "turn_on_the_lights"]
            assert stream.backlog == 0
    finally:
        busy.set()
        await server.close()


async def test_a_failing_detection_observer_costs_the_client_nothing(
    spotter: KeywordSpotter, speech: bytes
) -> None:
    keywords = _fresh_keywords(spotter, "GOOD NIGHT")
    seen: list[str] = []

    def observer(det: object) -> None:
        seen.append(str(getattr(det, "keyword", "")))
        raise RuntimeError("observer bug")

    server = WyomingServer(spotter, lambda: keywords, version="1", on_detection=observer)
    await server.start("tcp://127.0.0.1:0")
    assert server.bound is not None
    try:
        with structlog.testing.capture_logs() as logs:
            async with AsyncTcpClient(*server.bound) as client:
                assert await utterance(client, speech) == ["hey_computer", "turn_on_the_lights"]
                assert await utterance(client, speech) == ["hey_computer", "turn_on_the_lights"]
    finally:
        await server.close()
    assert seen == ["HEY COMPUTER", "TURN ON THE LIGHTS"] * 2
    assert sum(e["event"] == "Wyoming detection observer failed" for e in logs) == 4
