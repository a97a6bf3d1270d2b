"""The evaluation manifest: which recordings to run and what was said in each.

A manifest is a TSV file with a header row. Two columns are required: the audio path
(`relpath`, relative to the manifest's own directory, or absolute) and the `transcript`.
The optional `word_end_s` column gives, per utterance, the time each keyword occurrence
ends, so that detection latency can be measured and a detection far from the spoken
keyword counts as a false alarm rather than a hit. Extra columns are ignored, so corpus
manifests with licence and source columns work as they are.

Matching is on whole words of a normalised transcript: "LIGHTS ON" does not contain
"LIGHT", and "don't" matches "DON'T" whatever its case or surrounding punctuation. That
is the rule a user would apply by ear, and it is what the model is asked to spot.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kwsd.errors import ExitCode, KwsdError

PATH_COLUMNS = ("relpath", "path", "audio", "file", "wav")
TEXT_COLUMNS = ("transcript", "text", "sentence")
TIMING_COLUMNS = ("word_end_s", "keyword_end_s", "word_end")

# Curly apostrophes and backticks are the same apostrophe for matching purposes.
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u02bc": "'"})
_NOT_WORD = re.compile(r"[^\w']+")


class ManifestError(KwsdError):
    """The manifest file is missing, unreadable or lacks a required column."""

    exit_code = ExitCode.USAGE


def normalize_words(text: str) -> tuple[str, ...]:
    """Upper-case words; apostrophes kept inside words, every other punctuation a break.

    "Hey, computer!" -> ("HEY", "COMPUTER"); "'Don't'" -> ("DON'T",); "on-off" -> ("ON", "OFF").
    Underscores count as breaks too, so a display name like LIGHT_UP reads as two words.
    """
    cleaned = _NOT_WORD.sub(" ", text.translate(_APOSTROPHES).upper().replace("_", " "))
    words = (w.strip("'") for w in cleaned.split())
    return tuple(w for w in words if w)


def count_phrase(words: Sequence[str], phrase: Sequence[str]) -> int:
    """Non-overlapping whole-word occurrences of `phrase` in `words`.

    Non-overlapping because a spotter resets after each detection: "HEY HEY HEY" holds
    "HEY HEY" once as far as any keyword search is concerned.
    """
    n = len(phrase)
    if n == 0:
        return 0
    count = 0
    i = 0
    target = tuple(phrase)
    while i + n <= len(words):
        if tuple(words[i : i + n]) == target:
            count += 1
            i += n
        else:
            i += 1
    return count


def parse_word_ends(text: str, where: str) -> dict[str, tuple[float, ...]]:
    """The `word_end_s` cell: "3.24", "3.24,7.5" or "LIGHT UP=3.24; HEY COMPUTER=1.9,8.0".

    A bare list (key "") applies to whichever keyword the utterance contains; named
    entries apply to that phrase only (normalised like transcripts).
    """
    result: dict[str, tuple[float, ...]] = {}
    text = text.strip()
    if not text:
        return result
    for raw in text.split(";"):
        part = raw.strip()
        if not part:
            continue
        name, sep, values = part.rpartition("=")
        key = " ".join(normalize_words(name)) if sep else ""
        try:
            times = tuple(sorted(float(v) for v in values.split(",") if v.strip()))
        except ValueError:
            raise ManifestError(
                f"{where}: word_end_s {text!r} is not a list of seconds; write e.g. "
                '"3.24", "3.24,7.5" or "LIGHT UP=3.24; HEY COMPUTER=1.9"'
            ) from None
        if any(t < 0 for t in times):
            raise ManifestError(f"{where}: word_end_s {text!r} has a negative time")
        result[key] = result.get(key, ()) + times
    return result


@dataclass(frozen=True, slots=True)
class Utterance:
    """One recording and what was said in it."""

    relpath: str  # as written in the manifest: the utterance's id in reports
    path: Path  # resolved audio file
    transcript: str
    words: tuple[str, ...]
    duration: float | None = None  # from the manifest, if it has `duration_s`
    word_ends: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def occurrences(self, phrase: str) -> int:
        return count_phrase(self.words, normalize_words(phrase))

    def ends_for(self, phrase: str) -> tuple[float, ...] | None:
        """Annotated end times of `phrase` here, or None when the manifest gives none."""
        key = " ".join(normalize_words(phrase))
        if key in self.word_ends:
            return self.word_ends[key]
        if "" in self.word_ends and self.occurrences(phrase) > 0:
            return self.word_ends[""]
        return None


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    utterances: tuple[Utterance, ...]

    def __len__(self) -> int:
        return len(self.utterances)


def _pick(header: Sequence[str], names: Iterable[str]) -> str | None:
    lowered = {h.strip().lower(): h for h in header}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def read_manifest(path: Path, *, limit: int | None = None, check_files: bool = True) -> Manifest:
    """Read and check a manifest; every problem names the file, line and fix."""
    path = Path(path).expanduser()
    try:
        text = path.read_text("utf-8-sig")
    except FileNotFoundError:
        raise ManifestError(f"manifest {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    rows = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise ManifestError(
            f"manifest {path} is empty; it needs a header row (relpath, transcript)"
        )
    header = rows[0]
    path_col = _pick(header, PATH_COLUMNS)
    text_col = _pick(header, TEXT_COLUMNS)
    if path_col is None or text_col is None:
        missing = "relpath" if path_col is None else "transcript"
        raise ManifestError(
            f"manifest {path} has no {missing!r} column (header: {', '.join(header)}); it must "
            "be tab-separated with a header row naming at least `relpath` and `transcript`"
        )
    duration_col = _pick(header, ("duration_s", "duration"))
    timing_col = _pick(header, TIMING_COLUMNS)
    index = {name: i for i, name in enumerate(header)}
    base = path.resolve().parent
    utterances: list[Utterance] = []
    missing_files: list[str] = []
    for line_no, row in enumerate(rows[1:], start=2):
        if limit is not None and len(utterances) >= limit:
            break
        where = f"{path}:{line_no}"

        def cell(name: str | None, row: list[str] = row) -> str:
            if name is None:
                return ""
            i = index[name]
            return row[i].strip() if i < len(row) else ""

        rel = cell(path_col)
        if not rel:
            raise ManifestError(f"{where}: the {path_col!r} cell is empty")
        audio = Path(rel).expanduser()
        audio = audio if audio.is_absolute() else base / audio
        if check_files and not audio.is_file():
            missing_files.append(rel)
        duration: float | None = None
        if cell(duration_col):
            try:
                duration = float(cell(duration_col))
            except ValueError:
                raise ManifestError(
                    f"{where}: duration {cell(duration_col)!r} is not a number of seconds"
                ) from None
        transcript = cell(text_col)
        utterances.append(
            Utterance(
                relpath=rel,
                path=audio,
                transcript=transcript,
                words=normalize_words(transcript),
                duration=duration,
                word_ends=parse_word_ends(cell(timing_col), where),
            )
        )
    if missing_files:
        shown = ", ".join(missing_files[:3]) + (" ..." if len(missing_files) > 3 else "")
        raise ManifestError(
            f"manifest {path}: {len(missing_files)} audio file(s) not found ({shown}); paths "
            f"are relative to the manifest's directory {base}"
        )
    if not utterances:
        raise ManifestError(f"manifest {path} lists no utterances")
    return Manifest(path=path, utterances=tuple(utterances))
