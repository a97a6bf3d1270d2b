"""The pipeline stage on its own, with the real stand-in model: gaps and keyword swaps."""

from __future__ import annotations

import asyncio
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from async_support import wait_until

from kwsd.audio.base import AudioBlock
from kwsd.audio.queue import BoundedAudioQueue
from kwsd.detection import Detection
from kwsd.gate import DetectionGate
from kwsd.heartbeat import Heartbeat
from kwsd.keywords import KeywordSet, KeywordSpec, compile_keywords
from kwsd.pipeline import Pipeline, _EngineThread
from kwsd.spotter import KeywordSpotter

BLOCK = 1600  # 100 ms


@pytest.fixture(scope="module")
def spotter(assets: Path) -> KeywordSpotter:
    return KeywordSpotter.from_assets(assets)


@pytest.fixture(scope="module")
def samples(speech: Path) -> np.ndarray:
    data, rate = sf.read(str(speech), dtype="float32")
    return np.asarray(soxr.resample(data, rate, 16000), dtype=np.float32)


def keywords(spotter: KeywordSpotter, *phrases: str, version: int) -> KeywordSet:
    """Compiled as the daemon's keyword registry does: with a version number."""
    specs = [KeywordSpec(phrase=p) for p in phrases]
    return compile_keywords(specs, spotter.tokenizer, spotter.backend.defaults, version=version)


def blocks(samples: np.ndarray, start_sample: int, *, gap: bool) -> list[AudioBlock]:
    out = []
    for i in range(0, len(samples), BLOCK):
        out.append(
            AudioBlock(samples[i : i + BLOCK], start_sample + i, discontinuity=gap and i == 0)
        )
    return out


async def run(pipeline: Pipeline, items: list[AudioBlock]) -> list[Detection]:
    queue = BoundedAudioQueue(600)
    for block in items:
        await queue.put(block)
    queue.close()
    found: list[Detection] = []
    await pipeline.run(queue, found.append)
    return found


def make_pipeline(spotter: KeywordSpotter, ks: KeywordSet) -> Pipeline:
    stream = spotter.create_stream(ks)
    gate = DetectionGate(refractory_seconds=0.0)
    return Pipeline(stream.frontend, stream.search, heartbeat=Heartbeat(), gate=gate)


async def test_times_stay_absolute_across_an_audio_gap(
    spotter: KeywordSpotter, samples: np.ndarray
) -> None:
    pipeline = make_pipeline(spotter, keywords(spotter, "HEY COMPUTER", version=1))
    # The first pass, then 60 s of audio lost (e.g. dropped by the queue), then another pass.
    later = len(samples) + 60 * 16000
    found = await run(pipeline, blocks(samples, 0, gap=False) + blocks(samples, later, gap=True))
    assert [d.keyword for d in found] == ["HEY COMPUTER", "HEY COMPUTER"]
    assert found[1].start - found[0].start == pytest.approx(later / 16000, abs=0.09)
    # every chunk of captured audio beats; the shutdown padding's chunks do not
    assert 0 < pipeline.heartbeat.beats < pipeline.stats.chunks


async def test_keyword_swap_takes_effect_between_blocks(
    spotter: KeywordSpotter, samples: np.ndarray
) -> None:
    pipeline = make_pipeline(spotter, keywords(spotter, "HEY COMPUTER", version=1))
    queue = BoundedAudioQueue(600)
    found: list[Detection] = []
    task = asyncio.create_task(pipeline.run(queue, found.append))
    first = blocks(samples, 0, gap=False)
    for block in first:
        await queue.put(block)
    await wait_until(lambda: pipeline.stats.blocks == len(first), what="the first pass")
    pipeline.set_keywords(keywords(spotter, "TURN ON THE LIGHTS", version=2))
    for block in blocks(samples, len(samples), gap=False):
        await queue.put(block)
    queue.close()
    await task
    assert [d.keyword for d in found] == ["HEY COMPUTER", "TURN ON THE LIGHTS"]
    assert found[1].start > len(samples) / 16000  # found in the second pass, not earlier
    assert pipeline.stats.keyword_versions == [2]


async def test_shutdown_padding_is_not_a_heartbeat(spotter: KeywordSpotter) -> None:
    """No audio ever arrived (e.g. no microphone): stopping must not report READY."""
    pipeline = make_pipeline(spotter, keywords(spotter, "HEY COMPUTER", version=1))
    await run(pipeline, [])
    assert pipeline.stats.chunks > 0  # the flush did run the encoder on its padding
    assert not pipeline.heartbeat.started


async def test_engine_thread_runs_jobs_in_order_and_returns_errors() -> None:
    """The pipeline's hand-off to its worker thread (cheaper than run_in_executor)."""
    engine = _EngineThread("test-engine")
    threads: list[str] = []

    def job(value: int) -> int:
        threads.append(threading.current_thread().name)
        return value * 2

    assert [await engine.run(partial(job, i)) for i in range(5)] == [0, 2, 4, 6, 8]
    assert set(threads) == {"test-engine"}

    def broken() -> None:
        raise ValueError("engine failed")

    with pytest.raises(ValueError, match="engine failed"):
        await engine.run(broken)

    # A wait cancelled mid-job leaves the job to finish alone; later jobs still run.
    release = threading.Event()
    slow = asyncio.ensure_future(engine.run(partial(release.wait, 5)))
    await asyncio.sleep(0.05)
    slow.cancel()
    release.set()
    assert await engine.run(partial(job, 21)) == 42
    engine.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        await engine.run(partial(job, 1))
