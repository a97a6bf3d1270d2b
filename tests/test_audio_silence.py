"""The digital-silence watchdog (macOS without mic permission, muted ALSA capture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from engine_support import espeak_wav
from structlog.testing import capture_logs

from kwsd.audio import BoundedAudioQueue
from kwsd.audio.base import SAMPLE_RATE, AudioOptions
from kwsd.audio.file import FileSource
from kwsd.audio.silence import SilenceWatchdog, mic_silence_hint


@pytest.fixture(scope="module")
def voiced(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    wav = espeak_wav(tmp_path_factory.mktemp("speech") / "s.wav", "hey computer", voice="en-us")
    data, rate = sf.read(wav, dtype="float32")
    # espeak pads with exact zeros; keep only the voiced part so the test controls silence.
    return np.trim_zeros(soxr.resample(data, rate, SAMPLE_RATE).astype(np.float32))


def feed_in_blocks(dog: SilenceWatchdog, samples: np.ndarray, block: int = 1600) -> None:
    for i in range(0, len(samples), block):
        dog.feed(samples[i : i + block])


def zeros(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def test_warns_once_per_episode_and_logs_recovery(voiced: np.ndarray) -> None:
    dog = SilenceWatchdog(2.0, source="the microphone", hint=mic_silence_hint("darwin"))
    with capture_logs() as logs:
        feed_in_blocks(dog, voiced)
        feed_in_blocks(dog, zeros(1.9))
        assert not logs  # not yet: under the threshold
        feed_in_blocks(dog, zeros(5.0))  # one long episode: one warning
        assert dog.silent
        feed_in_blocks(dog, voiced)
        feed_in_blocks(dog, zeros(3.0))  # a second episode
        feed_in_blocks(dog, voiced)
    events = [e["event"] for e in logs]
    assert events == [
        "audio_digital_silence",
        "audio_signal_back",
        "audio_digital_silence",
        "audio_signal_back",
    ]
    warning = logs[0]
    assert warning["log_level"] == "warning"
    assert warning["silent_seconds"] == pytest.approx(2.0, abs=0.1)
    assert "Privacy & Security → Microphone" in warning["message"]
    assert logs[1]["silent_seconds"] == pytest.approx(6.9, abs=0.1)
    assert dog.episodes == 2


def test_quiet_but_real_audio_is_not_silence(voiced: np.ndarray) -> None:
    dog = SilenceWatchdog(0.5, source="the microphone", hint=mic_silence_hint("linux"))
    quiet = np.tile(voiced * 1e-4, 10)  # a silent room still has a few LSB of noise
    with capture_logs() as logs:
        feed_in_blocks(dog, quiet)
    assert logs == []


def test_platform_hints() -> None:
    assert "System Settings" in mic_silence_hint("darwin")
    linux = mic_silence_hint("linux")
    assert "alsamixer" in linux and "kwsd devices" in linux
    assert "kwsd devices" in mic_silence_hint("win32")


def test_zero_threshold_disables(voiced: np.ndarray) -> None:
    dog = SilenceWatchdog(0.0, source="the microphone", hint="x")
    with capture_logs() as logs:
        feed_in_blocks(dog, zeros(30.0))
    assert logs == [] and not dog.enabled


async def test_file_source_reports_a_silent_stretch(voiced: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "gap.wav"
    sf.write(path, np.concatenate([voiced, zeros(1.0), voiced]), SAMPLE_RATE, subtype="PCM_16")
    source = FileSource(
        path,
        AudioOptions(source="file", file=path, realtime=False, silence_warning_seconds=0.5),
    )
    with capture_logs() as logs:
        await source.run(BoundedAudioQueue(60))
    warnings = [e for e in logs if e["event"] == "audio_digital_silence"]
    assert len(warnings) == 1
    assert str(path) in warnings[0]["message"]
    assert any(e["event"] == "audio_signal_back" for e in logs)
