"""`kwsd eval` end to end: real decoder/joiner on the real-speech encoder frames, and the
stand-in encoder on generated speech through the CLI with a process pool."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from engine_support import espeak

from kwsd import KeywordSpotter
from kwsd.backends.base import ModelDefaults
from kwsd.backends.replay import ReplayBackend, read_frames
from kwsd.cli import main
from kwsd.errors import ExitCode
from kwsd.evaluate.manifest import read_manifest
from kwsd.evaluate.metrics import score
from kwsd.evaluate.runner import RunConfig, Worker
from kwsd.evaluate.sweep import Grid
from kwsd.keywords import Tokenizer, compile_keywords, parse_keyword_line, parse_keyword_lines

LIGHT_UP_LINE = "▁ L IGHT ▁UP :2.0 #0.25 @LIGHT_UP"
LIGHT_UP_TRANSCRIPT = (
    "AFTER EARLY NIGHTFALL THE YELLOW LAMPS WOULD LIGHT UP HERE AND THERE THE SQUALID "
    "QUARTER OF THE BROTHELS"
)


def _replay_spotter(assets: Path) -> KeywordSpotter:
    """The real decoder/joiner driven by the real encoder's output for light_up.wav."""
    spotter = KeywordSpotter.from_assets(assets)
    frames = read_frames(assets / "fixtures" / "ref_encoder_light_up.bin")
    return spotter.with_backend(ReplayBackend(spotter.backend, frames))


@pytest.fixture()
def replay_setup(assets: Path, tmp_path: Path) -> tuple[Worker, Path]:
    (tmp_path / "light_up.wav").symlink_to(assets / "audio" / "light_up.wav")
    manifest = tmp_path / "m.tsv"
    manifest.write_text(
        f"relpath\ttranscript\tword_end_s\nlight_up.wav\t{LIGHT_UP_TRANSCRIPT}\tLIGHT UP=3.30\n",
        "utf-8",
    )
    config = RunConfig(
        make_spotter=partial(_replay_spotter, assets),
        specs=(parse_keyword_line(LIGHT_UP_LINE), parse_keyword_line("LOVELY CHILD")),
        grid=Grid(boosts=(2.0,), thresholds=(0.25, 0.99)),
    )
    return Worker(config), manifest


def test_real_speech_frames_hit_with_measured_latency(replay_setup: tuple[Worker, Path]) -> None:
    worker, manifest_path = replay_setup
    manifest = read_manifest(manifest_path)
    result = worker.run(manifest.utterances[0])
    assert [s.keyword for s in result.spotted] == ["LIGHT_UP"]
    found = result.spotted[0]
    # docs/algorithm.md §6: the reference decoder puts the first token at 3.04 s
    assert found.start == pytest.approx(3.04, abs=0.08)
    # reported once the chunk holding the trailing blank was computed: after the word,
    # within the 320 ms chunk plus look-ahead
    assert found.end < found.emitted_at < found.end + 0.8
    assert result.duration == pytest.approx(6.6, abs=0.1)
    scores = score(worker.targets(), manifest, [result])
    light, lovely = scores.rows
    assert (light.positives, light.hits, light.false_alarms) == (1, 1, 0)
    assert light.latency_count == 1
    assert light.latency_mean == pytest.approx(found.emitted_at - 3.30)
    assert (lovely.positives, lovely.hits, lovely.false_alarms) == (0, 0, 0)


def test_sweep_cache_matches_the_streaming_spotter(replay_setup: tuple[Worker, Path]) -> None:
    worker, manifest_path = replay_setup
    utt = read_manifest(manifest_path).utterances[0]
    streamed = worker.run(utt)
    swept = worker.sweep(utt)
    assert swept.base == streamed
    at_025, at_099 = swept.grid
    assert [s.keyword for s in at_025.spotted] == ["LIGHT_UP"]
    assert at_025.spotted[0].emitted_at == streamed.spotted[0].emitted_at
    assert at_099.spotted == ()  # nothing is that confident


# -- generated speech through the CLI -----------------------------------------------------

SPEECH = [
    ("p1.wav", "en-us+m3", "Hey computer, turn on the lights please"),
    ("p2.wav", "en-us+f2", "Hey computer! What time is it?"),
    ("p3.wav", "en-us+m3", "Good night everyone, see you tomorrow"),
    ("p4.wav", "en-us+f2", "Well, good night then."),
    ("n1.wav", "en-us+m3", "The weather is nice today and the garden looks green"),
    ("n2.wav", "en-us+f2", "Please open the window in the kitchen"),
    ("n3.wav", "en-us+m3", "They computed the results overnight"),
    ("n4.wav", "en-us+f2", "My neighbour bought a new car yesterday"),
]


@pytest.fixture(scope="module")
def speech_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("speech")
    (root / "audio").mkdir()
    lines = ["relpath\ttranscript"]
    for name, voice, text in SPEECH:
        espeak(text, root / "audio" / name, voice)
        lines.append(f"audio/{name}\t{text}")
    manifest = root / "manifest.tsv"
    manifest.write_text("\n".join(lines) + "\n", "utf-8")
    return manifest


