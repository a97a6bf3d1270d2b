"""The voice-activity gate (kwsd/vad.py) on the real stand-in model and generated speech.

Silence is a quiet microphone's floor: white noise at -60 dBFS (a digital zero is a
muted microphone, which no detector finds hard). Speech is espeak-ng's.
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from daemon_support import json_lines, make_settings
from engine_support import espeak

from kwsd.audio.base import AudioBlock
from kwsd.audio.queue import BoundedAudioQueue
from kwsd.backends.base import Backend, DelegatingBackend, EncoderState, FloatArray
from kwsd.cli import main
from kwsd.config import load_settings
from kwsd.daemon import Daemon
from kwsd.detection import Detection
from kwsd.errors import ConfigError
from kwsd.gate import DetectionGate
from kwsd.heartbeat import Heartbeat
from kwsd.pipeline import Pipeline
from kwsd.spotter import KeywordSpotter
from kwsd.vad import Restart, SpeechGate, VadOptions

RATE = 16000
FRAME_SECONDS = 0.04  # one encoder frame
KEYWORDS = ["hey computer", "turn on the lights", "good night", "lights off", "open the garage"]


class CountingBackend(DelegatingBackend):
    """The real backend, counting encoder calls."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.encoder_calls = 0

    def run_chunk(self, feats: FloatArray, state: EncoderState) -> tuple[FloatArray, EncoderState]:
        self.encoder_calls += 1
        return self.inner.run_chunk(feats, state)


@pytest.fixture(scope="module")
def spotter(assets: Path) -> KeywordSpotter:
    return KeywordSpotter.from_assets(assets, keywords=KEYWORDS)


def quiet_room(seconds: float, seed: int = 0) -> FloatArray:
    noise = np.random.default_rng(seed).standard_normal(round(seconds * RATE)) * 1e-3
    return noise.astype(np.float32)


def spoken(text: str, path: Path, voice: str = "en-us+m3") -> FloatArray:
    """espeak-ng speech with its leading silence cut: the first sound is the first word."""
    audio = espeak(text, path, voice)
    return audio[int(np.argmax(np.abs(audio) > 1e-3)) :]


def with_floor(audio: FloatArray, seed: int = 1) -> FloatArray:
    """The room's noise floor under everything, speech included (a real microphone)."""
    return audio + quiet_room(len(audio) / RATE, seed)


def run(
    spotter: KeywordSpotter, audio: FloatArray, vad: VadOptions | None, block: int = 1600
) -> tuple[list[Detection], SpeechGate | None]:
    stream = spotter.create_stream(vad=vad)
    found: list[Detection] = []
    for start in range(0, len(audio), block):
        found += stream.accept(audio[start : start + block])
    found += stream.finish()
    return found, stream.gate


def test_the_encoder_rests_in_silence_and_runs_for_speech(
    spotter: KeywordSpotter, tmp_path: Path
) -> None:
    counting = CountingBackend(spotter.backend)
    model = spotter.with_backend(counting)
    silence = quiet_room(20.0)

    found, _ = run(model, silence, VadOptions())
    assert found == []
    assert counting.encoder_calls == 0

    run(model, silence, None)
    ungated_calls = counting.encoder_calls
    assert ungated_calls >= 20 / 0.32  # every 320 ms of audio, ungated

    counting.encoder_calls = 0
    speech = spoken("hey computer, turn on the lights", tmp_path / "s.wav")
    audio = with_floor(np.concatenate([silence, speech, quiet_room(20.0, seed=2)]))
    found, gate = run(model, audio, VadOptions())
    assert [d.keyword for d in found] == ["HEY COMPUTER", "TURN ON THE LIGHTS"]
    assert isinstance(gate, SpeechGate)
    assert gate.stats.segments == 1
    # speech + 1 s pre-roll + 0.5 s hangover + the encoder's padding at the close
    busy = len(speech) / RATE + 1.0 + 0.5 + 1.3
    assert 0 < counting.encoder_calls <= busy / 0.32 + 2
    assert counting.encoder_calls < ungated_calls / 5  # 40 s of audio, ~2 s of speech


