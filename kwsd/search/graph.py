"""Aho-Corasick context graph over token ids (docs/algorithm.md §5).

The graph does two jobs during the beam search: it adds a bonus (the boost) for every
token that extends a keyword prefix, which keeps keyword paths alive in a 4-wide beam,
and it takes that bonus back when a partial match fails. The fail/output arcs make
both O(1) per token however many keywords there are.

Building the graph is pure Python and grows with the list: about 0.4 s for 10,000
keywords. `graph_for` remembers the graphs of the last few keyword lists, so the
registry builds a new list's graph in its compile thread and the engine, which swaps
lists between two chunks on the audio path, only picks it up. Graphs are never
changed after they are built, so every stream using a list shares its graph.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from kwsd.keywords import Keyword, KeywordSet

# Graphs kept: the active list, one being swapped in, and a spare for quick successions.
GRAPH_CACHE_SIZE: Final = 3


@dataclass(eq=False, slots=True)
class Node:
    token: int
    token_score: float
    node_score: float
    level: int
    children: dict[int, Node] = field(default_factory=dict)
    fail: Node | None = None
    output: Node | None = None
    output_score: float = 0.0
    is_end: bool = False
    # set on end nodes: what the search reports when this node matches
    keyword_index: int = -1
    threshold: float = 0.0
    pieces: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GraphEntry:
    token_ids: tuple[int, ...]
    boost: float
    threshold: float
    keyword_index: int
    pieces: tuple[str, ...] = ()


class ContextGraph:
    def __init__(self, entries: Iterable[GraphEntry]) -> None:
        self.root = Node(token=-1, token_score=0.0, node_score=0.0, level=0)
        self.root.fail = self.root
        for entry in entries:
            self._insert(entry)
        self._link()

    def _insert(self, entry: GraphEntry) -> None:
        node = self.root
        for level, token in enumerate(entry.token_ids, 1):
            child = node.children.get(token)
            if child is None:
                child = Node(token, entry.boost, node.node_score + entry.boost, level)
                node.children[token] = child
            else:
                child.token_score = max(child.token_score, entry.boost)
                child.node_score = node.node_score + child.token_score
            node = child
        if not node.is_end:  # the first keyword to claim a sequence keeps it
            node.is_end = True
            node.keyword_index = entry.keyword_index
            node.threshold = entry.threshold
            node.pieces = entry.pieces

    def _link(self) -> None:
        """Breadth-first fail and output arcs; parents are final before their children."""
        queue: deque[Node] = deque()
        for child in self.root.children.values():
            child.fail = self.root
            queue.append(child)
        while queue:
            node = queue.popleft()
            node.output = (
                node.fail
                if node.fail and node.fail.is_end
                else (node.fail.output if node.fail else None)
            )
            node.output_score = (node.node_score if node.is_end else 0.0) + (
                node.output.output_score if node.output else 0.0
            )
            for token, child in node.children.items():
                fail = node.fail
                assert fail is not None
                while token not in fail.children and fail is not self.root:
                    assert fail.fail is not None
                    fail = fail.fail
                target = fail.children.get(token)
                child.fail = target if target is not None and target is not child else self.root
                queue.append(child)

    def forward(self, state: Node, token: int) -> tuple[float, Node]:
        """Score for moving from `state` on `token`, and the node reached."""
        child = state.children.get(token)
        if child is not None:
            return child.token_score + child.output_score, child
        node = state.fail
        assert node is not None
        while token not in node.children and node is not self.root:
            assert node.fail is not None
            node = node.fail
        node = node.children.get(token, node)
        return node.node_score - state.node_score + node.output_score, node

    def finalize(self, state: Node) -> tuple[float, Node]:
        """Leave the graph: take back the boost of an unfinished prefix."""
        return -state.node_score, self.root

    @staticmethod
    def matched(state: Node) -> Node | None:
        return state if state.is_end else state.output


def _entries(keywords: tuple[Keyword, ...]) -> Iterable[GraphEntry]:
    for index, kw in enumerate(keywords):
        for ids, pieces in zip(kw.token_ids, kw.sequences, strict=True):
            yield GraphEntry(ids, kw.boost, kw.threshold, index, pieces)


class _GraphCache:
    """The graphs of the last few keyword lists, found by the identity of the list.

    Keyed by the `KeywordSet.keywords` tuple rather than the set: a new version of the
    same list (`dataclasses.replace(ks, version=...)`) shares that tuple and its graph.
    The entries hold the tuple itself, so an identity can never be reused by another list.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: list[tuple[tuple[Keyword, ...], ContextGraph]] = []
        self._lock = threading.Lock()

    def get(self, keywords: tuple[Keyword, ...]) -> ContextGraph:
        with self._lock:
            for index, (known, graph) in enumerate(self._entries):
                if known is keywords:
                    self._entries.insert(0, self._entries.pop(index))
                    return graph
        graph = ContextGraph(_entries(keywords))  # outside the lock: it can take a while
        with self._lock:
            self._entries.insert(0, (keywords, graph))
            del self._entries[self._size :]
        return graph


_GRAPHS = _GraphCache(GRAPH_CACHE_SIZE)


def graph_for(keywords: KeywordSet) -> ContextGraph:
    """The context graph of `keywords`: built once, then shared (thread-safe)."""
    return _GRAPHS.get(keywords.keywords)
