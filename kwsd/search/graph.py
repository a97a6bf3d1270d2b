"""Aho-Corasick context graph over token ids (docs/algorithm.md §5).

The graph does two jobs during the beam search: it adds a bonus (the boost) for every
token that extends a keyword prefix, which keeps keyword paths alive in a 4-wide beam,
and it takes that bonus back when a partial match fails. The fail/output arcs make
both O(1) per token however many keywords there are.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field


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
