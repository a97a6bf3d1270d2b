"""The keyword entry as users write it: in config.toml, a keywords file, or an MQTT command.

A plain frozen dataclass checked in `__post_init__`, not a pydantic model: a program that
only spots keywords (`KeywordSpotter`) builds these, and pydantic would cost it about
14 MiB of resident memory for nothing. Every way a keyword comes in (the library, a
keywords file, an MQTT command, `[[keywords.entries]]` in config.toml through
`KeywordSpec.from_mapping`) is checked here, once, with the same words.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from kwsd.errors import KeywordError

_CONTROL_NAMES = {"\0": "NUL", "\t": "tab", "\n": "line feed", "\r": "carriage return"}
_PIECES_EXAMPLE: Final = '"▁ L IGHT ▁UP"'


class KeywordSpecError(KeywordError, ValueError):
    """A keyword entry that cannot be a `KeywordSpec`.

    `field` names the offending field (None: the entry as a whole), `value` is what it
    held, `unknown` lists keys that are no field. The config reads them to point at the
    exact key (`keywords.entries[0].threshold`) as it does for every other setting. A
    ValueError as well, so that pydantic reports it as a validation error of the config
    and code that caught the old pydantic error keeps working.
    """

    def __init__(
        self,
        reason: str,
        *,
        field: str | None = None,
        value: object = None,
        unknown: tuple[str, ...] = (),
    ) -> None:
        super().__init__(f"`{field}`: {reason}" if field else reason)
        self.reason = reason
        self.field = field
        self.value = value
        self.unknown = unknown


def _control_character_problem(text: str) -> str | None:
    """Why `text` cannot be a display name, or None.

    A display name travels into MQTT topics (Hermes `hermes/hotword/<id>/detected`),
    Home Assistant event types and trigger names, JSON and log lines. A control
    character breaks or garbles every one of them (a NUL is not allowed in an MQTT
    topic at all), so it is refused when the keyword is defined, not at every detection.
    """
    for position, char in enumerate(text, 1):
        if unicodedata.category(char) == "Cc":
            name = _CONTROL_NAMES.get(char, f"U+{ord(char):04X}")
            return (
                f"display name {text!r} contains a control character ({name} at position "
                f"{position}); use letters, digits, spaces and punctuation"
            )
    return None


@dataclass(frozen=True, slots=True)
class KeywordSpec:
    """One keyword to spot.

    Either `phrase` (plain English, tokenised with the model's BPE) or `pieces` (explicit
    BPE pieces, as in a sherpa keyword file) must be given. `alternates` are extra piece
    sequences for the same keyword, which raise recall when the BPE splits a word in
    more than one plausible way (e.g. `▁LI GHT ▁UP` beside `▁ L IGHT ▁UP`).

    `boost` (0 to 10) and `threshold` (above 0, at most 1) override the model's defaults.
    Pieces may be given as one string (`"▁ L IGHT ▁UP"`, the natural way in TOML/JSON)
    or a list; they are stored as tuples, so equal keywords compare and hash equal.
    A bad value raises `KeywordSpecError` (a `KeywordError` and a `ValueError`).
    """

    phrase: str | None = None
    pieces: tuple[str, ...] | None = None
    boost: float | None = None
    threshold: float | None = None
    display: str | None = None
    alternates: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        pieces = self.pieces
        normalised = {
            "phrase": _text("phrase", self.phrase),
            "pieces": None if pieces is None else _piece_sequence("pieces", pieces),
            "boost": _number("boost", self.boost, above_zero=False, high=10.0),
            "threshold": _number("threshold", self.threshold, above_zero=True, high=1.0),
            "display": _display(self.display),
            "alternates": _alternates(self.alternates),
        }
        for name, value in normalised.items():
            object.__setattr__(self, name, value)  # frozen: normalised once, here
        if not (self.phrase and self.phrase.strip()) and not self.pieces:
            raise KeywordSpecError(
                'a keyword needs a non-empty `phrase` (e.g. "LIGHT UP") or `pieces`'
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> KeywordSpec:
        """An entry as written in config.toml, JSON or an MQTT command; unknown keys are refused."""
        unknown = tuple(sorted(str(key) for key in data if key not in KEYWORD_FIELDS))
        if unknown:
            raise KeywordSpecError(_unknown_fields_text(unknown), unknown=unknown)
        fields: dict[str, Any] = dict(data)
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """The entry as a user would write it: the fields that differ from their defaults.

        Plain JSON/TOML data (pieces as lists), which `from_mapping` reads back.
        """
        data: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value != field.default:
                data[field.name] = _plain(value)
        return data


KEYWORD_FIELDS: Final = tuple(field.name for field in dataclasses.fields(KeywordSpec))


def _unknown_fields_text(unknown: tuple[str, ...]) -> str:
    import difflib  # only on this error path

    names = ", ".join(f"`{key}`" for key in unknown)
    close = difflib.get_close_matches(unknown[0], KEYWORD_FIELDS, n=1)
    hint = f"; did you mean `{close[0]}`?" if close else ""
    plural = "s" if len(unknown) > 1 else ""
    return f"unknown field{plural} {names}{hint} (allowed: {', '.join(KEYWORD_FIELDS)})"


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(name: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise KeywordSpecError(f"must be text, not {_show(value)}", field=name, value=value)


def _display(value: object) -> str | None:
    text = _text("display", value)
    problem = None if text is None else _control_character_problem(text)
    if problem is not None:
        raise KeywordSpecError(problem, field="display", value=value)
    return text


def _number(name: str, value: object, *, above_zero: bool, high: float) -> float | None:
    """A number in range; numeric strings ("0.3") count, as they did in earlier versions."""
    if value is None:
        return None
    rule = f"above 0 and at most {high:g}" if above_zero else f"from 0 to {high:g}"
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None:
        raise KeywordSpecError(
            f"must be a number {rule}, not {_show(value)}", field=name, value=value
        )
    in_range = (number > 0.0 if above_zero else number >= 0.0) and number <= high  # NaN: False
    if not in_range:
        raise KeywordSpecError(f"must be {rule}, not {_show(value)}", field=name, value=value)
    return number


def _piece_sequence(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list | tuple) and all(isinstance(piece, str) for piece in value):
        return tuple(value)
    raise KeywordSpecError(
        f"must be BPE pieces, as one string separated by spaces ({_PIECES_EXAMPLE}) or a list "
        f"of strings, not {_show(value)}",
        field=name,
        value=value,
    )


def _alternates(value: object) -> tuple[tuple[str, ...], ...]:
    if not isinstance(value, list | tuple):
        raise KeywordSpecError(
            f"must be a list of piece sequences such as [{_PIECES_EXAMPLE}], not {_show(value)}",
            field="alternates",
            value=value,
        )
    return tuple(_piece_sequence("alternates", item) for item in value)


def _plain(value: object) -> object:
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value
