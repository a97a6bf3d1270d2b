"""Keyword beam search over encoder frames (docs/algorithm.md §5), in numpy.

Per encoder frame the search asks the decoder for every distinct 2-token context
(cached: contexts repeat constantly), the joiner for token probabilities, keeps the
`beam` best extensions biased by the context graph, and emits a detection when the
best path has completed a keyword, has been followed by enough blanks, and its tokens
were confidently recognised (mean probability ≥ threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kwsd.backends.base import Backend, FloatArray
from kwsd.detection import Detection
from kwsd.keywords import KeywordSet
from kwsd.search.graph import ContextGraph, Node, graph_for

UNK_ID = 2
# Decoder outputs kept per context. Contexts are pairs of token ids, so even 2,000
# keywords touch a few thousand; the bound only protects very long runs.
DECODER_CACHE_LIMIT = 50_000


@dataclass(frozen=True, slots=True)
class SearchOptions:
    """Search knobs; None means "the model's default" (ModelDefaults)."""

    beam: int = 4
    num_trailing_blanks: int | None = None
    auto_reset_seconds: float | None = None


@dataclass(slots=True)
class _Hyp:
    ys: tuple[int, ...]
    log_prob: float
    state: Node
    times: tuple[int, ...] = ()
    probs: tuple[float, ...] = ()
    trailing_blanks: int = 0


def _log_add(a: float, b: float) -> float:
    hi, lo = (a, b) if a > b else (b, a)
    return hi + float(np.log1p(np.exp(lo - hi)))


class KeywordSearch:
    """One stream's search state; the backend and keyword set may be shared."""

    def __init__(self, backend: Backend, keywords: KeywordSet, options: SearchOptions) -> None:
        if options.beam < 1:
            raise ValueError("beam must be at least 1")
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
        self._reset_frames = max(1, round(reset_s / self._frame_s))
        self._blank = backend.blank_id
        self._context = backend.context_size
        # The decoder context of a path with no tokens yet: "none" padding, then blank.
        self._empty_ys = (-1,) * (self._context - 1) + (self._blank,)
        self._dec_cache: dict[tuple[int, ...], FloatArray] = {}
        self.frame = 0  # absolute encoder frame index of the next frame
        self.keywords, self.graph = keywords, graph_for(keywords)
        self._pending: tuple[KeywordSet, ContextGraph] | None = None
        self.reset()

    # -- keyword list -------------------------------------------------------------
    def set_keywords(self, keywords: KeywordSet) -> None:
        """Swap the keyword list; callers on other threads get it at the next frame.

        Cheap when the list's graph was built beforehand (`kwsd.search.graph.graph_for`,
        as the registry does in its compile thread); otherwise the graph is built here.
        """
        self._pending = (keywords, graph_for(keywords))

    def reset(self) -> None:
        """Forget partial matches (not stream time)."""
        self._hyps: list[_Hyp] = [_Hyp(ys=self._empty_ys, log_prob=0.0, state=self.graph.root)]

    # -- decoding -----------------------------------------------------------------
    def _decoder_out(self, hyps: list[_Hyp]) -> FloatArray:
        contexts = [h.ys[-self._context :] for h in hyps]
        missing = list({c for c in contexts if c not in self._dec_cache})
        if missing:
            if len(self._dec_cache) > DECODER_CACHE_LIMIT:
                self._dec_cache.clear()
            out = self.backend.decode(np.array(missing, dtype=np.int64))
            for ctx, row in zip(missing, out, strict=True):
                self._dec_cache[ctx] = row
        return np.stack([self._dec_cache[c] for c in contexts])

    def step(self, enc: FloatArray) -> list[Detection]:
        """Search a block of encoder frames [n, joiner_dim]; returns detections."""
        detections: list[Detection] = []
        for row in enc:
            if self._pending is not None:
                # Between frames: partial matches refer to nodes of the old graph.
                self.keywords, self.graph = self._pending
                self._pending = None
                self.reset()
            det = self._step_frame(row)
            if det is not None:
                detections.append(det)
            self.frame += 1
        return detections

    def _step_frame(self, enc_row: FloatArray) -> Detection | None:
        hyps = self._hyps
        dec = self._decoder_out(hyps)
        logits = self.backend.join(np.broadcast_to(enc_row, dec.shape).copy(), dec)
        logits = logits - logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        total = log_probs + np.array([h.log_prob for h in hyps], dtype=np.float32)[:, None]
        flat = total.ravel()
        k = min(self.options.beam, flat.size)
        top = np.argpartition(flat, -k)[-k:]
        # Best first: when two paths merge, the better one keeps its times and probs.
        top = top[np.argsort(-flat[top], kind="stable")]
        vocab = total.shape[1]
        merged: dict[tuple[int, ...], _Hyp] = {}
        for index in top.tolist():
            h_idx, tok = divmod(index, vocab)
            parent = hyps[h_idx]
            new_lp = float(flat[index])
            if tok in (self._blank, UNK_ID):
                hyp = _Hyp(
                    parent.ys,
                    new_lp,
                    parent.state,
                    parent.times,
                    parent.probs,
                    parent.trailing_blanks + 1,
                )
            else:
                score, state = self.graph.forward(parent.state, tok)
                if state is self.graph.root:
                    hyp = _Hyp(self._empty_ys, new_lp + score, state)
                else:
                    hyp = _Hyp(
                        (*parent.ys, tok),
                        new_lp + score,
                        state,
                        (*parent.times, self.frame),
                        (*parent.probs, float(np.exp(log_probs[h_idx, tok]))),
                    )
            existing = merged.get(hyp.ys)
            if existing is None:
                merged[hyp.ys] = hyp
            else:
                existing.log_prob = _log_add(existing.log_prob, hyp.log_prob)
        self._hyps = list(merged.values())
        best = max(self._hyps, key=lambda h: h.log_prob)
        detection = self._check(best)
        if detection is not None or best.trailing_blanks > self._reset_frames:
            self.reset()
        return detection

    def _check(self, best: _Hyp) -> Detection | None:
        node = self.graph.matched(best.state)
        if node is None or best.trailing_blanks <= self.num_trailing_blanks:
            return None
        level = node.level
        probs = best.probs[-level:]
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