def test_detections_keep_absolute_times_across_gated_gaps(
    spotter: KeywordSpotter, tmp_path: Path
) -> None:
    texts = ["good evening, hey computer", "good night", "switch the lights off", "hey computer"]
    voices = ["en-us+m3", "en+f3", "en-gb+m1", "en-us+f2"]
    parts: list[FloatArray] = []
    for index, (text, voice) in enumerate(zip(texts, voices, strict=True)):
        parts += [quiet_room(6.0 + 3 * index, seed=index), spoken(text, tmp_path / "u.wav", voice)]
    parts.append(quiet_room(4.0, seed=9))
    audio = with_floor(np.concatenate(parts))

    ungated, _ = run(spotter, audio, None)
    gated, gate = run(spotter, audio, VadOptions())
    expected = ["HEY COMPUTER", "GOOD NIGHT", "LIGHTS OFF", "HEY COMPUTER"]
    assert [d.keyword for d in ungated] == expected
    assert [d.keyword for d in gated] == [d.keyword for d in ungated]
    for gated_det, ungated_det in zip(gated, ungated, strict=True):
        assert gated_det.start == pytest.approx(ungated_det.start, abs=FRAME_SECONDS + 1e-6)
        assert gated_det.end == pytest.approx(ungated_det.end, abs=FRAME_SECONDS + 1e-6)
    assert isinstance(gate, SpeechGate)
    assert gate.stats.segments >= len(texts)  # the encoder restarted for each utterance
    assert gate.stats.encoded_seconds < gate.stats.heard_seconds / 2

    # The whole recording in one call is judged frame by frame: same detections.
    one_call, _ = run(spotter, audio, VadOptions(), block=len(audio))
    assert [(d.keyword, d.start) for d in one_call] == [(d.keyword, d.start) for d in gated]


def test_the_pre_roll_catches_a_keyword_that_starts_at_the_onset(
    spotter: KeywordSpotter, tmp_path: Path
) -> None:
    speech = spoken("lights off", tmp_path / "k.wav")
    audio = with_floor(np.concatenate([quiet_room(5.0), speech, quiet_room(3.0, seed=3)]))
    ungated, _ = run(spotter, audio, None)
    gated, gate = run(spotter, audio, VadOptions(pre_roll_seconds=1.0))

    assert isinstance(gate, SpeechGate)
    # The detector heard the speech only after it began (the keyword's first sounds came
    # before the gate opened); the encoder restarted a pre-roll earlier and heard them.
    assert gate.stats.last_onset_seconds is not None
    assert gate.stats.last_restart_seconds is not None
    assert gate.stats.last_onset_seconds > 5.0
    assert gate.stats.last_restart_seconds < 5.0 - 0.5
    assert [d.keyword for d in gated] == [d.keyword for d in ungated] == ["LIGHTS OFF"]
    assert gated[0].start == pytest.approx(ungated[0].start, abs=FRAME_SECONDS + 1e-6)
    assert gated[0].score == pytest.approx(ungated[0].score, abs=0.05)

    # Without a pre-roll the encoder starts at the onset, after the keyword began.
    _, bare = run(spotter, audio, VadOptions(pre_roll_seconds=0.0))
    assert isinstance(bare, SpeechGate)
    assert bare.stats.last_restart_seconds is not None
    assert bare.stats.last_restart_seconds > 5.0


