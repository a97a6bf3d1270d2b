"""The detection gate: mute first, then refractory, for the pipeline and for Wyoming.

The order matters when someone unmutes and speaks at once: a detection dropped while
muted must not start a refractory period that swallows the next, real one. The audio
is two espeak-ng "hey computer" utterances about 1.6 s apart, inside a 3 s refractory
window; the first is spoken while muted, the second right after unmuting.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import structlog
from engine_support import espeak
from wyoming_support import pcm16

from kwsd.audio.base import AudioBlock
from kwsd.audio.queue import BoundedAudioQueue
from kwsd.detection import Detection
from kwsd.gate import DetectionGate, Verdict
from kwsd.heartbeat import Heartbeat
from kwsd.keywords import KeywordSet, KeywordSpec
from kwsd.mute import HERMES, MuteState
from kwsd.pipeline import BlockReport, Pipeline
from kwsd.spotter import KeywordSpotter
from kwsd.wyoming.audio import AudioFormat, audio_chunk, audio_start, audio_stop
from kwsd.wyoming.event import Event, EventReader, write_event
from kwsd.wyoming.server import WyomingServer, parse_uri

RATE = 16000
REFRACTORY = 3.0
BLOCK = 1600  # 100 ms, as the microphone delivers it

Samples = npt.NDArray[np.float32]


def det(keyword: str, end: float) -> Detection:
    return Detection(keyword, keyword, ("▁X",), end - 0.3, end, 0.6, round(end / 0.04))


def test_a_muted_detection_does_not_start_a_refractory_period() -> None:
    mute = MuteState()
    gate = DetectionGate(mute, refractory_seconds=1.0)
    mute.add(HERMES, "ttsSay")
    assert gate.check(det("HEY COMPUTER", 2.0)) is Verdict.MUTED
    mute.clear()
    assert gate.check(det("HEY COMPUTER", 2.4)) is Verdict.PUBLISH  # said again at once
    assert gate.check(det("HEY COMPUTER", 2.9)) is Verdict.REPEAT  # a published one does
    mute.pause()
    assert gate.check(det("HEY COMPUTER", 5.0)) is Verdict.MUTED  # mute wins over both
    assert DetectionGate().check(det("HEY COMPUTER", 1.0)) is Verdict.PUBLISH  # no mute
    gate.refractory_seconds = 0.0
    mute.resume()
    assert gate.check(det("HEY COMPUTER", 5.1)) is Verdict.PUBLISH
    with pytest.raises(ValueError, match=">= 0"):
        gate.refractory_seconds = -1


@pytest.fixture(scope="module")
def model(assets: Path) -> tuple[KeywordSpotter, KeywordSet]:
    spotter = KeywordSpotter.from_assets(assets)
    return spotter, spotter.compile([KeywordSpec(phrase="HEY COMPUTER")])


@pytest.fixture(scope="module")
def utterances(tmp_path_factory: pytest.TempPathFactory) -> tuple[Samples, Samples]:
    """Two halves: "hey computer" then a pause, each long enough for its detection."""
    hey = espeak("hey computer", tmp_path_factory.mktemp("gate") / "hey.wav")
    pause = np.zeros(int(0.8 * RATE), np.float32)
    half = np.concatenate([hey, pause])
    assert len(half) / RATE < REFRACTORY / 1.5, "the repeat must fall inside the window"
    return half, half.copy()


def _blocks(samples: Samples, start_sample: int) -> list[AudioBlock]:
    return [
        AudioBlock(samples[i : i + BLOCK], start_sample + i) for i in range(0, len(samples), BLOCK)
    ]


async def _pipeline_run(
    model: tuple[KeywordSpotter, KeywordSet], utterances: tuple[Samples, Samples], mute: MuteState
) -> tuple[Pipeline, list[Detection], list[BlockReport]]:
    """Both halves through a pipeline; the observer unmutes once a detection was dropped."""
    spotter, keywords = model
    reports: list[BlockReport] = []

    def observe(report: BlockReport) -> None:
        reports.append(report)
        if report.found and not report.published and mute.muted:
            mute.resume()  # the user speaks right after the mute ends

    stream = spotter.create_stream(keywords)
    pipeline = Pipeline(
        stream.frontend,
        stream.search,
        heartbeat=Heartbeat(),
        gate=DetectionGate(mute, REFRACTORY),
        observer=observe,
    )
    first, second = utterances
    queue = BoundedAudioQueue(600)
    for block in _blocks(first, 0) + _blocks(second, len(first)):
        await queue.put(block)
    queue.close()
    published: list[Detection] = []
    await pipeline.run(queue, published.append)
    return pipeline, published, reports


async def test_pipeline_publishes_the_first_detection_after_an_unmute(
    model: tuple[KeywordSpotter, KeywordSet], utterances: tuple[Samples, Samples]
) -> None:
    half = len(utterances[0]) / RATE
    # Not muted: the repeat falls inside the refractory window and is dropped.
    pipeline, published, reports = await _pipeline_run(model, utterances, MuteState())
    found = [d for r in reports for d in r.found]
    assert [d.keyword for d in found] == ["HEY COMPUTER", "HEY COMPUTER"]
    assert found[1].end - found[0].end < REFRACTORY
    assert published == found[:1]
    assert pipeline.stats.refractory_dropped == 1

    # Muted for the first: it is dropped, and the second one, right after, is published.
    mute = MuteState()
    mute.pause("tts")
    pipeline, published, reports = await _pipeline_run(model, utterances, mute)
    assert len(published) == 1 and published[0].start > half
    assert (pipeline.stats.muted_dropped, pipeline.stats.refractory_dropped) == (1, 0)
    assert [d for r in reports for d in r.published] == published


async def test_pipeline_observer_sees_every_block_with_its_timing(
    model: tuple[KeywordSpotter, KeywordSet], utterances: tuple[Samples, Samples]
) -> None:
    _, published, reports = await _pipeline_run(model, utterances, MuteState())
    blocks = [r.block for r in reports]
    assert blocks[-1] is None, "the flushed tail is reported last"
    first, second = utterances
    sent = _blocks(first, 0) + _blocks(second, len(first))
    assert [b.start_sample for b in blocks if b is not None] == [b.start_sample for b in sent]
    assert all(r.compute_seconds > 0 and r.cpu_seconds >= 0 for r in reports)
    finished = [r.finished_at for r in reports]
    assert finished == sorted(finished)
    assert [d for r in reports for d in r.published] == published


async def test_a_failing_observer_does_not_stop_the_pipeline(
    model: tuple[KeywordSpotter, KeywordSet], utterances: tuple[Samples, Samples]
) -> None:
    spotter, keywords = model

    def broken(report: BlockReport) -> None:
        raise RuntimeError("observer bug")

    stream = spotter.create_stream(keywords)
    pipeline = Pipeline(
        stream.frontend,
        stream.search,
        heartbeat=Heartbeat(),
        observer=broken,
    )
    queue = BoundedAudioQueue(600)
    for block in _blocks(utterances[0], 0):
        await queue.put(block)
    queue.close()
    published: list[Detection] = []
    with structlog.testing.capture_logs() as logs:
        await pipeline.run(queue, published.append)
    assert [d.keyword for d in published] == ["HEY COMPUTER"]
    assert any(e["event"] == "pipeline observer failed" for e in logs)


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.events = EventReader(reader)
        self.writer = writer

    async def send(self, event: Event) -> None:
        await write_event(self.writer, event)

    async def audio(self, samples: Samples, fmt: AudioFormat) -> None:
        pcm = pcm16(samples)
        step = BLOCK * fmt.frame_bytes
        for offset in range(0, len(pcm), step):
            await self.send(audio_chunk(fmt, pcm[offset : offset + step]))

    async def until_pong(self) -> list[Event]:
        """Every answer up to the pong of a ping sent now (answers come in order)."""
        await self.send(Event("ping", {"text": "sync"}))
        answers: list[Event] = []
        while True:
            async with asyncio.timeout(30):
                event = await self.events.read()
            assert event is not None
            if event.type == "pong":
                return answers
            answers.append(event)


async def _wyoming_stream(
    server: WyomingServer, utterances: tuple[Samples, Samples], mute: MuteState
) -> tuple[list[Event], list[Event]]:
    """One stream; unmutes between the halves. The answers to each half."""
    assert server.address is not None
    host, port = parse_uri(server.address)  # type: ignore[misc]
    client = _Client(*await asyncio.open_connection(host, port))
    fmt = AudioFormat(RATE, 2, 1)
    try:
        await client.send(audio_start(fmt))
        await client.audio(utterances[0], fmt)
        first = await client.until_pong()  # the first half is decoded
        mute.clear()
        await client.audio(utterances[1], fmt)
        await client.send(audio_stop())
        second = await client.until_pong()
    finally:
        client.writer.close()
        await client.writer.wait_closed()
    return first, second


async def test_wyoming_publishes_the_first_detection_after_an_unmute(
    model: tuple[KeywordSpotter, KeywordSet], utterances: tuple[Samples, Samples]
) -> None:
    spotter, keywords = model
    mute = MuteState()
    server = WyomingServer(
        spotter,
        lambda: keywords,
        version="1",
        refractory_seconds=REFRACTORY,
        mute=mute,
    )
    await server.start("tcp://127.0.0.1:0")
    try:
        # Not muted: the repeat falls inside the refractory window and is dropped.
        first, second = await _wyoming_stream(server, utterances, mute)
        assert [e.type for e in first] == ["detection"]
        assert second == []

        # Muted for the first: it is dropped, and the second one is published.
        mute.add(HERMES, "ttsSay")
        with structlog.testing.capture_logs() as logs:
            first, second = await _wyoming_stream(server, utterances, mute)
        assert first == []
        assert [e.type for e in second] == ["detection"]
        assert second[0].data["timestamp"] > 1000 * len(utterances[0]) / RATE
        assert [e["event"] for e in logs].count("Wyoming detection muted") == 1
    finally:
        await server.close()
