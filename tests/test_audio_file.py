"""The file source: real speech files in, 16 kHz mono blocks with exact stream positions out."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from engine_support import espeak_wav

from kwsd.audio import BoundedAudioQueue, open_source
from kwsd.audio.base import SAMPLE_RATE, AudioBlock, AudioOptions
from kwsd.audio.file import FileSource
from kwsd.config import AudioSettings
from kwsd.errors import AudioError


def espeak(path: Path, text: str) -> Path:
    return espeak_wav(path, text, voice="en-us")


@pytest.fixture(scope="module")
def speech_22k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """espeak-ng writes 22050 Hz mono 16-bit WAV."""
    return espeak(tmp_path_factory.mktemp("speech") / "lights.wav", "turn on the lights")


async def read_all(source: FileSource, max_seconds: float = 600.0) -> list[AudioBlock]:
    queue = BoundedAudioQueue(max_seconds)
    await source.run(queue)
    queue.close()
    blocks = []
    while (block := await queue.get()) is not None:
        blocks.append(block)
    return blocks


def concat(blocks: list[AudioBlock]) -> np.ndarray:
    return np.concatenate([b.samples for b in blocks])


def assert_tiled(blocks: list[AudioBlock]) -> None:
    assert blocks[0].start_sample == 0
    for prev, cur in itertools.pairwise(blocks):
        assert cur.start_sample == prev.start_sample + prev.num_samples
        assert cur.start > prev.start


def fast(path: Path, **kw: object) -> FileSource:
    return FileSource(path, AudioOptions(source="file", file=path, realtime=False, **kw))  # type: ignore[arg-type]


async def test_resamples_22050_to_16k_like_batch_soxr(speech_22k: Path) -> None:
    data, rate = sf.read(speech_22k, dtype="float32")
    assert rate == 22050
    expected = soxr.resample(data, rate, SAMPLE_RATE, quality="HQ")
    blocks = await read_all(fast(speech_22k))
    got = concat(blocks)
    assert len(got) == len(expected)  # duration preserved to the sample
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got.dtype == np.float32 and np.abs(got).max() > 0.1
    assert_tiled(blocks)
    assert blocks[-1].end == pytest.approx(len(data) / rate, abs=1 / SAMPLE_RATE)


async def test_16k_file_passes_through_unchanged(assets: Path) -> None:
    path = assets / "audio" / "light_up.wav"
    data, rate = sf.read(path, dtype="int16")
    assert rate == SAMPLE_RATE
    got = concat(await read_all(fast(path)))
    np.testing.assert_array_equal(got, data.astype(np.float32) / 32768.0)


async def test_corpus_flac(assets: Path) -> None:
    path = next(iter(sorted((assets / "corpus").rglob("*.flac"))))
    data, rate = sf.read(path, dtype="float32")
    got = concat(await read_all(fast(path)))
    expected = soxr.resample(data, rate, SAMPLE_RATE, quality="HQ") if rate != SAMPLE_RATE else data
    assert len(got) == len(expected)
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.fixture(scope="module")
def stereo_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A 44.1 kHz stereo file: left and right are two different spoken phrases."""
    d = tmp_path_factory.mktemp("stereo")
    left, rate = sf.read(espeak(d / "l.wav", "hey computer"), dtype="float32")
    right, _ = sf.read(espeak(d / "r.wav", "open the garage"), dtype="float32")
    n = max(len(left), len(right))
    left = np.pad(left, (0, n - len(left)))
    right = np.pad(right, (0, n - len(right)))
    left44 = soxr.resample(left, rate, 44100)
    right44 = soxr.resample(right, rate, 44100)
    path = d / "stereo.wav"
    sf.write(path, np.stack([left44, right44], axis=1), 44100, subtype="FLOAT")
    return path, left44.astype(np.float32), right44.astype(np.float32)


