"""`kwsd config init`: the commented example, written where kwsd looks, never overwriting."""

from __future__ import annotations

from pathlib import Path

import pytest

from kwsd.cli import main
from kwsd.cli.config import example_config
from kwsd.config import load_settings

REPO = Path(__file__).resolve().parent.parent


def test_writes_the_example_to_the_platform_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("KWSD_CONFIG", raising=False)
    assert main(["config", "init"]) == 0
    written = tmp_path / "xdg" / "kwsd" / "config.toml"
    assert written.read_text(encoding="utf-8") == example_config()
    assert str(written) in capsys.readouterr().out
    # ... and kwsd's own default lookup now finds and accepts it.
    assert main(["config", "path"]) == 0
    assert f"{written} (from the default location)" in capsys.readouterr().out
    assert load_settings(None, {}).config_path == written


def test_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "config.toml"
    mine.write_text('site_id = "kitchen"\n', encoding="utf-8")
    assert main(["config", "init", str(mine)]) == 3
    assert "already exists" in capsys.readouterr().err
    assert mine.read_text(encoding="utf-8") == 'site_id = "kitchen"\n'


def test_a_directory_gets_config_toml_inside(tmp_path: Path) -> None:
    assert main(["config", "init", str(tmp_path)]) == 0
    assert (tmp_path / "config.toml").read_text(encoding="utf-8") == example_config()


def test_unwritable_place_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    assert main(["config", "init", str(blocker / "sub" / "config.toml")]) == 3
    assert "cannot write" in capsys.readouterr().err


def test_the_shipped_example_is_the_package_data_file() -> None:
    assert example_config() == (REPO / "kwsd" / "data" / "config.example.toml").read_text(
        encoding="utf-8"
    )


def test_example_prints_the_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "example"]) == 0
    assert capsys.readouterr().out == example_config()
