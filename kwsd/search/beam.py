"""Keyword beam search over encoder frames (docs/algorithm.md §5), in numpy.

Per encoder frame the search asks the decoder for every distinct 2-token context
(cached: contexts repeat constantly), the joiner for token probabilities, keeps the
`beam` best extensions biased by the context graph, and emits a detection when the
best path has completed a keyword, has been followed by enough blanks, and its tokens
were confidently recognised (mean probability ≥ threshold).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kwsd.backends.base import Backend, FloatArray
from kwsd.detection import Detection
from kwsd.keywords import KeywordSet
from kwsd.search.graph import ContextGraph, Node
from kwsd.search.shared import DecoderCache, build_graph

UNK_ID = 2
# Encoder frames repeated per path in one go by `KeywordSearch.step` (a chunk has 8).
_REPEAT_FRAMES = 16

GraphSource = Callable[[KeywordSet], ContextGraph]


@dataclass(frozen=True, slots=True)
class SearchOptions:
    """Search knobs; None means "the model's default" (`ModelDefaults`).

    `threshold` and `boost` are the defaults for keywords that do not set their own
    (`#0.3` / `:2.0` in a keyword line); they apply when a keyword list is compiled.
    """

    beam: int = 4  # paths kept per frame (sherpa-onnx: max_active_paths)
    num_trailing_blanks: int | None = None  # blank frames after a keyword before it fires
    auto_reset_seconds: float | None = None  # silence after which partial matches are dropped
    threshold: float | None = None  # mean token probability a keyword needs, 0 < t <= 1
    boost: float | None = None  # bonus per matched keyword token, 0..10
    # Score a detection as sherpa-onnx does: the mean probability of the first `level`
    # tokens of the path, which include the tokens of a failed partial match that led
    # into the keyword (docs/algorithm.md §5). For parity checks with the peer only:
    # kwsd's own score is the mean over the keyword's tokens.
    peer_score: bool = False

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"beam must be at least 1, not {self.beam}")
        if self.num_trailing_blanks is not None and self.num_trailing_blanks < 0:
            raise ValueError("num_trailing_blanks must not be negative")
        if self.auto_reset_seconds is not None and self.auto_reset_seconds <= 0:
            raise ValueError("auto_reset_seconds must be above 0")
        if self.threshold is not None and not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is outside 0 < threshold <= 1")
        if self.boost is not None and not 0.0 <= self.boost <= 10.0:
            raise ValueError(f"boost {self.boost} is outside 0..10")


@dataclass(slots=True)
class _Hyp:
    ys: tuple[int, ...]
    log_prob: float
    state: Node
    times: tuple[int, ...] = ()
    probs: tuple[float, ...] = ()
    trailing_blanks: int = 0


def _log_prob(hyp: _Hyp) -> float:
    return hyp.log_prob


def log_softmax(logits: FloatArray) -> FloatArray:
    """Row-wise log-softmax of joiner logits [rows, vocab].

    Rows are independent: a row gets the same values alone or among other streams' rows.
    """
    # The ufuncs' own reductions, and the subtraction in place: the same arithmetic as
    # `logits.max` / `.sum` and a new array, with fewer Python-level calls per frame.
    shifted: FloatArray = logits - np.maximum.reduce(logits, axis=1, keepdims=True)
    shifted -= np.log(np.add.reduce(np.exp(shifted), axis=1, keepdims=True))
    return shifted


def _log_add(a: float, b: float) -> float:
    hi, lo = (a, b) if a > b else (b, a)
    return hi + math.log1p(math.exp(lo - hi))


class KeywordSearch:
    """One stream's search state.

    The backend, the keyword set, its graph (`graphs` builds or looks one up) and the
    decoder cache may all be shared with other streams: `KeywordSpotter` passes its
    own `GraphCache` and `DecoderCache`. Alone, a search builds and caches its own.
    """

    def __init__(
        self,
        backend: Backend,
        keywords: KeywordSet,
        options: SearchOptions,
        *,
        graphs: GraphSource = build_graph,
        decoder: DecoderCache | None = None,
    ) -> None:
        self.backend = backend
        self.options = options
        defaults = backend.defaults
        self.num_trailing_blanks = (
            options.num_trailing_blanks
            if options.num_trailing_blanks is not None
            else defaults.num_trailing_blanks
        )
        reset_s = (
            options.auto_reset_seconds
            if options.auto_reset_seconds is not None
            else defaults.auto_reset_seconds
        )
        self._frame_s = backend.chunk.frame_seconds
        # Reset once the blanks last *longer* than reset_s: 1.5 s is 37.5 frames, so the
        # 38th blank frame resets (as the reference decoder does); the small epsilon keeps
        # an exact multiple (1.48 s = 37 frames) from rounding down to one frame less.
        self._reset_frames = max(1, math.floor(reset_s / self._frame_s + 1e-9))
        self._blank = backend.blank_id
        self._context = backend.context_size
        # The decoder context of a path with no tokens yet: "none" padding, then blank.
        self._empty_ys = (-1,) * (self._context - 1) + (self._blank,)
        self.decoder = decoder if decoder is not None else DecoderCache(backend)
        self._graphs = graphs
        self.frame = 0  # absolute encoder frame index of the next frame
        self.keywords, self.graph = keywords, graphs(keywords)
        self._pending: tuple[KeywordSet, ContextGraph] | None = None
        self._last_rows: tuple[list[tuple[int, ...]], FloatArray] | None = None
        self.reset()

    # -- keyword list -------------------------------------------------------------
    def set_keywords(self, keywords: KeywordSet) -> None:
        """Swap the keyword list; callers on other threads get it at the next frame."""
        self._pending = (keywords, self._graphs(keywords))

    @property
    def latest_keywords(self) -> KeywordSet:
        """The list in effect at the next frame: a pending `set_keywords` included."""
        pending = self._pending
        return pending[0] if pending is not None else self.keywords

    @property
    def trailing_blanks(self) -> int:
        """Frames since the best path's last token: what the auto-reset counts. Read by
        the parity tests to impose sherpa-onnx's reset schedule from outside."""
        return max(self._hyps, key=lambda h: h.log_prob).trailing_blanks

    def reset(self) -> None:
        """Forget partial matches (not stream time)."""
        self._hyps: list[_Hyp] = [_Hyp(ys=self._empty_ys, log_prob=0.0, state=self.graph.root)]

    # -- decoding -----------------------------------------------------------------
    def step(self, enc: FloatArray) -> list[Detection]:
        """Search a block of encoder frames [n, joiner_dim]; returns detections."""
        detections: list[Detection] = []
        join = self.backend.join
        beam = self.options.beam
        # One joiner row per path, all against the same frame: the frames are repeated
        # for the most paths there can be, one numpy call per encoder chunk, and a
        # frame's rows are then a view (a long run of frames from `decode-frames` goes
        # a chunk at a time, so the copy stays small).
        for first in range(0, len(enc), _REPEAT_FRAMES):
            repeated = np.repeat(enc[first : first + _REPEAT_FRAMES], beam, axis=0)
            for start in range(0, len(repeated), beam):
                contexts = self.begin_frame()
                dec = self.decoder_rows(contexts)
                logits = join(repeated[start : start + len(contexts)], dec)
                det = self.end_frame(log_softmax(logits))
                if det is not None:
                    detections.append(det)
        return detections

    # The two halves of one frame, apart so that `StreamBatch` can run the decoder and
    # the joiner once for the paths of many streams in between.
    def begin_frame(self) -> list[tuple[int, ...]]:
        """Start the next frame: the decoder context of every live path, in path order."""
        if self._pending is not None:
            # Between frames: partial matches refer to nodes of the old graph.
            self.keywords, self.graph = self._pending
            self._pending = None
            self.reset()
        context = self._context
        return [h.ys[-context:] for h in self._hyps]

    def decoder_rows(self, contexts: list[tuple[int, ...]]) -> FloatArray:
        """Decoder output for `contexts` (from `begin_frame`); not to be modified.

        Through silence and inside words the paths keep their contexts from one frame to
        the next, so the rows of the previous frame are usually the answer.
        """
        last = self._last_rows
        if last is not None and last[0] == contexts:
            return last[1]
        rows = self.decoder.rows(contexts)
        self._last_rows = (contexts, rows)
        return rows

    def end_frame(self, log_probs: FloatArray) -> Detection | None:
        """Finish the frame from the joiner's log-probabilities [paths, vocab]."""
        detection = self._advance(log_probs)
        self.frame += 1
        return detection

    def _advance(self, log_probs: FloatArray) -> Detection | None:
        hyps = self._hyps
        total = log_probs + np.array([h.log_prob for h in hyps], dtype=np.float32)[:, None]
        flat = total.ravel()
        k = min(self.options.beam, flat.size)
        top = flat.argpartition(-k)[-k:]
        # Best first: when two paths merge, the better one keeps its times and probs.
        top = top[(-flat[top]).argsort(kind="stable")]
        # The k winners' scores and token probabilities in two array calls, not 2k
        # scalar ones (float32 exp of an array equals that of its elements one by one).
        scores = flat[top].tolist()
        token_probs = np.exp(log_probs.ravel()[top]).tolist()
        vocab = total.shape[1]
        blank, graph, frame = self._blank, self.graph, self.frame
        merged: dict[tuple[int, ...], _Hyp] = {}
        for index, new_lp, prob in zip(top.tolist(), scores, token_probs, strict=True):
            h_idx, tok = divmod(index, vocab)
            parent = hyps[h_idx]
            if tok in (blank, UNK_ID):
                hyp = _Hyp(
                    parent.ys,
                    new_lp,
                    parent.state,
                    parent.times,
                    parent.probs,
                    parent.trailing_blanks + 1,
                )
            else:
                score, state = graph.forward(parent.state, tok)
                if state is graph.root:
                    hyp = _Hyp(self._empty_ys, new_lp + score, state)
                else:
                    hyp = _Hyp(
                        (*parent.ys, tok),
                        new_lp + score,
                        state,
                        (*parent.times, frame),
                        (*parent.probs, prob),
                    )
            existing = merged.get(hyp.ys)
            if existing is None:
                merged[hyp.ys] = hyp
            else:
                existing.log_prob = _log_add(existing.log_prob, hyp.log_prob)
        self._hyps = list(merged.values())
        best = max(self._hyps, key=_log_prob)
        detection = self._check(best)
        if detection is not None or best.trailing_blanks > self._reset_frames:
            self.reset()
        return detection

    def _check(self, best: _Hyp) -> Detection | None:
        node = self.graph.matched(best.state)
        if node is None or best.trailing_blanks <= self.num_trailing_blanks:
            return None
        level = node.level
        probs = best.probs[:level] if self.options.peer_score else best.probs[-level:]
        if len(probs) < level:
            return None
        score = sum(probs) / level
        if score < node.threshold:
            return None
        keyword = self.keywords.keywords[node.keyword_index]
        times = best.times[-level:]
        return Detection(
            keyword=keyword.display,
            phrase=keyword.phrase,
            tokens=node.pieces,
            start=round(times[0] * self._frame_s, 3),
            end=round(times[-1] * self._frame_s, 3),
            score=round(score, 4),
            frame=self.frame,
        )
