"""Warn when the input is exact digital silence for too long.

A real microphone never delivers exact zeros: even a quiet room gives a few LSB of
noise. Long runs of exactly 0.0 mean nothing reaches us. On macOS that is what a
process without microphone permission (TCC) gets, with no prompt and no error; on
Linux it is usually a muted capture control or the wrong device. Without this check
the daemon would look healthy and simply never detect anything.
"""

from __future__ import annotations

import sys

from kwsd.audio.base import SAMPLE_RATE, FloatArray
from kwsd.log import get_logger

log = get_logger(__name__)


def mic_silence_hint(platform: str | None = None) -> str:
    """The most likely cause of an all-zero microphone on this platform, and the fix."""
    plat = platform if platform is not None else sys.platform
    if plat == "darwin":
        return (
            "macOS gives all-zero audio to a process without microphone permission. Open "
            "System Settings → Privacy & Security → Microphone and allow the app that runs "
            f"kwsd (the terminal you start it from, or for the launchd service {sys.executable}), "
            "then restart kwsd. If it is not listed, run `kwsd run` once from Terminal to get "
            "the permission prompt."
        )
    if plat.startswith("linux"):
        return (
            "the capture device is probably muted or its gain is at 0: run `alsamixer`, press "
            "F6 to pick the card and F4 for capture controls, unmute with space and raise the "
            "level (or `amixer set Capture cap`). Otherwise the wrong device is selected: "
            "`kwsd devices` lists them, set audio.device."
        )
    return (
        "the input device is muted, has no permission to record, or the wrong device is "
        "selected (`kwsd devices` lists them, set audio.device)."
    )


class SilenceWatchdog:
    """Counts consecutive all-zero audio (in stream time) and warns once per episode.

    Measured in samples, not wall-clock time, so a file read faster than real time is
    judged by how much audio was silent, not by how long reading it took.
    """

    def __init__(self, threshold_seconds: float, source: str, hint: str) -> None:
        self.threshold_samples = int(threshold_seconds * SAMPLE_RATE)
        self.source = source
        self.hint = hint
        self.silent_samples = 0
        self.warned = False
        self.episodes = 0  # silence episodes warned about so far

    @property
    def enabled(self) -> bool:
        return self.threshold_samples > 0

    @property
    def silent(self) -> bool:
        """True while a warned-about silence episode is going on."""
        return self.warned

    def feed(self, samples: FloatArray) -> None:
        if not self.enabled or samples.size == 0:
            return
        if samples.any():
            if self.warned:
                log.info(
                    "audio_signal_back",
                    source=self.source,
                    silent_seconds=round(self.silent_samples / SAMPLE_RATE, 1),
                )
            self.silent_samples = 0
            self.warned = False
            return
        self.silent_samples += int(samples.size)
        if not self.warned and self.silent_samples >= self.threshold_samples:
            self.warned = True
            self.episodes += 1
            log.warning(
                "audio_digital_silence",
                source=self.source,
                silent_seconds=round(self.silent_samples / SAMPLE_RATE, 1),
                message=(
                    f"{self.source} has delivered only exact zeros for "
                    f"{self.silent_samples / SAMPLE_RATE:.0f} s: nothing is being recorded, "
                    "so no keyword can be detected. Likely cause: " + self.hint
                ),
            )

    def reset(self) -> None:
        """Forget the current run (e.g. after reopening the device)."""
        self.silent_samples = 0