def test_a_pre_roll_never_replays_audio_already_searched(
    spotter: KeywordSpotter, tmp_path: Path
) -> None:
    # Two short commands 0.7 s apart: the gate closes after the first (0.5 s hangover) and
    # reopens for the second, whose 3 s pre-roll would reach back over the first.
    first = spoken("lights off", tmp_path / "a.wav")
    second = spoken("good night", tmp_path / "b.wav", "en+f3")
    audio = with_floor(
        np.concatenate([quiet_room(4.0), first, quiet_room(0.7, 4), second, quiet_room(3.0, 5)])
    )
    found, gate = run(spotter, audio, VadOptions(pre_roll_seconds=3.0))
    assert isinstance(gate, SpeechGate)
    assert [d.keyword for d in found] == ["LIGHTS OFF", "GOOD NIGHT"]
    assert gate.stats.segments == 2


def test_reset_restarts_the_clock(spotter: KeywordSpotter, tmp_path: Path) -> None:
    audio = with_floor(np.concatenate([quiet_room(3.0), spoken("good night", tmp_path / "g.wav")]))
    stream = spotter.create_stream(vad=VadOptions())
    first = [*stream.accept(audio), *stream.finish()]
    stream.reset()
    again = [*stream.accept(audio), *stream.finish()]
    assert [(d.keyword, d.start) for d in again] == [(d.keyword, d.start) for d in first]
    assert first and first[0].start == pytest.approx(3.1, abs=0.3)


async def test_the_daemon_pipeline_gates_and_keeps_beating_in_silence(
    spotter: KeywordSpotter, tmp_path: Path
) -> None:
    counting = CountingBackend(spotter.backend)
    stream = spotter.with_backend(counting).create_stream(vad=VadOptions())
    assert isinstance(stream.gate, SpeechGate) and stream.entry is stream.gate
    pipeline = Pipeline(
        stream.entry,
        stream.search,
        heartbeat=Heartbeat(),
        gate=DetectionGate(refractory_seconds=0.0),
    )
    speech = spoken("hey computer", tmp_path / "h.wav")
    audio = with_floor(np.concatenate([quiet_room(10.0), speech, quiet_room(10.0, seed=6)]))
    queue = BoundedAudioQueue(600)
    for start in range(0, len(audio), 1600):
        await queue.put(AudioBlock(audio[start : start + 1600], start))
    queue.close()
    found: list[Detection] = []
    await asyncio.wait_for(pipeline.run(queue, found.append), 60)

    assert [d.keyword for d in found] == ["HEY COMPUTER"]
    assert found[0].start == pytest.approx(10.2, abs=0.25)  # stream time, gaps included
    assert counting.encoder_calls == pipeline.stats.chunks < len(audio) / RATE / 0.32 / 3
    # The heartbeat means "audio flows": silent blocks beat though the encoder rests.
    assert pipeline.heartbeat.beats >= pipeline.stats.blocks - pipeline.stats.chunks


