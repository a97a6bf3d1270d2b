"""Replaying precomputed encoder frames through a real decoder/joiner.

It exists for parity checks (`kwsd decode-frames`) and tests: the real encoder output
for a real recording (the light_up fixture) drives the real search and daemon, which
is the closest this project gets to real human speech without the real encoder.

Two ways to replay:

- `ReplayBackend` hands out the frames in order, one block per encoder call. Enough
  for kwsd alone, which keeps its encoder state for the whole stream.
- `ReplayTable` + `ContentReplayBackend` key each block by the *content* of the
  feature chunk it belongs to (a fixed random projection of the 45×80 fbank window,
  matched to the nearest recorded chunk). That is what a peer decoder needs:
  sherpa-onnx zeroes the encoder state, `processed_lens` included, after every
  detection, so a replay keyed by position would start the recording over. The test
  suite turns the same table into an ONNX encoder with the real export's signature
  (tests/replay_encoder.py), so kwsd and sherpa-onnx replay identical frames for
  identical audio; `kwsd decode-frames FRAMES.bin --audio REC.wav` runs kwsd's side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kwsd.backends.base import Backend, DelegatingBackend, EncoderState, FloatArray
from kwsd.errors import ModelError
from kwsd.features import NUM_MEL_BINS

# The content key of a feature chunk: its projection on KEY_DIM fixed random directions.
# Both sides of a parity check must use the same directions, hence a fixed seed.
KEY_DIM = 32
KEY_SEED = 20240101
# Two chunks whose keys differ by less than this (root mean square over the key, in
# log-mel units) are the same chunk. Feature extractors built on the same
# kaldi-native-fbank agree within ~1e-4; distinct 0.45 s windows of audio differ by
# whole units (their log energies differ), so the match is not a near thing.
SAME_CHUNK_RMS = 0.05


def read_frames(path: Path) -> FloatArray:
    """The fixture format: int32 T, int32 D, then T*D float32, all little-endian."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read encoder frames {path}: {exc}") from None
    if len(raw) < 8:
        raise ModelError(f"{path} is too short to be an encoder-frames file")
    t, d = (int(v) for v in np.frombuffer(raw[:8], dtype="<i4"))
    if t <= 0 or d <= 0 or len(raw) != 8 + 4 * t * d:
        raise ModelError(
            f"{path}: header says {t}x{d} frames but the file has {len(raw) - 8} data bytes "
            "(expected int32 T, int32 D, then T*D float32 little-endian)"
        )
    return np.frombuffer(raw[8:], dtype="<f4").reshape(t, d).astype(np.float32)


def write_frames(path: Path, frames: FloatArray) -> None:
    """Write encoder frames [T, D] in the format `read_frames` reads."""
    t, d = frames.shape
    path.write_bytes(
        np.array([t, d], dtype="<i4").tobytes() + np.asarray(frames, dtype="<f4").tobytes()
    )


def check_frames(frames: FloatArray, joiner_dim: int) -> None:
    """Raise ModelError unless `frames` is encoder output [T, joiner_dim] for this model."""
    if frames.ndim != 2 or frames.shape[1] != joiner_dim:
        raise ModelError(
            f"encoder frames have shape {frames.shape}; this model's joiner expects "
            f"[T, {joiner_dim}]"
        )


class ReplayBackend(DelegatingBackend):
    """Encoder chunks come from `frames`; decode/join go to the real `inner` backend."""

    def __init__(self, inner: Backend, frames: FloatArray) -> None:
        check_frames(frames, inner.joiner_dim)
        super().__init__(inner)
        self.name = "replay"
        self.frames = frames

    def init_state(self) -> EncoderState:
        return {"position": 0}

    def run_chunk(self, feats: FloatArray, state: EncoderState) -> tuple[FloatArray, EncoderState]:
        """The next frames_out replayed frames; none once the recording is exhausted."""
        start = int(state["position"])
        end = start + self.chunk.frames_out
        return self.frames[start:end], {"position": end}


def key_projection(frames_in: int, mel_bins: int = NUM_MEL_BINS) -> FloatArray:
    """The fixed directions a feature chunk [frames_in, mel_bins] is projected on.

    Scaled by 1/sqrt(n) so a key moves by about as much as the features do.
    """
    n = frames_in * mel_bins
    rng = np.random.default_rng(KEY_SEED)
    projection: FloatArray = (rng.standard_normal((n, KEY_DIM)) / np.sqrt(n)).astype(np.float32)
    return projection


def chunk_key(projection: FloatArray, feats: FloatArray) -> FloatArray:
    """The content key of one feature chunk [frames_in, mel_bins]."""
    key: FloatArray = np.asarray(feats, np.float32).reshape(-1) @ projection
    return key


