"""Watching the config and keywords files, and reading an edited file only once it is finished.

A change notification says that a file is being written, not that the writing is done.
A program that rewrites a file in place truncates it first and writes it afterwards,
and it may write in several pieces. Reading at the first event would apply an empty or
partial file: an empty keyword list, or the keyword "GOO" from "GOOD NIGHT". So after an
event `SettledFiles.wait` polls the files (size, modification time and a hash of the
content) and returns once none of them has changed for a settle period.

How long the settle period is depends on what the content looks like:

- `SETTLE_SECONDS` (0.5 s) for a file that looks finished. A writer that pauses briefly
  between writes (truncate, 0.3 s, write) is covered by this alone.
- `UNFINISHED_SETTLE_SECONDS` (5 s) for a file that looks cut off, by one of these
  signals:
  - it is empty or missing (a truncation, or an editor's delete-and-recreate);
  - its last line has no newline (TOML and keyword lines). A write cut inside a line
    always looks like this: "GOO" from "GOOD NIGHT\n";
  - it does not parse (TOML for the config file, JSON for a `.json` keywords file). A
    file cut inside a value, a table or a list nearly always fails to parse. A JSON
    file may end without a newline (`json.dump` writes none), so for JSON only parsing
    counts.
  None of these signals can make kwsd read a wrong file: a false alarm (a file saved
  without a final newline, a typo in the TOML) only delays the reload by a few seconds.
  A file with such a typo is then read and refused with the reason, as before.
- `EMPTIED_SETTLE_SECONDS` (5 s), asked for by the daemon when the new content leaves a
  source that had keywords with none. A file cut exactly at a line boundary looks
  finished; when the cut is at the very start, this catches it. When the edit was
  meant, it is applied after this wait, with a warning.

What no signal can catch is a writer that stops exactly at a line boundary of a
parseable file for longer than the settle period: that file is read as it is. It is
valid, and it holds whole keywords only, never a partial one.

`MAX_SETTLE_SECONDS` bounds the wait: a file that never stops changing for 30 s is read
as it is then, with a warning.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import structlog
from watchfiles import awatch

log = structlog.get_logger("kwsd.config.watch")

SETTLE_SECONDS: Final = 0.5
UNFINISHED_SETTLE_SECONDS: Final = 5.0
EMPTIED_SETTLE_SECONDS: Final = 5.0
MAX_SETTLE_SECONDS: Final = 30.0
POLL_SECONDS: Final = 0.1
# watchfiles groups the events of one save; the settle period does the real waiting.
WATCH_STEP_MS: Final = 50
WATCH_DEBOUNCE_MS: Final = 200

FileKind = Literal["toml", "json", "lines"]
WatchedFiles = Mapping[Path, FileKind]


def keywords_file_kind(path: Path) -> FileKind:
    """How a keywords file is read (kwsd.keywords.load_keyword_file): JSON or lines."""
    return "json" if path.suffix.lower() == ".json" else "lines"


@dataclass(frozen=True, slots=True)
class FileState:
    """One look at a file: what changes when anyone writes to it."""

    exists: bool
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    unfinished: str | None = None  # why the content looks cut off, or None


Snapshot = dict[Path, FileState]


def unfinished_reason(data: bytes, kind: FileKind) -> str | None:
    """Why `data` looks like a file that is still being written (see the module docstring)."""
    if not data.strip():
        return "it is empty"
    if kind != "json" and not data.endswith(b"\n"):
        return "its last line has no newline"
    try:
        text = data.decode("utf-8")
        if kind == "toml":
            tomllib.loads(text)
        elif kind == "json":
            json.loads(text)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError):
        return f"it is not valid {'UTF-8' if kind == 'lines' else kind.upper()}"
    return None


def file_state(path: Path, kind: FileKind) -> FileState:
    """Blocking: reads the whole file (config and keyword files are small)."""
    try:
        stat = path.stat()
        data = path.read_bytes()
    except FileNotFoundError:
        return FileState(exists=False, unfinished="it does not exist")
    except OSError as exc:
        return FileState(exists=False, unfinished=f"it cannot be read ({exc.strerror or exc})")
    return FileState(
        exists=True,
        size=len(data),
        mtime_ns=stat.st_mtime_ns,
        sha256=hashlib.sha256(data).hexdigest(),
        unfinished=unfinished_reason(data, kind),
    )


class SettledFiles:
    """The files of one reload, polled until they have not changed for long enough.

    The time of the last change carries over between calls to `wait`, so asking for a
    longer settle period afterwards counts the time the files were already stable.
    """

    def __init__(
        self,
        files: WatchedFiles,
        *,
        poll_seconds: float = POLL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._files = dict(files)
        self._poll = poll_seconds
        self._clock = clock
        self._started = self._changed_at = clock()
        self._last: Snapshot | None = None
        self._explained: set[tuple[Path, str]] = set()

    async def look(self) -> Snapshot:
        """The files now (read in a worker thread); notes the time if anything changed."""
        now = await asyncio.to_thread(
            lambda: {path: file_state(path, kind) for path, kind in self._files.items()}
        )
        if now != self._last:
            self._last = now
            self._changed_at = self._clock()
        return now

    async def wait(self, *, hold: tuple[Snapshot, float] | None = None) -> Snapshot:
        """The files once none has changed for SETTLE_SECONDS, or UNFINISHED_SETTLE_SECONDS
        while one looks cut off; at most MAX_SETTLE_SECONDS.

        `hold=(snapshot, seconds)`: while the files are still as in `snapshot`, wait
        until they have not changed for `seconds` (the daemon's wait for an edit that
        emptied a keyword source). Once they change, the usual rules apply again.
        """
        while True:
            snapshot = await self.look()
            unfinished = {p: s.unfinished for p, s in snapshot.items() if s.unfinished}
            needed = UNFINISHED_SETTLE_SECONDS if unfinished else SETTLE_SECONDS
            if hold is not None and snapshot == hold[0]:
                needed = max(needed, hold[1])
            if self._clock() - self._changed_at >= needed:
                return snapshot
            if self._clock() - self._started >= MAX_SETTLE_SECONDS:
                log.warning(
                    "a watched file kept changing; reading it as it is now",
                    files=sorted(str(p) for p in self._files),
                    waited_seconds=MAX_SETTLE_SECONDS,
                )
                return snapshot
            self._explain(unfinished)
            await asyncio.sleep(self._poll)

    def _explain(self, unfinished: dict[Path, str]) -> None:
        for path, reason in unfinished.items():
            if (path, reason) not in self._explained:
                self._explained.add((path, reason))
                log.info(
                    "waiting for an edited file to be finished",
                    file=str(path),
                    reason=reason,
                    read_after_unchanged_seconds=UNFINISHED_SETTLE_SECONDS,
                )

    async def changed_since(self, snapshot: Snapshot) -> bool:
        """Whether any file differs from `snapshot` now (a write during a read)."""
        return await self.look() != snapshot


async def file_edits(
    files: Callable[[], WatchedFiles], stop: asyncio.Event
) -> AsyncIterator[WatchedFiles]:
    """Yield the watched files each time one of them is written, until `stop` is set.

    Editors replace files, so the directories are watched and filtered by name. `files`
    is asked again after every yield: when a reload moves the keywords file, the new
    one is watched from then on.
    """
    while not stop.is_set():
        watched = dict(files())
        parents = {p.parent for p in watched if p.parent.is_dir()}
        if not parents:
            return

        def relevant(_change: object, path: str, names: WatchedFiles = watched) -> bool:
            return Path(os.path.realpath(path)) in names

        moved = False
        async for _changes in awatch(
            *parents,
            watch_filter=relevant,
            debounce=WATCH_DEBOUNCE_MS,
            step=WATCH_STEP_MS,
            recursive=False,
            stop_event=stop,
        ):
            yield watched
            if dict(files()) != watched:
                moved = True
                break  # watch the new set of files
        if not moved:
            return
