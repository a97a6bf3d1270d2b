"""`kwsd config check` checks the keywords as `kwsd run` does, with the model's vocabulary.

Measured before: `hello123` passed `kwsd config check` and then stopped `kwsd run` with
exit code 5. Both commands now read the keywords with the same code and compile them
against the same vocabulary, so they give the same exit code (5) and the same message.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kwsd.cli
import kwsd.model.locations
from kwsd.errors import ExitCode
from kwsd.keywords import MAX_KEYWORDS

PYTHON = sys.executable
# `kwsd config check` in a fresh interpreter, reporting whether ONNX Runtime was loaded.
CHECK_WITHOUT_RUNTIME = (
    "import sys, kwsd.cli\n"
    "code = kwsd.cli.main(sys.argv[1:])\n"
    "print('onnxruntime loaded' if 'onnxruntime' in sys.modules else 'no onnxruntime',"
    " file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """No KWSD_* from the developer's shell; home, XDG dirs and models inside tmp_path."""
    for name in list(os.environ):
        if name.upper().startswith("KWSD_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    for name, value in {
        "HOME": home,
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_DATA_HOME": home / ".local" / "share",
        "XDG_CACHE_HOME": home / ".cache",
    }.items():
        monkeypatch.setenv(name, str(value))
    # Not the checkout's models/ directory, where a developer may have pulled a model.
    monkeypatch.setattr(kwsd.model.locations, "source_checkout_models_dir", lambda: None)
    return dict(os.environ)


def config_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(body, encoding="utf-8")
    return path


def kwsd_process(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", CHECK_WITHOUT_RUNTIME, *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("kwsd: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def check(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(kwsd.cli, "COMMAND_MODULES", ("kwsd.cli.config",))
    return kwsd.cli.main(["config", "check", *argv])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            '[keywords]\nphrases = ["HEY COMPUTER", "hello123"]\n',
            "characters '1' '2' '3' are not in the model's vocabulary",
            id="hello123",
        ),
        pytest.param(
            '[keywords]\nfile = "missing.txt"\n',
            "missing.txt (keywords.file) does not exist",
            id="no-file",
        ),
    ],
)
def test_config_check_refuses_what_run_refuses_with_the_same_message(
    tmp_path: Path, env: dict[str, str], assets: Path, speech: Path, body: str, expected: str
) -> None:
    config = config_file(tmp_path, body)
    given = ["--config", str(config), "--set", f"assets={assets}"]
    checked = kwsd_process(env, "config", "check", *given)
    ran = kwsd_process(env, "run", *given, "--file", str(speech), "--fast")
    assert checked.returncode == ran.returncode == ExitCode.KEYWORDS == 5, (checked, ran)
    assert expected in error_line(checked.stderr)
    assert error_line(checked.stderr) == error_line(ran.stderr)
    assert "no onnxruntime" in checked.stderr, "config check loaded the model"


def test_only_the_vocabulary_is_needed(
    tmp_path: Path,
    env: dict[str, str],
    assets: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A model directory with only tokens.txt and bpe.model (no encoder, decoder or
    joiner that could load) is enough to check keywords."""
    vocabulary = tmp_path / "vocabulary"
    vocabulary.mkdir()
    for name in ("tokens.txt", "bpe.model"):
        shutil.copy(assets / "model" / name, vocabulary / name)
    given = ["--set", f"model.dir={vocabulary}"]
    bad = config_file(tmp_path, '[keywords]\nphrases = ["hello123"]\n')
    assert check(monkeypatch, "--config", str(bad), *given) == 5
    assert "characters '1' '2' '3'" in capsys.readouterr().err

    good = config_file(tmp_path, '[keywords]\nphrases = ["HEY COMPUTER", "THE"]\n')
    assert check(monkeypatch, "--config", str(good), *given) == 0
    err = capsys.readouterr().err
    assert f"2 keywords checked against the model's vocabulary ({vocabulary / 'tokens.txt'})" in err
    assert "warning: keyword 2 ('THE'): single BPE piece" in err


def test_without_a_model_it_checks_what_it_can_and_says_what_it_could_not(
    tmp_path: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = config_file(tmp_path, '[keywords]\nphrases = ["hello123"]\n')
    assert check(monkeypatch, "--config", str(config)) == 0, "no model is not a config error"
    err = capsys.readouterr().err
    assert "1 keyword read, but not checked against the model's vocabulary" in err
    assert "`kwsd models pull`" in err and "`kwsd config check` again" in err

    # What needs no model is still checked: the file, its lines, the count.
    words = tmp_path / "keywords.txt"
    config_file(tmp_path, '[keywords]\nfile = "keywords.txt"\n')
    for text, expected in [
        ("GOOD NIGHT :x\n", "':x' is not a number"),
        ("GOOD NIGHT\n" * (MAX_KEYWORDS + 1), "10,001 keywords, more than the limit of 10,000"),
    ]:
        words.write_text(text, encoding="utf-8")
        assert check(monkeypatch, "--config", str(config)) == 5
        assert expected in capsys.readouterr().err
    words.unlink()
    assert check(monkeypatch, "--config", str(config)) == 5
    assert "keywords.txt (keywords.file) does not exist" in capsys.readouterr().err


def test_no_keywords_is_a_warning(
    tmp_path: Path,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = config_file(tmp_path, "[keywords]\nphrases = []\n")
    assert check(monkeypatch, "--config", str(config)) == 0
    assert "warning: no keywords configured: nothing will be detected" in capsys.readouterr().err
