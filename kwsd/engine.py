"""The synchronous decoding core: audio → fbank → encoder → keyword search.

`Frontend` (features and encoder state) and `KeywordSearch` are separate so the
daemon can schedule them as separate pipeline stages; `KeywordStream` composes them,
behind the caller's own sample rate and sample format, for everything that just
wants detections from one stream (`kwsd detect`, `kwsd eval`, the Wyoming server,
the benchmarks, library users). Streams come from `KeywordSpotter.create_stream`.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from kwsd.audio.convert import StreamResampler
from kwsd.backends.base import Backend, FloatArray
from kwsd.backends.replay import check_frames
from kwsd.detection import Detection
from kwsd.errors import AudioError
from kwsd.features import SAMPLE_RATE, TAIL_PADDING_SECONDS, Chunker, FbankStream
from kwsd.keywords import KeywordSet
from kwsd.search import KeywordSearch
from kwsd.vad import GateItem, SpeechGate, VadOptions, search_items

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kwsd.spotter import KeywordsLike, KeywordSpotter

# A float block this loud (RMS) is not [-1, 1] audio but, almost always, int16 values
# converted to float without scaling: the model would hear only clipping.
_FLOAT_SCALE_LIMIT = 2.0


class Frontend:
    """Per-stream features and encoder state over a shared backend.

    `windows` and `encode` are the two halves of `accept`: `StreamBatch` cuts the
    windows of many streams and encodes them together, passing `state` in and out.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._fbank = FbankStream()
        self._chunker = Chunker(backend.chunk.frames_in, backend.chunk.frames_shift)
        self.state = backend.init_state()

    def accept(self, samples: FloatArray) -> list[FloatArray]:
        """Samples (float32, 16 kHz mono) → the encoder chunks [frames_out, dim] now ready."""
        return [self.encode(window) for window in self.windows(samples)]

    def flush(self) -> list[FloatArray]:
        """End of stream: pad with silence so the last words reach the encoder."""
        return [self.encode(window) for window in self.flush_windows()]

    def reset(self) -> None:
        self._fbank.reset()
        self._chunker.reset()
        self.state = self.backend.init_state()

    def windows(self, samples: FloatArray) -> list[FloatArray]:
        """The encoder input windows [frames_in, 80] that `samples` complete."""
        return self._chunker.push(self._fbank.accept(samples))

    def flush_windows(self) -> list[FloatArray]:
        """The last windows: the stream padded with silence, then the fbank finished."""
        tail = np.zeros(int(TAIL_PADDING_SECONDS * SAMPLE_RATE), np.float32)
        windows = self.windows(tail)
        return windows + self._chunker.push(self._fbank.finish())

    def encode(self, window: FloatArray) -> FloatArray:
        """One window through the encoder, carrying this stream's state."""
        enc, self.state = self.backend.run_chunk(window, self.state)
        return enc


class SampleInput:
    """The caller's samples → float32 mono at 16 kHz: format checks and resampling.

    Audio at `sample_rate` is resampled as it arrives (soxr, streaming, so block edges
    leave no clicks).
    """

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(
                f"sample_rate must be a positive whole number of Hz, not {sample_rate!r}"
            )
        self.sample_rate = sample_rate
        self._resampler = StreamResampler(sample_rate)
        self._warned_scale = False

    def convert(self, samples: npt.ArrayLike) -> FloatArray:
        """1-D int16 or float samples at `sample_rate` → float32 16 kHz (resampler delay kept)."""
        return self._resampler.process(self._mono_float32(samples))

    def flush(self) -> FloatArray:
        """End of input: what the resampler still holds."""
        return self._resampler.flush()

    def reset(self) -> None:
        self._resampler = StreamResampler(self.sample_rate)

    def _mono_float32(self, samples: npt.ArrayLike) -> FloatArray:
        data = np.asarray(samples)
        if data.ndim != 1:
            hint = (
                "; pick a channel (samples[:, 0]) or downmix (samples.mean(axis=1))"
                if data.ndim == 2
                else ""
            )
            raise AudioError(
                f"samples must be mono, a 1-D array; got an array of shape {data.shape}{hint}"
            )
        if data.dtype == np.int16:
            return data.astype(np.float32) / np.float32(32768.0)
        if data.dtype.kind != "f":
            raise AudioError(
                f"samples of type {data.dtype} are not audio kwsd can read: pass float32 in "
                "[-1, 1] or int16 (e.g. np.asarray(samples, np.int16) for 16-bit PCM)"
            )
        audio = data.astype(np.float32, copy=False)
        if audio.size:
            # One BLAS dot product checks every sample: several times cheaper than a peak.
            energy = float(np.dot(audio, audio))
            if not math.isfinite(energy):
                raise AudioError("samples contain NaN or infinity; pass finite audio")
            level = math.sqrt(energy / audio.size)  # RMS; at most 1 for audio in [-1, 1]
            if level > _FLOAT_SCALE_LIMIT and not self._warned_scale:
                self._warned_scale = True
                warnings.warn(
                    f"float samples are far outside [-1, 1] (RMS level {level:.0f}): divide "
                    "16-bit values by 32768, or pass the int16 array itself",
                    UserWarning,
                    stacklevel=4,  # the caller of KeywordStream.accept / BatchStream.accept
                )
        return audio