@dataclass(frozen=True, eq=False)
class ReplayTable:
    """Encoder output blocks keyed by the feature chunk that produced them.

    `lookup` answers the block of the recorded chunk nearest to a chunk (within
    `SAME_CHUNK_RMS`); a chunk the recording does not cover (e.g. more tail padding
    than the recording had) gets `fallback`, the block of the recording's quietest
    chunk: what an encoder makes of near-silence.
    """

    projection: FloatArray  # [frames_in * mel_bins, KEY_DIM]
    keys: FloatArray  # [M, KEY_DIM]
    blocks: FloatArray  # [M, frames_out, joiner_dim]
    fallback: FloatArray  # [frames_out, joiner_dim]

    @property
    def max_distance(self) -> float:
        """Largest squared key distance that still counts as the same chunk."""
        return SAME_CHUNK_RMS**2 * KEY_DIM

    @classmethod
    def from_pairs(cls, chunks: Sequence[FloatArray], blocks: Sequence[FloatArray]) -> ReplayTable:
        """Pair feature chunk k with encoder block k. A chunk equal to an earlier one
        (silence, repeated padding) keeps the earlier block, so the nearest key is
        never a tie between two entries."""
        if not chunks or len(chunks) != len(blocks):
            raise ModelError(
                f"a replay table needs one encoder block per feature chunk, got "
                f"{len(chunks)} chunks and {len(blocks)} blocks"
            )
        frames_in, mel_bins = chunks[0].shape
        projection = key_projection(frames_in, mel_bins)
        limit = SAME_CHUNK_RMS**2 * KEY_DIM
        keys: list[FloatArray] = []
        kept: list[FloatArray] = []
        energy: list[float] = []
        for feats, block in zip(chunks, blocks, strict=True):
            key = chunk_key(projection, feats)
            if keys and float(np.min(((np.stack(keys) - key) ** 2).sum(axis=1))) <= limit:
                continue
            keys.append(key)
            kept.append(np.asarray(block, np.float32))
            energy.append(float(np.mean(feats)))
        return cls(
            projection,
            np.stack(keys).astype(np.float32),
            np.stack(kept).astype(np.float32),
            kept[int(np.argmin(energy))],
        )

    @classmethod
    def record(cls, backend: Backend, audio: FloatArray) -> ReplayTable:
        """Run `backend`'s encoder over a whole recording (16 kHz float32), cut exactly
        as a stream cuts it (tail padding included), and key every block by its chunk."""
        recorder = _ChunkRecorder.run(backend, audio)
        if not recorder.blocks:
            raise ModelError(
                f"no encoder output to replay: the recording ({audio.size / 16000:.2f} s) is "
                "shorter than one encoder chunk"
            )
        return cls.from_pairs(recorder.chunks[: len(recorder.blocks)], recorder.blocks)

    @classmethod
    def from_recording(cls, inner: Backend, frames: FloatArray, audio: FloatArray) -> ReplayTable:
        """Recorded encoder frames [T, D] of `audio`, keyed by the audio's chunks: what
        `kwsd decode-frames FRAMES --audio REC` and the parity tests replay."""
        replay = ReplayBackend(inner, frames)
        recorder = _ChunkRecorder.run(replay, audio)
        covered = len(recorder.blocks) * replay.chunk.frames_out
        if covered < len(frames):
            raise ModelError(
                f"the recording ({audio.size / 16000:.2f} s) has {len(recorder.chunks)} encoder "
                f"chunks, too few for {len(frames)} frames "
                f"({replay.chunk.frames_out} per chunk): were the frames computed from "
                "another recording?"
            )
        return cls.from_pairs(recorder.chunks[: len(recorder.blocks)], recorder.blocks)

    def distances(self, feats: FloatArray) -> FloatArray:
        """Squared key distance from a chunk to every recorded chunk."""
        result: FloatArray = ((self.keys - chunk_key(self.projection, feats)) ** 2).sum(axis=1)
        return result

    def index(self, feats: FloatArray) -> int | None:
        """The recorded chunk `feats` is (None: not in the recording)."""
        d = self.distances(feats)
        best = int(np.argmin(d))
        return best if float(d[best]) <= self.max_distance else None

    def lookup(self, feats: FloatArray) -> FloatArray:
        """The encoder block replayed for a feature chunk."""
        i = self.index(feats)
        return self.fallback if i is None else self.blocks[i]


class _ChunkRecorder(DelegatingBackend):
    """Keeps every feature chunk the front end cuts, and every non-empty block."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.chunks: list[FloatArray] = []
        self.blocks: list[FloatArray] = []

    @classmethod
    def run(cls, inner: Backend, audio: FloatArray) -> _ChunkRecorder:
        """Feed a whole recording through a stream's front end over `inner`."""
        from kwsd.engine import Frontend  # kwsd.engine imports this module

        recorder = cls(inner)
        frontend = Frontend(recorder)
        frontend.accept(audio)
        frontend.flush()
        return recorder

    def run_chunk(self, feats: FloatArray, state: EncoderState) -> tuple[FloatArray, EncoderState]:
        enc, state = self.inner.run_chunk(feats, state)
        self.chunks.append(np.array(feats, np.float32))
        if len(enc):
            if len(enc) != self.chunk.frames_out:
                raise ModelError(
                    f"the recorded frames end inside a chunk ({len(enc)} of "
                    f"{self.chunk.frames_out} frames): a recording's frames come in whole chunks"
                )
            self.blocks.append(np.array(enc, np.float32))
        return enc, state


class ContentReplayBackend(DelegatingBackend):
    """An encoder that answers each feature chunk with the recorded block for it.

    Stateless, like the ONNX replay encoder the parity tests give sherpa-onnx: what it
    returns depends on the audio only, never on how often the stream was reset.
    """

    def __init__(self, inner: Backend, table: ReplayTable) -> None:
        check_frames(table.fallback, inner.joiner_dim)
        super().__init__(inner)
        self.name = "replay"
        self.table = table

    def init_state(self) -> EncoderState:
        return {}

    def run_chunk(self, feats: FloatArray, state: EncoderState) -> tuple[FloatArray, EncoderState]:
        return self.table.lookup(feats), state
