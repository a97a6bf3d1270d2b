"""The detection record: the one value that flows from the search to every publisher."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Detection:
    """One keyword match.

    Times are absolute stream seconds (since the audio source started), even across
    search resets, so a publisher can relate a detection to the audio it came from.
    """

    keyword: str  # display name, e.g. "LIGHT_UP"
    phrase: str  # the phrase as configured, e.g. "LIGHT UP"
    tokens: tuple[str, ...]  # BPE pieces that matched, e.g. ("▁", "L", "IGHT", "▁UP")
    start: float  # stream seconds of the first matched token
    end: float  # stream seconds of the last matched token
    score: float  # mean token probability of the matched tokens
    frame: int  # encoder frame index (40 ms units) at which it was emitted

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokens"] = list(self.tokens)
        return data