async def test_stereo_downmix(stereo_file: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, left, right = stereo_file
    got = concat(await read_all(fast(path)))
    expected = soxr.resample((left + right) / 2, 44100, SAMPLE_RATE, quality="HQ")
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("channel", [0, 1])
async def test_channel_select(
    stereo_file: tuple[Path, np.ndarray, np.ndarray], channel: int
) -> None:
    path, left, right = stereo_file
    wanted, other = (left, right) if channel == 0 else (right, left)
    got = concat(await read_all(fast(path, channel=channel)))
    np.testing.assert_allclose(
        got, soxr.resample(wanted, 44100, SAMPLE_RATE, quality="HQ"), atol=1e-5
    )
    assert np.abs(got - soxr.resample(other, 44100, SAMPLE_RATE, quality="HQ")).max() > 0.1


def test_channel_out_of_range(stereo_file: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path = stereo_file[0]
    with pytest.raises(AudioError, match=r"audio.channel = 2 .* 2 channel"):
        fast(path, channel=2)


async def test_loop_keeps_stream_time_increasing(assets: Path) -> None:
    path = assets / "audio" / "light_up.wav"
    data, _ = sf.read(path, dtype="float32")
    source = FileSource(
        path, AudioOptions(source="file", file=path, realtime=False, loop=True, block_ms=200)
    )
    queue = BoundedAudioQueue(60)
    task = asyncio.create_task(source.run(queue))
    blocks: list[AudioBlock] = []
    try:
        total = 0
        while total < 2.5 * len(data):
            block = await asyncio.wait_for(queue.get(), 5)
            assert block is not None
            blocks.append(block)
            total += block.num_samples
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert source.loops_completed >= 2
    assert_tiled(blocks)
    got = concat(blocks)
    # The second pass is the same audio again, later in stream time.
    np.testing.assert_array_equal(got[len(data) : 2 * len(data)], data)


async def test_realtime_is_paced_not_as_fast_as_possible(tmp_path: Path) -> None:
    wav = espeak(tmp_path / "one.wav", "good evening everyone, turn on the lights")
    data, rate = sf.read(wav, dtype="float32")
    one_second = tmp_path / "one_second.wav"
    assert len(data) > rate
    sf.write(one_second, data[:rate], rate)
    source = FileSource(one_second, AudioOptions(source="file", file=one_second, realtime=True))
    assert source.live
    started = time.monotonic()
    blocks = await read_all(source)
    elapsed = time.monotonic() - started
    assert elapsed >= 0.8  # as fast as possible takes a few ms
    assert concat(blocks).size == pytest.approx(SAMPLE_RATE, abs=2)
    assert all(b.captured_at is not None for b in blocks)


async def test_fast_mode_waits_for_the_decoder_and_loses_nothing(assets: Path) -> None:
    path = assets / "audio" / "lovely_child.wav"
    data, _ = sf.read(path, dtype="float32")
    queue = BoundedAudioQueue(0.5)  # far smaller than the file
    source = fast(path)
    assert not source.live

    async def produce() -> None:
        await source.run(queue)
        queue.close()

    task = asyncio.create_task(produce())
    got: list[AudioBlock] = []
    while (block := await asyncio.wait_for(queue.get(), 5)) is not None:
        assert queue.queued_seconds <= 0.5
        got.append(block)
        await asyncio.sleep(0)  # a decoder that is slower than reading the file
    await task
    assert queue.dropped_seconds == 0
    np.testing.assert_array_equal(concat(got), data)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("missing.wav", None, "does not exist"),
        ("notes.wav", b"this is text, not audio\n" * 10, "Supported formats: WAV, FLAC"),
        ("empty.wav", b"", "Supported formats"),
    ],
)
def test_bad_file_is_an_audio_error(
    tmp_path: Path, name: str, content: bytes | None, match: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=match) as err:
        open_source(AudioOptions(source="file", file=path))
    assert str(path) in str(err.value)


def test_silent_file_has_no_audio(tmp_path: Path) -> None:
    path = tmp_path / "zero_frames.wav"
    sf.write(path, np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="contains no audio"):
        open_source(AudioOptions(source="file", file=path))


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not a regular file"):
        open_source(AudioOptions(source="file", file=tmp_path))


def test_open_source_carries_the_file_knobs(speech_22k: Path) -> None:
    settings = AudioSettings(source="file", file=speech_22k, realtime=False, loop=True, block_ms=50)
    source = open_source(settings)
    assert isinstance(source, FileSource)
    assert source.options.loop and source.options.block_ms == 50 and not source.live


def test_open_source_from_kwsd_audio_settings(speech_22k: Path) -> None:
    """The daemon's real settings model maps onto the sources' options."""
    settings = AudioSettings(source="file", file=speech_22k, realtime=False, block_ms=20)
    source = open_source(settings)
    assert isinstance(source, FileSource)
    assert source.options.block_ms == 20 and source.options.file == speech_22k
    mic = AudioOptions.from_settings(AudioSettings(device="2", channel=1, sample_rate=48000))
    assert (mic.source, mic.device, mic.channel, mic.sample_rate) == ("mic", 2, 1, 48000)