@pytest.fixture()
def cli_env(assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Stand-in model from KWSD_ASSETS, and an empty config so no user file interferes."""
    monkeypatch.setenv("KWSD_ASSETS", str(assets))
    config = tmp_path / "config.toml"
    config.write_text("", "utf-8")
    monkeypatch.setenv("KWSD_CONFIG", str(config))
    return config


def _eval(argv: list[str], config: Path) -> int:
    return main(["eval", *argv, "--config", str(config), "--log-level", "error"])


def test_multi_file_run_sweep_plot_and_keywords_file(
    assets: Path,
    speech_manifest: Path,
    cli_env: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keywords = ["-k", "hey computer", "-k", "good night"]
    plain_json = tmp_path / "plain.json"
    assert (
        _eval(["--manifest", str(speech_manifest), *keywords, "--json", str(plain_json)], cli_env)
        == 0
    )
    table = capsys.readouterr().out
    assert "8 utterances" in table and "HEY COMPUTER" in table and "TOTAL" in table
    plain = json.loads(plain_json.read_text())
    rows = {r["keyword"]: r for r in plain["keywords"]}
    assert rows["HEY COMPUTER"]["positives"] == 2 and rows["GOOD NIGHT"]["positives"] == 2
    assert rows["HEY COMPUTER"]["recall"] == 1.0 and rows["GOOD NIGHT"]["recall"] == 1.0
    assert plain["total"]["false_alarms"] == 0 and plain["errors"] == []

    swept_json, plot, out_keywords = tmp_path / "s.json", tmp_path / "det.png", tmp_path / "kw.txt"
    argv = [
        "--manifest", str(speech_manifest), *keywords, "--jobs", "2", "--sweep",
        "--thresholds", "0.2,0.4,0.6,0.97", "--boosts", "1,2", "--max-fa-per-hour", "1",
        "--plot", str(plot), "--out-keywords", str(out_keywords), "--json", str(swept_json),
    ]  # fmt: skip
    assert _eval(argv, cli_env) == 0
    out = capsys.readouterr().out
    assert "Recommended settings" in out and str(out_keywords) in out
    swept: dict[str, Any] = json.loads(swept_json.read_text())
    # the pool and the encoder cache give exactly what the serial streaming run gave
    assert swept["keywords"] == plain["keywords"]
    assert swept["options"]["jobs"] == 2
    points = swept["sweep"]["points"]
    assert len(points) == 2 * 2 * 4
    hey_strict = [p for p in points if p["keyword"] == "HEY COMPUTER" and p["threshold"] == 0.97]
    assert all(p["recall"] < 1.0 for p in hey_strict)  # the grid really changes the search
    recs = {r["keyword"]: r for r in swept["sweep"]["recommendations"]}
    assert set(recs) == {"HEY COMPUTER", "GOOD NIGHT"}
    assert all(r["recall"] == 1.0 and r["meets_target"] for r in recs.values())

    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    specs = parse_keyword_lines(out_keywords.read_text("utf-8"))
    tokenizer = Tokenizer(assets / "model" / "tokens.txt", assets / "model" / "bpe.model")
    compiled = compile_keywords(specs, tokenizer, ModelDefaults())
    got = {k.display: (k.boost, k.threshold, k.phrase) for k in compiled.keywords}
    assert got == {
        "HEY_COMPUTER": (
            recs["HEY COMPUTER"]["boost"],
            recs["HEY COMPUTER"]["threshold"],
            "HEY COMPUTER",
        ),
        "GOOD_NIGHT": (recs["GOOD NIGHT"]["boost"], recs["GOOD NIGHT"]["threshold"], "GOOD NIGHT"),
    }

    # the written file is accepted back as a keywords file, and its settings hold up
    again_json = tmp_path / "again.json"
    argv = ["--manifest", str(speech_manifest), "--keywords-file", str(out_keywords)]
    assert _eval([*argv, "--json", str(again_json)], cli_env) == 0
    again = {r["keyword"]: r for r in json.loads(again_json.read_text())["keywords"]}
    assert again["HEY_COMPUTER"]["recall"] == 1.0 and again["GOOD_NIGHT"]["recall"] == 1.0
    assert json.loads(again_json.read_text())["total"]["false_alarms"] == 0


def test_json_to_stdout_keeps_the_table_on_stderr(
    speech_manifest: Path, cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--manifest", str(speech_manifest), "-k", "good night", "--limit", "2", "--json", "-"]
    assert _eval(argv, cli_env) == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["utterances"] == 2 and data["keywords"][0]["positives"] == 0
    assert "TOTAL" in captured.err


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (["-k", "good night", "--plot", "x.png"], ExitCode.USAGE, "need --sweep"),
        (["-k", "good night", "--sweep", "--thresholds", "0.2,x"], ExitCode.USAGE, "--thresholds"),
        (["-k", "▁NOTAPIECE"], ExitCode.KEYWORDS, "not in the model's tokens.txt"),
        ([], ExitCode.KEYWORDS, "no keywords"),
    ],
)
def test_user_errors_are_one_line(
    speech_manifest: Path,
    cli_env: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    code: int,
    message: str,
) -> None:
    assert _eval(["--manifest", str(speech_manifest), *extra], cli_env) == code
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kwsd:")]
    assert len(err) == 1 and message in err[0]


def test_unreadable_audio_names_the_manifest_entry(
    cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.wav").write_text("this is not audio", "utf-8")
    manifest = tmp_path / "m.tsv"
    manifest.write_text("relpath\ttranscript\nbroken.wav\tgood night\n", "utf-8")
    assert _eval(["--manifest", str(manifest), "-k", "good night"], cli_env) == ExitCode.AUDIO
    err = capsys.readouterr().err
    assert "broken.wav" in err and "manifest entry broken.wav" in err
