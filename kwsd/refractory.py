"""Anti-retrigger: one utterance of a keyword must produce one event, not a burst.

The search resets after a match, so a long or repeated utterance ("hey computer...
computer") can match again a few frames later; automations that toggle a light would
then toggle it twice. Times are the detection's own stream seconds, so the filter is
exact and independent of how fast audio is decoded (a file decoded faster than real
time behaves like the microphone). The detection gate (kwsd/gate.py) applies it after
mute, so only published detections start a period.
"""

from __future__ import annotations

from kwsd.detection import Detection


class Refractory:
    """Allows a keyword again only `seconds` after its last allowed detection ended.

    Per keyword: "LIGHTS ON" right after "HEY COMPUTER" is a different command and is
    never suppressed. A detection that ends *before* the last allowed one means the
    stream restarted (a new file, a reopened device), so it is allowed and starts over.
    """

    def __init__(self, seconds: float = 1.0) -> None:
        if seconds < 0:
            raise ValueError(f"refractory seconds must be >= 0, got {seconds}")
        self.seconds = float(seconds)
        self._last_end: dict[str, float] = {}
        self.suppressed = 0  # detections dropped so far (for metrics and logs)

    def allow(self, det: Detection) -> bool:
        last = self._last_end.get(det.keyword)
        if last is not None and last <= det.end < last + self.seconds:
            self.suppressed += 1
            return False
        self._last_end[det.keyword] = det.end
        return True

    def reset(self) -> None:
        """Forget history, e.g. when a new audio stream starts."""
        self._last_end.clear()
