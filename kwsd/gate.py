"""The detection gate: the one place that decides whether a detection is published.

Both users of the engine go through it: the daemon's pipeline (one gate for its audio
stream) and the Wyoming server (one gate per client stream, sharing the daemon's mute
when `mute.scope = "all"`).
The search reports every match; the gate applies two rules, in this order:

1. **Mute.** While any mute reason is active (kwsd/mute.py), the detection is dropped.
2. **Refractory.** A repeat of the same keyword within `refractory_seconds` of its last
   *published* detection is dropped (kwsd/refractory.py).

Why mute comes first, so that a muted detection never starts a refractory period: the
period exists to turn one utterance into one event, and a muted detection produced no
event. If it counted, a user who says the keyword right after unmuting (or right after
the TTS that caused the mute ends) would be ignored for up to `refractory_seconds`;
worse, the speaker saying the keyword while muted, which is exactly what mute is for,
would then suppress the user's real command that follows. The other order's only
benefit, swallowing the tail of one long utterance that straddles the unmute instant,
is worth less than a deaf second after every unmute.

The gate runs on the event loop (MuteState lives there); it is a dict lookup and a
set test, so calling it per detection costs nothing next to the search.
"""

from __future__ import annotations

from enum import Enum

from kwsd.detection import Detection
from kwsd.mute import MuteState
from kwsd.refractory import Refractory


class Verdict(Enum):
    """What the gate decided for one detection."""

    PUBLISH = "publish"
    MUTED = "muted"  # dropped: a mute reason is active
    REPEAT = "repeat"  # dropped: same keyword within the refractory period


class DetectionGate:
    """Mute, then refractory, for one audio stream.

    `mute` may be shared by several streams (one pause silences all of them); without
    one, nothing is ever muted. The refractory history is this stream's own.
    """

    def __init__(self, mute: MuteState | None = None, refractory_seconds: float = 1.0) -> None:
        self.mute = mute
        self.refractory = Refractory(refractory_seconds)

    @property
    def refractory_seconds(self) -> float:
        return self.refractory.seconds

    @refractory_seconds.setter
    def refractory_seconds(self, seconds: float) -> None:
        """Changes the window for later detections (a reload); the history stays."""
        if seconds < 0:
            raise ValueError(f"refractory seconds must be >= 0, got {seconds}")
        self.refractory.seconds = float(seconds)

    def check(self, det: Detection) -> Verdict:
        if self.mute is not None and self.mute.muted:
            return Verdict.MUTED
        if not self.refractory.allow(det):
            return Verdict.REPEAT
        return Verdict.PUBLISH

    def reset(self) -> None:
        """Forget the refractory history, e.g. when a new audio stream starts."""
        self.refractory.reset()
