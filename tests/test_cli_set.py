"""`--set KEY=VALUE` works for every key, including keys that also have a flag of their own."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kwsd.cli import build_parser
from kwsd.cli.run import load
from kwsd.config import Settings


def run_settings(*argv: str) -> Settings:
    return load(build_parser().parse_args(["run", *argv]))


@pytest.mark.parametrize(
    ("assignment", "read"),
    [
        ("audio.loop=true", lambda s: s.audio.loop is True),
        ("audio.realtime=false", lambda s: s.audio.realtime is False),
        ("audio.source=stdin", lambda s: s.audio.source == "stdin"),
        ("audio.device=2", lambda s: str(s.audio.device) == "2"),
        ("log.level=debug", lambda s: s.log.level == "debug"),
        ("log.format=json", lambda s: s.log.format == "json"),
        ("search.beam=7", lambda s: s.search.beam == 7),
        ("search.threshold=0.3", lambda s: s.search.threshold == 0.3),
        ("model.precision=fp32", lambda s: s.model.precision == "fp32"),
        ("model.num_threads=3", lambda s: s.model.num_threads == 3),
    ],
)
def test_set_applies_when_the_matching_flag_is_absent(
    assignment: str, read: Callable[[Settings], bool]
) -> None:
    assert read(run_settings("--set", assignment))


def test_a_given_flag_still_beats_set() -> None:
    settings = run_settings("--set", "log.level=debug", "--log-level", "warning",
                            "--set", "search.beam=7", "--beam", "5")  # fmt: skip
    assert settings.log.level == "warning"
    assert settings.search.beam == 5
