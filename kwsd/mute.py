"""Global mute: spotting is suppressed while at least one reason to be quiet is active.

Several independent parties can ask for silence at the same time: the user through
MQTT `cmd/pause`, Rhasspy's dialogue manager through `hermes/hotword/toggleOff` (once
per reason, e.g. `ttsSay` and `playAudio` overlapping), and a media player through
`mute.mute_while_topic`. Each reason is released on its own, so the end of TTS does
not unmute while music is still playing. A reason is a (source, name) pair so that a
Hermes reason never cancels an MQTT pause of the same name.

Plain state with listeners, no I/O: the detection gate (kwsd/gate.py) reads it, and
the integrations that set it (kwsd/integrations/) bring their own transport.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import structlog

log = structlog.get_logger("kwsd.mute")

PAUSE: Final = "pause"  # source of pause commands (MQTT, Home Assistant, the registry API)
HERMES: Final = "hermes"
TOPIC: Final = "topic"

Reason = tuple[str, str]
MuteListener = Callable[["MuteState"], None]


class MuteState:
    """The set of active mute reasons; muted while it is not empty.

    Lives on the event loop. Listeners are called after every change (not for no-op
    calls), e.g. to publish the pause switch state to Home Assistant.
    """

    def __init__(self) -> None:
        self._reasons: set[Reason] = set()
        self._listeners: list[MuteListener] = []

    @property
    def muted(self) -> bool:
        return bool(self._reasons)

    @property
    def paused(self) -> bool:
        """Muted by a pause command (what the Home Assistant switch shows)."""
        return any(source == PAUSE for source, _ in self._reasons)

    @property
    def reasons(self) -> frozenset[Reason]:
        return frozenset(self._reasons)

    def add_listener(self, listener: MuteListener) -> None:
        self._listeners.append(listener)

    def add(self, source: str, reason: str = "") -> None:
        self._change(lambda: self._reasons.add((source, reason)))

    def remove(self, source: str, reason: str = "") -> None:
        self._change(lambda: self._reasons.discard((source, reason)))

    def clear(self, source: str | None = None) -> None:
        """Drop every reason of `source` (all sources when None)."""

        def drop() -> None:
            if source is None:
                self._reasons.clear()
            else:
                self._reasons.difference_update({r for r in self._reasons if r[0] == source})

        self._change(drop)

    def pause(self, reason: str | None = None) -> None:
        """`cmd/pause`: pause for `reason` (or a plain, anonymous pause)."""
        self.add(PAUSE, reason or "")

    def resume(self, reason: str | None = None) -> None:
        """`cmd/resume`: end the pause for `reason`; without one, end every pause."""
        if reason:
            self.remove(PAUSE, reason)
        else:
            self.clear(PAUSE)

    def _change(self, action: Callable[[], None]) -> None:
        before = frozenset(self._reasons)
        action()
        if before == self._reasons:
            return
        log.info(
            "muted" if self._reasons else "unmuted",
            reasons=sorted(f"{s}:{r}" if r else s for s, r in self._reasons),
        )
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:
                log.exception("mute listener failed")
