"""The keyword entry as users write it: in config.toml, a keywords file, or an MQTT command."""

from __future__ import annotations

import unicodedata

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_CONTROL_NAMES = {"\0": "NUL", "\t": "tab", "\n": "line feed", "\r": "carriage return"}


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


class KeywordSpec(BaseModel):
    """One keyword to spot.

    Either `phrase` (plain English, tokenised with the model's BPE) or `pieces` (explicit
    BPE pieces, as in a sherpa keyword file) must be given. `alternates` are extra piece
    sequences for the same keyword, which raise recall when the BPE splits a word in
    more than one plausible way (e.g. `▁LI GHT ▁UP` beside `▁ L IGHT ▁UP`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    phrase: str | None = None
    pieces: tuple[str, ...] | None = None
    boost: float | None = Field(default=None, ge=0.0, le=10.0)
    threshold: float | None = Field(default=None, gt=0.0, le=1.0)
    display: str | None = None
    alternates: tuple[tuple[str, ...], ...] = ()

    @field_validator("pieces", mode="before")
    @classmethod
    def _split_piece_string(cls, value: object) -> object:
        # "▁ L IGHT ▁UP" is the natural way to write pieces in TOML/JSON.
        return value.split() if isinstance(value, str) else value

    @field_validator("display")
    @classmethod
    def _printable_display(cls, value: str | None) -> str | None:
        problem = None if value is None else _control_character_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("alternates", mode="before")
    @classmethod
    def _split_alternates(cls, value: object) -> object:
        if isinstance(value, list | tuple):
            return [v.split() if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _needs_phrase_or_pieces(self) -> KeywordSpec:
        if not (self.phrase and self.phrase.strip()) and not self.pieces:
            raise ValueError('a keyword needs a non-empty `phrase` (e.g. "LIGHT UP") or `pieces`')
        return self