def test_restart_items_move_the_search_clock(spotter: KeywordSpotter) -> None:
    stream = spotter.create_stream()
    stream.search.frame = 100
    Restart(advance=-12).apply(stream.search)
    assert stream.search.frame == 88


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("audio.vad", '"silero"', ["audio.vad", "webrtc"]),
        ("audio.vad_aggressiveness", "5", ["audio.vad_aggressiveness", "3"]),
        ("audio.vad_pre_roll_seconds", "-1", ["audio.vad_pre_roll_seconds"]),
        ("audio.vad_hangover_seconds", "0", ["audio.vad_hangover_seconds"]),
    ],
)
def test_a_bad_vad_setting_is_a_clear_config_error(
    tmp_path: Path, key: str, value: str, expected: list[str]
) -> None:
    section, name = key.split(".")
    config = tmp_path / "kwsd.toml"
    config.write_text(f"[{section}]\n{name} = {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    message = str(caught.value)
    for part in expected:
        assert part in message
    assert str(config) in message or "kwsd.toml" in message


def test_settings_make_the_gate(tmp_path: Path) -> None:
    config = tmp_path / "kwsd.toml"
    config.write_text(
        '[audio]\nvad = "webrtc"\nvad_aggressiveness = 3\nvad_pre_roll_seconds = 0.5\n'
    )
    options = VadOptions.from_settings(load_settings(config).audio)
    assert options == VadOptions("webrtc", aggressiveness=3, pre_roll_seconds=0.5)
    assert VadOptions.from_settings(load_settings(None).audio) is None  # off by default


@pytest.mark.parametrize(
    "kwargs",
    [
        {"aggressiveness": 4},
        {"aggressiveness": True},
        {"pre_roll_seconds": 6.0},
        {"hangover_seconds": 0.0},
        {"detector": "silero"},
    ],
)
def test_bad_options_in_code_say_what_is_allowed(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"must be|kwsd has"):
        VadOptions(**kwargs)  # type: ignore[arg-type]


def test_kwsd_eval_measures_the_gate(
    assets: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KWSD_ASSETS", str(assets))
    config = tmp_path / "config.toml"
    config.write_text("")
    lines = ["relpath\ttranscript"]
    said = [
        ("hey computer, turn on the lights", "en-us+m3"),
        ("good night everyone", "en+f3"),
        ("the weather is nice today", "en-gb+m1"),
    ]
    for index, (text, voice) in enumerate(said):
        speech = spoken(text, tmp_path / "u.wav", voice)
        audio = with_floor(np.concatenate([quiet_room(4.0 + index), speech, quiet_room(2.0)]))
        sf.write(tmp_path / f"{index}.flac", audio, RATE)
        lines.append(f"{index}.flac\t{text.replace(',', '').upper()}")
    manifest = tmp_path / "m.tsv"
    manifest.write_text("\n".join(lines) + "\n")
    reports = {}
    for vad in ("off", "webrtc"):
        argv = ["eval", "--manifest", str(manifest), "-k", "hey computer", "-k", "good night"]
        argv += ["--config", str(config), "--set", f"audio.vad={vad}", "--json", "-"]
        assert main([*argv, "--log-level", "error"]) == 0
        reports[vad] = json.loads(capsys.readouterr().out)
    assert reports["webrtc"]["options"]["vad"] == "webrtc"
    assert reports["off"]["options"]["vad"] == "off"
    for report in reports.values():
        assert (report["total"]["positives"], report["total"]["hits"]) == (2, 2)
        assert report["total"]["false_alarms"] == 0

    argv = ["eval", "--manifest", str(manifest), "-k", "good night", "--sweep"]
    argv += ["--config", str(config), "--set", "audio.vad=webrtc", "--log-level", "error"]
    assert main([*argv, "--thresholds", "0.3", "--boosts", "1"]) == 0
    assert "without the voice-activity gate" in capsys.readouterr().err


async def test_kwsd_run_with_audio_vad(tmp_path: Path, assets: Path) -> None:
    speech = spoken("hey computer, turn on the lights", tmp_path / "s.wav")
    audio = with_floor(np.concatenate([quiet_room(12.0), speech, quiet_room(12.0, seed=7)]))
    recording = tmp_path / "room.flac"
    sf.write(recording, audio, RATE)
    phrases = {"keywords.phrases": ["HEY COMPUTER", "TURN ON THE LIGHTS"]}
    settings = make_settings(tmp_path, assets, recording, **{"audio.vad": "webrtc", **phrases})
    out = io.StringIO()
    daemon = Daemon(settings, stdout=out, install_signal_handlers=False)
    assert await daemon.run() == 0
    lines = json_lines(out)
    assert [d["keyword"] for d in lines] == ["HEY COMPUTER", "TURN ON THE LIGHTS"]
    assert lines[0]["start"] == pytest.approx(12.2, abs=0.3)  # seconds since the start
    pipeline = daemon.pipeline
    assert pipeline is not None and isinstance(pipeline.frontend, SpeechGate)
    assert pipeline.stats.chunks < len(audio) / RATE / 0.32 / 3  # the encoder mostly rested
