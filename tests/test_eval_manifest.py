"""Manifest reading and whole-word transcript matching for `kwsd eval`."""

from __future__ import annotations

from pathlib import Path

import pytest

from kwsd.cli import main
from kwsd.errors import ExitCode
from kwsd.evaluate.manifest import (
    ManifestError,
    count_phrase,
    normalize_words,
    parse_word_ends,
    read_manifest,
)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("Hey, computer!", ("HEY", "COMPUTER")),
        ("  hey\tcomputer  ", ("HEY", "COMPUTER")),
        ("You DON'T mean that", ("YOU", "DON'T", "MEAN", "THAT")),
        ("don\u2019t stop", ("DON'T", "STOP")),  # curly apostrophe from word processors
        ("'Quoted' words'", ("QUOTED", "WORDS")),  # quotes around words are not apostrophes
        ("lights-off; now.", ("LIGHTS", "OFF", "NOW")),
        ("LIGHT_UP", ("LIGHT", "UP")),  # display names read as words
        ("...", ()),
        ("Room 101", ("ROOM", "101")),
    ],
)
def test_normalize_words(text: str, words: tuple[str, ...]) -> None:
    assert normalize_words(text) == words


@pytest.mark.parametrize(
    ("transcript", "phrase", "count"),
    [
        ("the lamps would light up here and there", "LIGHT UP", 1),
        ("The lamps would LIGHT up, here", "light up", 1),
        ("turn the lights on", "LIGHT", 0),  # LIGHTS is not LIGHT
        ("a lightbulb", "LIGHT", 0),
        ("I computed the light ups and downs", "LIGHT UP", 0),  # UPS is not UP
        ("hey computer hey computer", "HEY COMPUTER", 2),
        ("hey hey hey", "HEY HEY", 1),  # non-overlapping, as a spotter resets after a hit
        ("don't stop", "DONT STOP", 0),  # the apostrophe is part of the word
        ("Don't stop me now", "don\u2019t stop", 1),
        ("", "LIGHT UP", 0),
        ("light up", "", 0),
    ],
)
def test_whole_word_phrase_matching(transcript: str, phrase: str, count: int) -> None:
    assert count_phrase(normalize_words(transcript), normalize_words(phrase)) == count


def test_word_end_cells() -> None:
    assert parse_word_ends("", "m:2") == {}
    assert parse_word_ends("3.3", "m:2") == {"": (3.3,)}
    assert parse_word_ends("7.5, 3.3", "m:2") == {"": (3.3, 7.5)}
    assert parse_word_ends("light up=3.3; Hey Computer=1.9,8", "m:2") == {
        "LIGHT UP": (3.3,),
        "HEY COMPUTER": (1.9, 8.0),
    }
    with pytest.raises(ManifestError, match=r"m:2: word_end_s 'soon' is not a list"):
        parse_word_ends("soon", "m:2")
    with pytest.raises(ManifestError, match="negative"):
        parse_word_ends("-1", "m:2")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    return path


def test_read_manifest_paths_columns_and_timings(assets: Path, tmp_path: Path) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "a.wav").symlink_to(assets / "audio" / "light_up.wav")
    absolute = assets / "audio" / "lovely_child.wav"
    manifest = _write(
        tmp_path / "m.tsv",
        "\ufeffrelpath\tduration_s\ttranscript\tword_end_s\textra\n"
        "audio/a.wav\t6.6\tWould light up here\t3.3\tignored\n"
        f"{absolute}\t\tA lovely child forever\tLOVELY CHILD=6.0\n"
        "\n",
    )
    m = read_manifest(manifest)
    assert len(m) == 2
    first, second = m.utterances
    assert first.path == tmp_path / "audio" / "a.wav" and first.duration == 6.6
    assert first.words == ("WOULD", "LIGHT", "UP", "HERE")
    assert first.occurrences("light up") == 1
    assert first.ends_for("LIGHT UP") == (3.3,)
    assert first.ends_for("LOVELY CHILD") is None  # a bare time only covers phrases said
    assert second.path == absolute and second.duration is None
    assert second.ends_for("lovely child") == (6.0,)
    assert second.ends_for("FOREVER") is None
    assert read_manifest(manifest, limit=1).utterances == (first,)


def test_alternative_column_names(assets: Path, tmp_path: Path) -> None:
    wav = assets / "audio" / "light_up.wav"
    m = read_manifest(_write(tmp_path / "m.tsv", f"Path\tText\n{wav}\tlight up\n"))
    assert m.utterances[0].words == ("LIGHT", "UP")


def test_the_shared_corpus_manifest_reads(assets: Path) -> None:
    m = read_manifest(assets / "corpus" / "manifest.tsv", limit=5)
    assert len(m) == 5
    assert all(u.path.is_file() and u.words and u.duration for u in m.utterances)
    assert "THERE'S" in m.utterances[0].words


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("name\tnotes\nx.wav\thi\n", "has no 'relpath' column"),
        ("relpath\tduration_s\nx.wav\t1\n", "has no 'transcript' column"),
        ("relpath\ttranscript\n", "lists no utterances"),
        ("relpath\ttranscript\n\thello\n", "m.tsv:2: the 'relpath' cell is empty"),
        ("relpath\ttranscript\nnope.wav\thi\nnope2.wav\thi\n", r"2 audio file\(s\) not found"),
    ],
)
def test_bad_manifests_say_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    with pytest.raises(ManifestError, match=message) as info:
        read_manifest(_write(tmp_path / "m.tsv", content))
    assert info.value.exit_code == ExitCode.USAGE


def test_bad_duration_is_reported(assets: Path, tmp_path: Path) -> None:
    wav = assets / "audio" / "light_up.wav"
    path = _write(tmp_path / "m.tsv", f"relpath\ttranscript\tduration_s\n{wav}\thi\tlong\n")
    with pytest.raises(ManifestError, match=r"m\.tsv:2: duration 'long' is not a number"):
        read_manifest(path)


def test_cli_reports_missing_manifest_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "none.tsv"
    code = main(["eval", "--manifest", str(missing), "-k", "light up"])
    assert code == ExitCode.USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"kwsd: error: manifest {missing} does not exist"]