class StreamCore:
    """What every kind of stream holds: the caller's sample input (format checks and
    resampling), a `Frontend` and a `KeywordSearch`, and the keyword list controls.

    `KeywordStream` runs the two stages itself; `kwsd.batch.BatchStream` leaves them to
    its batch.
    """

    def __init__(
        self,
        spotter: KeywordSpotter,
        frontend: Frontend,
        search: KeywordSearch,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self._input = SampleInput(sample_rate)
        self.spotter = spotter
        self.frontend = frontend
        self.search = search
        self.sample_rate = sample_rate

    @property
    def keywords(self) -> KeywordSet:
        """The keyword list in effect (or about to be, after `set_keywords`)."""
        return self.search.latest_keywords

    def set_keywords(self, keywords: KeywordsLike) -> KeywordSet:
        """Spot `keywords` from the next encoder frame on; returns the compiled list.

        Accepts what `KeywordSpotter.compile` accepts. A bad keyword raises
        `KeywordError` and leaves the current list in place. Partial matches of the old
        list are dropped; audio and stream time carry on. Streams with equal lists share
        one compiled graph. May be called from any thread.
        """
        compiled = self.spotter.compile(keywords)
        self.search.set_keywords(compiled)
        return compiled

    def _restart(self) -> None:
        """Forget audio, partial matches and time (not the keyword list)."""
        self._input.reset()
        self.frontend.reset()
        self.search.reset()
        self.search.frame = 0


class KeywordStream(StreamCore):
    """One audio stream in, detections out. Create it with `KeywordSpotter.create_stream`.

        stream = spotter.create_stream(sample_rate=48000)
        for block in microphone_blocks:           # any size, int16 or float32 in [-1, 1]
            for det in stream.accept(block):
                print(det.keyword, det.start, det.score)
        leftovers = stream.finish()               # end of input: flush the last words

    Audio at `sample_rate` is resampled to the model's 16 kHz as it arrives (soxr,
    streaming, so block edges leave no clicks). Detection times are seconds since the
    stream started. `set_keywords` swaps the list between two encoder frames, without
    losing audio. A stream holds its own features, encoder state and search paths, so
    many streams of one spotter can run in parallel threads; feed each one from one
    thread at a time (`set_keywords` alone may come from any thread).

    `frontend` and `search` are the two stages inside, for callers that schedule them
    themselves (the daemon's pipeline feeds 16 kHz blocks to them directly). With
    `vad=VadOptions()` a voice-activity gate (`gate`, kwsd/vad.py) sits in front of the
    frontend: the encoder rests in silence, and detection times stay seconds since the
    stream started. `entry` is the stage the 16 kHz audio goes into, gate or frontend.
    """

    _finished = False  # finish() was called; reset() clears it

    def __init__(
        self,
        spotter: KeywordSpotter,
        frontend: Frontend,
        search: KeywordSearch,
        sample_rate: int = SAMPLE_RATE,
        *,
        vad: VadOptions | None = None,
    ) -> None:
        super().__init__(spotter, frontend, search, sample_rate)
        self.gate: SpeechGate | None = None
        if vad is not None:
            frame_samples = round(frontend.backend.chunk.frame_seconds * SAMPLE_RATE)
            self.gate = SpeechGate(frontend, vad, frame_samples=frame_samples)

    @property
    def entry(self) -> Frontend | SpeechGate:
        """Where the stream's 16 kHz audio goes in: the voice gate if any, else the frontend."""
        return self.gate if self.gate is not None else self.frontend

    def accept(self, samples: npt.ArrayLike) -> list[Detection]:
        """Feed mono samples at `sample_rate`; return the keywords completed by them.

        float32/float64 in [-1, 1] or int16, a 1-D array of any length (even 0).
        Detections come out a few hundred milliseconds after the keyword was spoken:
        the encoder works in 320 ms chunks and the search waits for a blank frame.
        """
        if self._finished:
            raise RuntimeError("this stream is finished; call reset() to reuse it")
        return self._search(self.entry.accept(self._input.convert(samples)))

    def finish(self) -> list[Detection]:
        """End of input: pad with silence and return what the last words complete.

        After `finish`, `accept` raises until `reset`. Calling `finish` twice returns
        nothing the second time.
        """
        if self._finished:
            return []
        self._finished = True
        tail = self._input.flush()
        chunks: list[GateItem] = [*self.entry.accept(tail)] if tail.size else []
        return self._search([*chunks, *self.entry.flush()])

    def reset(self) -> None:
        """Start over, as a new stream: audio, partial matches and time are forgotten.

        The keyword list stays (including one passed to `set_keywords` just before).
        """
        self._restart()
        if self.gate is not None:
            self.gate.reset()
        self._finished = False

    def accept_encoder_frames(self, frames: npt.ArrayLike) -> list[Detection]:
        """Search encoder output [T, joiner_dim] computed elsewhere (parity checks, tuning).

        Skips the audio front end: `kwsd decode-frames` feeds the reference encoder's
        output for a recording through the real search this way.
        """
        enc = np.asarray(frames, dtype=np.float32)
        check_frames(enc, self.search.backend.joiner_dim)
        return self.search.step(enc)

    def _search(self, chunks: Sequence[GateItem]) -> list[Detection]:
        return search_items(chunks, self.search)
