"""The bounded drop-oldest queue between capture and decoder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from structlog.testing import capture_logs

from kwsd.audio import AudioBlock, BoundedAudioQueue, QueueClosedError
from kwsd.audio.base import SAMPLE_RATE, StreamClock


@pytest.fixture(scope="module")
def recording(assets: Path) -> np.ndarray:
    data, rate = sf.read(assets / "audio" / "lovely_child.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    return np.asarray(data, dtype=np.float32)


def blocks_of(samples: np.ndarray, block: int) -> list[AudioBlock]:
    clock = StreamClock()
    return [clock.stamp(samples[i : i + block], None) for i in range(0, len(samples), block)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_live_overflow_drops_oldest_and_bounds_memory(recording: np.ndarray) -> None:
    clock = FakeClock()
    queue = BoundedAudioQueue(1.0, warn_interval=10.0, clock=clock)
    blocks = blocks_of(recording, 1600)  # 100 ms blocks, 16.7 s in total
    with capture_logs() as logs:
        for block in blocks:
            queue.put_nowait(block)
            assert queue.queued_seconds <= 1.0
            clock.now += 0.1
    assert len(queue) == 10
    total = sum(b.num_samples for b in blocks)
    assert queue.dropped_samples == total - queue.queued_seconds * SAMPLE_RATE
    assert queue.dropped_seconds == pytest.approx(len(recording) / SAMPLE_RATE - 1.0, abs=0.1)
    assert queue.dropped_blocks == len(blocks) - 10
    # The newest audio survives, and the consumer learns that audio was lost before it.
    first = queue.get_nowait()
    assert first is not None
    assert first.discontinuity and first.start_sample == blocks[-10].start_sample
    second = queue.get_nowait()
    assert second is not None and not second.discontinuity
    # Rate-limited: ~15.7 s of overflow at one warning per 10 s → 2 warnings, not 157.
    warnings = [e for e in logs if e["event"] == "audio_dropped"]
    assert len(warnings) == 2
    assert warnings[0]["log_level"] == "warning"
    assert warnings[1]["dropped_seconds_total"] == pytest.approx(
        warnings[0]["dropped_seconds_total"] + warnings[1]["dropped_seconds"], abs=1e-3
    )


async def test_waiting_put_applies_backpressure(recording: np.ndarray) -> None:
    queue = BoundedAudioQueue(0.25)
    blocks = blocks_of(recording[: SAMPLE_RATE * 2], 1600)

    async def produce() -> None:
        for block in blocks:
            await queue.put(block)
            assert queue.queued_seconds <= 0.25
        queue.close()

    task = asyncio.create_task(produce())
    received = []
    while (block := await queue.get()) is not None:
        received.append(block)
    await task
    assert [b.start_sample for b in received] == [b.start_sample for b in blocks]
    assert queue.dropped_seconds == 0
    assert not any(b.discontinuity for b in received)


async def test_oversized_block_still_fits_an_empty_queue(recording: np.ndarray) -> None:
    queue = BoundedAudioQueue(0.1)
    big = StreamClock().stamp(recording[:SAMPLE_RATE], None)  # 1 s block, 0.1 s bound
    await asyncio.wait_for(queue.put(big), 1)
    assert await queue.get() is big
    queue.put_nowait(big)
    queue.put_nowait(big)  # replaces the first rather than growing
    assert len(queue) == 1 and queue.dropped_seconds == pytest.approx(1.0)


async def test_close_drains_then_returns_none(recording: np.ndarray) -> None:
    queue = BoundedAudioQueue(5)
    for block in blocks_of(recording[:4800], 1600):
        queue.put_nowait(block)
    queue.close()
    with pytest.raises(QueueClosedError):
        queue.put_nowait(blocks_of(recording[:1600], 1600)[0])
    assert [await queue.get() for _ in range(4)][-1] is None
    assert queue.closed


async def test_consumer_waiting_on_empty_queue_wakes_on_put(recording: np.ndarray) -> None:
    queue = BoundedAudioQueue(5)
    getter = asyncio.create_task(queue.get())
    await asyncio.sleep(0.01)
    assert not getter.done()
    block = blocks_of(recording[:1600], 1600)[0]
    queue.put_nowait(block)
    assert await asyncio.wait_for(getter, 1) is block


def test_invalid_bound() -> None:
    with pytest.raises(ValueError, match="max_seconds"):
        BoundedAudioQueue(0)
