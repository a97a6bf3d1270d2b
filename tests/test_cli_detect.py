"""`kwsd detect`, `decode-frames` and `keywords check` through the real entry point."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from engine_support import espeak

from kwsd.cli import main


@pytest.fixture()
def env_assets(assets: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KWSD_ASSETS", str(assets))
    return assets


def test_detect_json_on_generated_speech(
    env_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = tmp_path / "cmd.wav"
    espeak("hello there, hey computer, what time is it", wav)  # 22.05 kHz: resampled
    assert (
        main(
            [
                "detect",
                str(wav),
                "-k",
                "hey computer",
                "-k",
                "good night",
                "--boost",
                "2.0",
                "--json",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1
    assert set(lines[0]) == {"file", "keyword", "start", "end", "tokens", "score"}
    assert lines[0]["keyword"] == "HEY COMPUTER" and lines[0]["file"] == str(wav)


def test_decode_frames_human_output(env_assets: Path, capsys: pytest.CaptureFixture[str]) -> None:
    frames = env_assets / "fixtures" / "ref_encoder_light_up.bin"
    assert main(["decode-frames", str(frames), "-k", "▁ L IGHT ▁UP :2.0 #0.25 @LIGHT_UP"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{frames}: LIGHT_UP  3.0") and "[▁ L IGHT ▁UP]" in out


def test_keywords_check_prints_pieces_and_warnings(
    env_assets: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keywords", "check", "light up", "mister"]) == 0
    out = capsys.readouterr().out
    assert "▁ L IGHT ▁UP" in out and "▁MI S TER" in out
    assert "warning: keyword 2 ('mister'): one word split into 3 pieces" in out


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["detect", "/nonexistent.wav", "-k", "LIGHT UP"], 6, "does not exist"),
        (["detect", "{audio}"], 5, "no keywords"),
        (["detect", "{audio}", "-k", "turn on 2"], 5, "'2' are not in the model's vocabulary"),
        (
            ["detect", "{audio}", "-k", "LIGHT UP", "--model-dir", "/nonexistent"],
            78,
            "kwsd models pull",
        ),
        (["detect", "{audio}", "--threshold", "abc"], 2, "invalid float value"),
        (["decode-frames", "{audio}", "-k", "LIGHT UP"], 4, "header says"),
    ],
)
def test_bad_arguments_give_one_line_and_documented_code(
    env_assets: Path, argv: list[str], code: int, message: str
) -> None:
    audio = str(env_assets / "audio" / "light_up.wav")
    argv = [a.replace("{audio}", audio) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "kwsd", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kwsd: error")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in proc.stderr
