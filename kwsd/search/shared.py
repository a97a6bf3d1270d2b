"""What every stream over one model can share: keyword graphs and decoder outputs.

A Wyoming server with ten satellites, or a daemon beside it, runs many searches over
the same model and mostly the same keyword list. Nothing in a compiled graph or in a
decoder output belongs to one stream, so building a graph per stream would only cost
time (2,000 keywords take milliseconds) and a decoder cache per stream would make
every new stream start cold. Both objects are safe to share between threads: a graph
is never modified after it is built, and the decoder cache only ever adds rows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from kwsd.backends.base import Backend, FloatArray
from kwsd.keywords import Keyword, KeywordSet
from kwsd.search.graph import ContextGraph, GraphEntry

# Decoder outputs kept per model. Contexts are pairs of token ids, so even 2,000
# keywords touch a few thousand; the bound only protects very long runs.
DECODER_CACHE_LIMIT = 50_000
# Distinct keyword lists whose graphs are kept: a server has one list, plus one per
# subset that Wyoming clients ask for with `detect`.
GRAPH_CACHE_SIZE = 16


def build_graph(keywords: KeywordSet) -> ContextGraph:
    """The Aho-Corasick graph of every token sequence (alternates too) of a keyword list."""
    return ContextGraph(
        GraphEntry(ids, kw.boost, kw.threshold, index, pieces)
        for index, kw in enumerate(keywords.keywords)
        for ids, pieces in zip(kw.token_ids, kw.sequences, strict=True)
    )


class GraphCache:
    """One graph per distinct keyword list, least recently used ones dropped first.

    Keyed by the compiled keywords themselves (not the list's version or warnings), so
    two lists that spot the same things share a graph however they were written.
    """

    def __init__(self, size: int = GRAPH_CACHE_SIZE) -> None:
        self.size = size
        self._graphs: OrderedDict[tuple[Keyword, ...], ContextGraph] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, keywords: KeywordSet) -> ContextGraph:
        key = keywords.keywords
        with self._lock:
            graph = self._graphs.get(key)
            if graph is not None:
                self._graphs.move_to_end(key)
                return graph
        graph = build_graph(keywords)  # outside the lock: big lists take a while
        with self._lock:
            graph = self._graphs.setdefault(key, graph)
            self._graphs.move_to_end(key)
            while len(self._graphs) > self.size:
                self._graphs.popitem(last=False)
        return graph


class DecoderCache:
    """Decoder outputs by token context, for every search over one backend.

    The decoder is stateless: its output depends only on the last `context_size` token
    ids, whatever the keyword list or stream. Rows are only ever added; at the bound
    the table is replaced rather than cleared, so a search on another thread keeps the
    rows it already looked up.
    """

    def __init__(self, backend: Backend, limit: int = DECODER_CACHE_LIMIT) -> None:
        self.backend = backend
        self.limit = limit
        self._rows: dict[tuple[int, ...], FloatArray] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, contexts: Sequence[tuple[int, ...]]) -> FloatArray:
        """Decoder output [len(contexts), joiner_dim], running the decoder on the misses."""
        rows = self._rows
        missing = list({c for c in contexts if c not in rows})
        if missing:
            out = self.backend.decode(np.array(missing, dtype=np.int64))
            if len(rows) > self.limit:
                rows = {}
            for ctx, row in zip(missing, out, strict=True):
                rows[ctx] = row
            self._rows = rows
        return np.stack([rows[c] for c in contexts])
