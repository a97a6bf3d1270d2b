"""The synchronous decoding core: audio → fbank → encoder → keyword search.

`Frontend` and `KeywordSearch` are separate so the daemon can run them as separate
pipeline stages; `Spotter` composes them for everything that just wants detections
from one stream (`kwsd detect`, `kwsd eval`, the Wyoming server, the benchmarks).
"""

from __future__ import annotations

import numpy as np

from kwsd.backends.base import Backend, FloatArray
from kwsd.detection import Detection
from kwsd.features import SAMPLE_RATE, TAIL_PADDING_SECONDS, Chunker, FbankStream
from kwsd.keywords import KeywordSet
from kwsd.search import KeywordSearch, SearchOptions


class Frontend:
    """Per-stream features and encoder state over a shared backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._fbank = FbankStream()
        self._chunker = Chunker(backend.chunk.frames_in, backend.chunk.frames_shift)
        self._state = backend.init_state()

    def accept(self, samples: FloatArray) -> list[FloatArray]:
        """Samples (float32, 16 kHz mono) → the encoder chunks [frames_out, dim] now ready."""
        return self._encode(self._fbank.accept(samples))

    def flush(self) -> list[FloatArray]:
        """End of stream: pad with silence so the last words reach the encoder."""
        tail = np.zeros(int(TAIL_PADDING_SECONDS * SAMPLE_RATE), np.float32)
        chunks = self._encode(self._fbank.accept(tail))
        return chunks + self._encode(self._fbank.finish())

    def reset(self) -> None:
        self._fbank.reset()
        self._chunker.reset()
        self._state = self.backend.init_state()

    def _encode(self, frames: FloatArray) -> list[FloatArray]:
        out = []
        for feats in self._chunker.push(frames):
            enc, self._state = self.backend.run_chunk(feats, self._state)
            out.append(enc)
        return out


class Spotter:
    """One audio stream in, detections out."""

    def __init__(self, backend: Backend, keywords: KeywordSet, options: SearchOptions) -> None:
        self.frontend = Frontend(backend)
        self.search = KeywordSearch(backend, keywords, options)

    def accept_waveform(self, samples: FloatArray) -> list[Detection]:
        return self._search(self.frontend.accept(samples))

    def finish(self) -> list[Detection]:
        return self._search(self.frontend.flush())

    def set_keywords(self, keywords: KeywordSet) -> None:
        self.search.set_keywords(keywords)

    def _search(self, chunks: list[FloatArray]) -> list[Detection]:
        detections: list[Detection] = []
        for enc in chunks:
            detections.extend(self.search.step(enc))
        return detections
