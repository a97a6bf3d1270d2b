"""Turning user keyword entries into validated token sequences for the search.

Validation happens here, before anything reaches the running search, so a bad update
is refused with a message that says exactly what to change and the previous keyword
list stays active.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from kwsd.backends.base import ModelDefaults
from kwsd.errors import KeywordError
from kwsd.keywords.spec import KeywordSpec
from kwsd.keywords.tokenizer import Tokenizer

MAX_PIECES = 32
# The most keywords one list may hold (inline entries and the keywords file together,
# or one MQTT list). Compiling a list and building its search graph is pure Python
# and grows with it (about 1 s for 10,000 keywords, 30 s for 200,000); far below this,
# every extra keyword adds false alarms. A list above it is refused as a whole, and the
# running list stays active.
MAX_KEYWORDS: Final = 10_000
LOGGED_NAMES: Final = 20  # keyword names (or warnings) one log line shows


def check_keyword_count(count: int, what: str = "the keyword list") -> None:
    """Refuse a list above MAX_KEYWORDS, before the expensive work starts."""
    if count > MAX_KEYWORDS:
        raise KeywordError(
            f"{what} has {count:,} keywords, more than the limit of {MAX_KEYWORDS:,}; "
            "trim it to the phrases people actually say, or split it across several kwsd "
            "instances (one keywords file each)"
        )


@dataclass(frozen=True, slots=True)
class Keyword:
    """A compiled keyword: one display name, one or more token sequences."""

    display: str
    phrase: str
    pieces: tuple[str, ...]  # the primary tokenisation
    token_ids: tuple[tuple[int, ...], ...]  # primary first, then alternates
    sequences: tuple[tuple[str, ...], ...]  # the pieces of each token_ids entry
    boost: float
    threshold: float


@dataclass(frozen=True, slots=True)
class KeywordSet:
    """An immutable keyword list; swapping lists is replacing one reference."""

    keywords: tuple[Keyword, ...] = ()
    warnings: tuple[str, ...] = ()
    version: int = 0
    specs: tuple[KeywordSpec, ...] = field(default=(), compare=False)

    def __len__(self) -> int:
        return len(self.keywords)

    def displays(self) -> list[str]:
        return [k.display for k in self.keywords]

    def displays_for_log(self, limit: int = LOGGED_NAMES) -> list[str]:
        """The first `limit` display names, then how many more: a log line stays short."""
        return shorten(self.displays(), limit)


def shorten(items: Sequence[str], limit: int = LOGGED_NAMES) -> list[str]:
    """`items` for a log line: the first `limit`, then "... and N more"."""
    if len(items) <= limit:
        return list(items)
    return [*items[:limit], f"... and {len(items) - limit:,} more"]


def pieces_to_phrase(pieces: Sequence[str]) -> str:
    return "".join(pieces).replace("▁", " ").strip()


def compile_keywords(
    specs: Sequence[KeywordSpec],
    tokenizer: Tokenizer,
    defaults: ModelDefaults,
    *,
    boost: float | None = None,
    threshold: float | None = None,
    version: int = 0,
) -> KeywordSet:
    """Validate and tokenise. `boost`/`threshold` override the model defaults for
    entries that do not set their own. Raises KeywordError for a bad entry or for more
    than MAX_KEYWORDS entries."""
    check_keyword_count(len(specs))
    keywords: list[Keyword] = []
    warnings: list[str] = []
    seen: dict[tuple[int, ...], str] = {}
    for index, spec in enumerate(specs, 1):
        label = f"keyword {index} ({spec.display or spec.phrase or ' '.join(spec.pieces or ())!r})"
        sequences = _sequences(spec, tokenizer, label)
        primary_pieces = sequences[0]
        ids: list[tuple[int, ...]] = []
        kept: list[tuple[str, ...]] = []
        for pieces in sequences:
            token_ids = tuple(tokenizer.piece_to_id[p] for p in pieces)
            if token_ids in seen:
                warnings.append(
                    f"{label}: {' '.join(pieces)} duplicates {seen[token_ids]!r}; merged"
                )
                continue
            ids.append(token_ids)
            kept.append(pieces)
        if not ids:
            continue
        phrase = (spec.phrase or pieces_to_phrase(primary_pieces)).strip().upper()
        display = spec.display or phrase
        for token_ids in ids:
            seen[token_ids] = display
        warnings.extend(f"{label}: {w}" for w in _weakness(primary_pieces))
        keywords.append(
            Keyword(
                display=display,
                phrase=phrase,
                pieces=kept[0],
                token_ids=tuple(ids),
                sequences=tuple(kept),
                boost=spec.boost
                if spec.boost is not None
                else (boost if boost is not None else defaults.boost),
                threshold=spec.threshold
                if spec.threshold is not None
                else (threshold if threshold is not None else defaults.threshold),
            )
        )
    return KeywordSet(tuple(keywords), tuple(warnings), version, tuple(specs))


def _sequences(spec: KeywordSpec, tokenizer: Tokenizer, label: str) -> list[tuple[str, ...]]:
    if spec.pieces:
        primary = tuple(spec.pieces)
    else:
        phrase = (spec.phrase or "").strip()
        if not phrase:
            raise KeywordError(f'{label}: the phrase is empty; give words like "LIGHT UP"')
        text = " ".join(phrase.upper().split())
        bad = sorted({c for c in text if c != " " and c not in tokenizer.alphabet})
        if bad:
            raise KeywordError(
                f"{label}: characters {' '.join(repr(c) for c in bad)} are not in the model's "
                "vocabulary (English letters A–Z and apostrophes only); spell numbers and "
                'symbols as words, e.g. "TURN ON LIGHT TWO"'
            )
        primary = tuple(tokenizer.encode(text))
    sequences = [primary, *(tuple(a) for a in spec.alternates)]
    for pieces in sequences:
        missing = [p for p in pieces if p not in tokenizer.piece_to_id]
        if missing:
            raise KeywordError(
                f"{label}: piece {missing[0]!r} is not in the model's tokens.txt; check the "
                "spelling or give the phrase as plain words and let kwsd tokenise it "
                "(`kwsd keywords check PHRASE` shows the pieces)"
            )
        special = [p for p in pieces if p.startswith("<")]
        if special:
            raise KeywordError(f"{label}: special token {special[0]!r} cannot be part of a keyword")
        if len(pieces) > MAX_PIECES:
            raise KeywordError(
                f"{label}: {len(pieces)} BPE pieces is more than the limit of {MAX_PIECES}; "
                "use a shorter phrase (2–4 words spot best)"
            )
        if not pieces:
            raise KeywordError(f"{label}: no pieces")
    return sequences


def _weakness(pieces: tuple[str, ...]) -> list[str]:
    """Warn about keywords the model rarely locks onto, or that fire too easily.

    The rules are in docs/algorithm.md §4.
    """
    words = sum(1 for p in pieces if p.startswith("▁"))
    if len(pieces) == 1:
        return [
            f"single BPE piece {pieces[0]!r}: short keywords trigger often; "
            "prefer two or more words"
        ]
    if words <= 1 and len(pieces) >= 3:
        return [
            f"one word split into {len(pieces)} pieces ({' '.join(pieces)}): "
            "the model rarely locks onto these; add a second word or list alternates"
        ]
    return []
