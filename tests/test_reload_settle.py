"""A config or keywords file edited in place is read only once it is finished.

Measured before: rewriting config.toml in place (truncate, 0.3 s pause, write the same
content) swapped in an empty keyword list 10 times out of 10, and the same happened
with keywords.file; a file written in two halves 2.5 s apart made the partial keyword
"GOO" active. These tests do exactly that to real files watched by a running daemon.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from pathlib import Path

import pytest
import structlog
from async_support import wait_until
from daemon_support import make_settings, running

from kwsd.config import Settings
from kwsd.config.watch import (
    EMPTIED_SETTLE_SECONDS,
    UNFINISHED_SETTLE_SECONDS,
    FileKind,
    SettledFiles,
    unfinished_reason,
)
from kwsd.daemon import Daemon
from kwsd.registry import RegistryState

CONFIG = '[keywords]\nphrases = ["HEY COMPUTER"]\nfile = "keywords.txt"\n'


class Watched:
    """A daemon watching tmp_path/config.toml and tmp_path/keywords.txt, and every
    keyword state it went through."""

    def __init__(self, tmp_path: Path, assets: Path, speech: Path, keywords: str) -> None:
        self.config = tmp_path / "config.toml"
        self.config.write_text(CONFIG, encoding="utf-8")
        self.keywords = tmp_path / "keywords.txt"
        self.keywords.write_text(keywords, encoding="utf-8")

        def load() -> Settings:
            return make_settings(
                tmp_path, assets, speech, config=self.config, **{"audio.loop": True}
            )

        self.daemon = Daemon(
            load(), reload_settings=load, stdout=io.StringIO(), install_signal_handlers=False
        )
        self.states: list[RegistryState] = []

    def listen(self) -> None:
        assert self.daemon.registry is not None
        self.daemon.registry.add_listener(self.states.append)

    def displays(self) -> list[str]:
        assert self.daemon.registry is not None
        return self.daemon.registry.keyword_set.displays()

    def seen(self) -> list[list[str]]:
        return [state.keyword_set.displays() for state in self.states]


async def rewrite_in_place(path: Path, first: bytes, second: bytes, pause: float) -> None:
    """Write `first` over the file (truncating it), wait, then append `second`: one open
    file, as a program writing in place does."""
    with path.open("wb") as out:
        out.write(first)
        out.flush()
        await asyncio.sleep(pause)
        out.write(second)
        out.flush()


@pytest.mark.parametrize(("target", "rounds"), [("config.toml", 10), ("keywords.txt", 5)])
async def test_truncate_pause_write_never_swaps_in_an_empty_list(
    tmp_path: Path, assets: Path, speech: Path, target: str, rounds: int
) -> None:
    watched = Watched(tmp_path, assets, speech, "GOOD NIGHT\n")
    path = tmp_path / target
    content = path.read_bytes()
    async with running(watched.daemon):
        watched.listen()
        for _ in range(rounds):
            reloads = watched.daemon.reloads
            await rewrite_in_place(path, b"", content, pause=0.3)  # the measured case
            await wait_until(
                lambda r=reloads: watched.daemon.reloads > r, what="the reload after the edit"
            )
        assert watched.displays() == ["HEY COMPUTER", "GOOD NIGHT"]
    assert watched.seen() == [["HEY COMPUTER", "GOOD NIGHT"]], "only the initial state"
    assert watched.daemon.pipeline is not None
    assert watched.daemon.pipeline.stats.keyword_versions == [], "no list was swapped in"


async def test_files_written_in_two_halves_are_read_only_when_whole(
    tmp_path: Path, assets: Path, speech: Path
) -> None:
    """A keyword cut mid-word ("GOO" of "GOOD NIGHT") and a TOML cut mid-number (0.4 of
    0.45) are both valid on their own; neither is ever applied."""
    watched = Watched(tmp_path, assets, speech, "HEY THERE\n")
    config = CONFIG + "[search]\nthreshold = 0.3\n"
    async with running(watched.daemon):
        watched.listen()
        started = time.monotonic()
        await asyncio.gather(
            rewrite_in_place(watched.keywords, b"HEY THERE\nGOO", b"D NIGHT\n", pause=2.5),
            rewrite_in_place(
                watched.config,
                (config.removesuffix("0.3\n") + "0.4").encode(),
                b"5\n",
                pause=2.5,
            ),
        )
        await wait_until(
            lambda: watched.displays() == ["HEY COMPUTER", "HEY THERE", "GOOD NIGHT"],
            within=UNFINISHED_SETTLE_SECONDS + 10,
            what="the finished files",
        )
        applied_after = time.monotonic() - started
    thresholds = [{k.threshold for k in s.keyword_set.keywords} for s in watched.states]
    assert thresholds[-1] == {0.45} and all(0.4 not in t for t in thresholds), thresholds
    assert all("GOO" not in displays for displays in watched.seen()), watched.seen()
    # Once whole, the files were read after the short settle, not the long one.
    assert applied_after < 2.5 + UNFINISHED_SETTLE_SECONDS, applied_after


async def test_an_edit_that_empties_a_source_waits_and_warns(
    tmp_path: Path, assets: Path, speech: Path
) -> None:
    watched = Watched(tmp_path, assets, speech, "GOOD NIGHT\n")
    async with running(watched.daemon):
        watched.listen()
        with structlog.testing.capture_logs() as logs:
            # Emptied (a file that looks finished), then filled again 2 s later: the
            # empty state never reaches the engine.
            replace_file(watched.keywords, "# keywords for the living room\n")
            await asyncio.sleep(2.0)
            replace_file(watched.keywords, "GOOD NIGHT\nLIGHTS OFF\n")
            refilled = time.monotonic()
            await wait_until(
                lambda: watched.displays() == ["HEY COMPUTER", "GOOD NIGHT", "LIGHTS OFF"],
                what="the refilled file",
            )
            # The hold was for the empty content only: the new one settles as usual.
            assert time.monotonic() - refilled < EMPTIED_SETTLE_SECONDS
        held = [e for e in logs if "no keywords" in e["event"]]
        assert held and held[0]["log_level"] == "warning", logs
        assert held[0]["sources"] == [f"keywords file {watched.keywords}"]
        assert ["HEY COMPUTER"] not in watched.seen()

        # Emptied for good: applied once it has stayed like that, with a warning.
        with structlog.testing.capture_logs() as logs:
            started = time.monotonic()
            replace_file(watched.keywords, "# none for now\n")
            await wait_until(
                lambda: watched.displays() == ["HEY COMPUTER"],
                within=EMPTIED_SETTLE_SECONDS + 10,
                what="the emptied file",
            )
            assert time.monotonic() - started >= EMPTIED_SETTLE_SECONDS
        applied = [e for e in logs if "now empty" in e["event"]]
        assert applied and applied[0]["log_level"] == "warning", logs


async def test_a_bad_keywords_file_edit_keeps_the_previous_list(
    tmp_path: Path, assets: Path, speech: Path
) -> None:
    watched = Watched(tmp_path, assets, speech, "GOOD NIGHT\n")
    async with running(watched.daemon):
        watched.listen()
        for bad in ("hello123\n", "GOOD NIGHT :x\n", "▁GOOD ▁NIGHTX\n"):
            reloads = watched.daemon.reloads
            with structlog.testing.capture_logs() as logs:
                replace_file(watched.keywords, bad)
                await wait_until(lambda r=reloads: watched.daemon.reloads > r)
                await wait_until(lambda: any(e["log_level"] == "error" for e in logs))
            assert watched.displays() == ["HEY COMPUTER", "GOOD NIGHT"], bad
            errors = [e for e in logs if e["log_level"] == "error"]
            assert "rejected" in errors[0]["event"] and "keyword" in errors[0]["error"], errors
    assert watched.seen() == [["HEY COMPUTER", "GOOD NIGHT"]]


def replace_file(path: Path, text: str) -> None:
    """Save the way editors do: write a new file, then rename it over the old one."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --- the signals, without a daemon -----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind", "reason"),
    [
        (b"", "lines", "empty"),
        (b"HEY COMPUTER\nGOO", "lines", "no newline"),
        (b"HEY COMPUTER\nGOOD NIGHT\n", "lines", None),
        (b'[keywords]\nphrases = ["A"]', "toml", "no newline"),
        (b'[keywords]\nphrases = [\n  "A",\n', "toml", "not valid TOML"),
        (b'[keywords]\nphrases = ["A"]\n', "toml", None),
        (b'["HEY COMPUTER", "GOO', "json", "not valid JSON"),
        (b'["HEY COMPUTER"]', "json", None),  # json.dump writes no final newline
        (b"\xff\xfe\n", "lines", "not valid UTF-8"),
    ],
)
def test_what_looks_unfinished(data: bytes, kind: FileKind, reason: str | None) -> None:
    found = unfinished_reason(data, kind)
    assert (found is None) if reason is None else (found is not None and reason in found)


async def test_stable_time_carries_over_to_a_longer_wait(tmp_path: Path) -> None:
    path = tmp_path / "keywords.txt"
    path.write_text("GOOD NIGHT\n", encoding="utf-8")
    settle = SettledFiles({path: "lines"}, poll_seconds=0.02)
    first = await settle.wait()
    await asyncio.sleep(0.5)
    started = time.monotonic()
    assert await settle.wait(hold=(first, 0.9)) == first
    assert time.monotonic() - started < 0.3, "already stable for 1 s"
    # A hold applies only while the files are as held: new content settles as usual.
    path.write_text("GOOD NIGHT\nLIGHTS OFF\n", encoding="utf-8")
    assert await settle.changed_since(first)
    started = time.monotonic()
    second = await settle.wait(hold=(first, 30.0))
    assert second != first and time.monotonic() - started < 2.0
