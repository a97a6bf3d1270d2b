"""The stdin source: raw s16le PCM from a real pipe (sox / a writer thread / a child process)."""

from __future__ import annotations

import asyncio
import itertools
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soxr
from engine_support import espeak_wav
from structlog.testing import capture_logs

from kwsd.audio import BoundedAudioQueue
from kwsd.audio.base import SAMPLE_RATE, AudioBlock, AudioOptions
from kwsd.audio.stdin import StdinSource
from kwsd.errors import AudioError


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return espeak_wav(
        tmp_path_factory.mktemp("speech") / "s.wav", "turn off the kitchen lights", voice="en-us"
    )


def sox_raw(wav: Path, rate: int, channels: int) -> bytes:
    """What `sox in.wav -t raw -` (or arecord) writes: s16le at the given rate/channels
    (no dither, so two runs give identical bytes)."""
    return subprocess.run(
        [
            "sox",
            "-D",
            str(wav),
            "-r",
            str(rate),
            "-c",
            str(channels),
            "-b",
            "16",
            "-e",
            "signed",
            "-L",
            "-t",
            "raw",
            "-",
        ],
        check=True,
        capture_output=True,
    ).stdout


async def drain(source: StdinSource, max_seconds: float = 60.0) -> list[AudioBlock]:
    queue = BoundedAudioQueue(max_seconds)

    async def produce() -> None:
        await source.run(queue)
        queue.close()

    task = asyncio.create_task(produce())
    blocks = []
    while (block := await asyncio.wait_for(queue.get(), 10)) is not None:
        blocks.append(block)
    await task
    return blocks


def pipe_writer(data: bytes, chunk: int = 777) -> tuple[int, threading.Thread]:
    """A real OS pipe fed in odd-sized chunks, so reads see partial frames."""
    read_fd, write_fd = os.pipe()

    def write() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as w:
            for i in range(0, len(data), chunk):
                w.write(data[i : i + chunk])

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return read_fd, thread


async def test_sox_pipe_16k_mono(speech_wav: Path) -> None:
    raw = sox_raw(speech_wav, 16000, 1)
    expected = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    # A real OS pipe from a child process; spawning does not block, reading is threaded.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [
            "sox",
            "-D",
            str(speech_wav),
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed",
            "-L",
            "-t",
            "raw",
            "-",
        ],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    source = StdinSource(AudioOptions(source="stdin"), stream=proc.stdout)
    blocks = await drain(source)
    assert proc.wait(10) == 0
    got = np.concatenate([b.samples for b in blocks])
    np.testing.assert_array_equal(got, expected)
    assert blocks[0].start_sample == 0
    for prev, cur in itertools.pairwise(blocks):
        assert cur.start_sample == prev.start_sample + prev.num_samples
    assert all(b.num_samples == 1600 for b in blocks[:-1])  # block_ms = 100
    assert not source.live


async def test_partial_frames_and_trailing_byte(speech_wav: Path) -> None:
    raw = sox_raw(speech_wav, 16000, 1)
    expected = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    read_fd, writer = pipe_writer(raw + b"\x01")  # one stray byte at the end
    with os.fdopen(read_fd, "rb") as stream, capture_logs() as logs:
        source = StdinSource(AudioOptions(source="stdin", block_ms=30), stream=stream)
        blocks = await drain(source)
    writer.join()
    np.testing.assert_array_equal(np.concatenate([b.samples for b in blocks]), expected)
    assert source.trailing_bytes == 1
    assert any(e["event"] == "audio_stdin_partial_frame" for e in logs)


async def test_48k_stereo_pipe_with_channel_select(speech_wav: Path) -> None:
    raw = sox_raw(speech_wav, 48000, 1)
    mono = np.frombuffer(raw, "<i2")
    stereo = np.stack([mono, np.zeros_like(mono)], axis=1)  # speech on the left only
    read_fd, writer = pipe_writer(stereo.astype("<i2").tobytes(), chunk=4096)
    options = AudioOptions(source="stdin", sample_rate=48000, stdin_channels=2, channel=0)
    with os.fdopen(read_fd, "rb") as stream:
        blocks = await drain(StdinSource(options, stream=stream))
    writer.join()
    got = np.concatenate([b.samples for b in blocks])
    expected = soxr.resample(mono.astype(np.float32) / 32768.0, 48000, SAMPLE_RATE, quality="HQ")
    assert len(got) == len(expected)
    np.testing.assert_allclose(got, expected, atol=1e-6)


async def test_slow_consumer_gets_everything(speech_wav: Path) -> None:
    raw = sox_raw(speech_wav, 16000, 1)
    read_fd, writer = pipe_writer(raw, chunk=65536)
    queue = BoundedAudioQueue(0.2)
    with os.fdopen(read_fd, "rb") as stream:
        source = StdinSource(AudioOptions(source="stdin"), stream=stream)

        async def produce() -> None:
            await source.run(queue)
            queue.close()

        task = asyncio.create_task(produce())
        total = 0
        while (block := await asyncio.wait_for(queue.get(), 10)) is not None:
            assert queue.queued_seconds <= 0.2
            total += block.num_samples
            await asyncio.sleep(0.001)
        await task
    writer.join()
    assert total == len(raw) // 2
    assert queue.dropped_seconds == 0


def test_real_stdin_of_a_child_process(speech_wav: Path) -> None:
    """sys.stdin.buffer itself, fed by a shell pipe, in a separate interpreter."""
    script = (
        "import asyncio\n"
        "from kwsd.audio import BoundedAudioQueue, open_source\n"
        "from kwsd.audio.base import AudioOptions\n"
        "async def main():\n"
        "    q = BoundedAudioQueue(60)\n"
        "    await open_source(AudioOptions(source='stdin')).run(q)\n"
        "    q.close(); n = 0\n"
        "    while (b := await q.get()) is not None: n += b.num_samples\n"
        "    print(n)\n"
        "asyncio.run(main())\n"
    )
    raw = sox_raw(speech_wav, 16000, 1)
    result = subprocess.run(
        [sys.executable, "-c", script], input=raw, capture_output=True, check=True, timeout=60
    )
    assert int(result.stdout.split()[-1]) == len(raw) // 2


def test_terminal_stdin_is_refused() -> None:
    primary, secondary = pty.openpty()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "from kwsd.audio import open_source\n"
                "from kwsd.audio.base import AudioOptions\n"
                "from kwsd.errors import AudioError\n"
                "try:\n"
                "    open_source(AudioOptions(source='stdin'))\n"
                "except AudioError as e:\n"
                "    print(e)\n",
            ],
            check=False,
            stdin=secondary,
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(primary)
        os.close(secondary)
    assert "stdin is a terminal" in result.stdout
    assert "arecord" in result.stdout


def test_bad_stdin_options() -> None:
    with pytest.raises(AudioError, match=r"audio.channel = 1 .* 1 channel"):
        StdinSource(AudioOptions(source="stdin", channel=1), stream=open(os.devnull, "rb"))  # noqa: SIM115
