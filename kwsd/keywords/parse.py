"""Reading keyword lists written as text: sherpa keyword-file lines or plain phrases."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from kwsd.errors import KeywordError
from kwsd.keywords.compile import check_keyword_count
from kwsd.keywords.spec import KEYWORD_FIELDS, KeywordSpec, KeywordSpecError

_OPTION = re.compile(r"^([:#@])(.*)$")
_ENTRIES_EXAMPLE: Final = '["LIGHT UP", {"phrase": "GOOD NIGHT", "threshold": 0.3}]'


def parse_keyword_line(line: str) -> KeywordSpec:
    """One line: `▁ L IGHT ▁UP :2.0 #0.25 @LIGHT_UP`, or a plain phrase `light up`.

    A line is taken as BPE pieces when it contains the word-start mark `▁`; otherwise
    it is an English phrase to be tokenised, which is what most users type.
    """
    words: list[str] = []
    boost: float | None = None
    threshold: float | None = None
    display: str | None = None
    for word in line.split():
        match = _OPTION.match(word)
        if match and match.group(2) and len(word) > 1:
            kind, value = match.groups()
            try:
                if kind == ":":
                    boost = float(value)
                elif kind == "#":
                    threshold = float(value)
                else:
                    display = value or None
            except ValueError:
                raise KeywordError(
                    f"keyword line {line!r}: {word!r} is not a number "
                    "(`:BOOST` and `#THRESHOLD` take numbers, e.g. `:2.0 #0.25`)"
                ) from None
            continue
        words.append(word)
    if not words:
        raise KeywordError(f"keyword line {line!r} has no phrase or pieces")
    text = " ".join(words)
    try:
        if "▁" in text:
            return KeywordSpec(
                pieces=tuple(words), boost=boost, threshold=threshold, display=display
            )
        return KeywordSpec(phrase=text, boost=boost, threshold=threshold, display=display)
    except KeywordSpecError as exc:
        raise KeywordError(f"keyword line {line!r}: {exc}") from None


def parse_keyword_lines(text: str) -> list[KeywordSpec]:
    """A keyword file: one keyword per line; blank lines and lines starting `# ` are skipped.

    The lines are counted before any is parsed, so a huge file is refused at once.
    """
    lines = [line for raw in text.splitlines() if _is_keyword_line(line := raw.strip())]
    check_keyword_count(len(lines))
    return [parse_keyword_line(line) for line in lines]


def _is_keyword_line(line: str) -> bool:
    return bool(line) and not line.startswith("# ") and line != "#"


def parse_keyword_entries(data: object) -> list[KeywordSpec]:
    """Structured entries (a JSON keywords file, a list in code): strings are phrases,
    objects are specs. An error names the entry by its position in the list."""
    if not isinstance(data, list | tuple):
        raise KeywordError(
            f"keyword entries must be a list such as {_ENTRIES_EXAMPLE}, not {type(data).__name__}"
        )
    check_keyword_count(len(data))
    specs = []
    for index, entry in enumerate(data):
        try:
            specs.append(parse_keyword_entry(entry))
        except KeywordSpecError as exc:
            raise KeywordError(f"invalid keyword entry [{index}]: {exc}") from None
    return specs


def parse_keyword_entry(entry: object) -> KeywordSpec:
    """One structured entry: a phrase, a mapping of KeywordSpec fields, or a KeywordSpec.

    Raises `KeywordSpecError` naming the field at fault.
    """
    if isinstance(entry, KeywordSpec):
        return entry
    if isinstance(entry, str):
        return KeywordSpec(phrase=entry)
    if isinstance(entry, Mapping):
        return KeywordSpec.from_mapping(entry)
    raise KeywordSpecError(
        f"a keyword entry is a phrase or an object with the fields {', '.join(KEYWORD_FIELDS)}, "
        f"not {entry!r:.60}"
    )


def load_keyword_file(path: Path) -> list[KeywordSpec]:
    """A keywords file: `.json` holds a list of entries, anything else is keyword lines."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeywordError(f"cannot read keywords file {path}: {exc}") from None
    try:
        if path.suffix.lower() == ".json":
            return parse_keyword_entries(_json(text))
        return parse_keyword_lines(text)
    except KeywordError as exc:
        raise KeywordError(f"{path}: {exc}") from None


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeywordError(f"not valid JSON: {exc}") from None
