"""Aho-Corasick context graph over token ids (docs/algorithm.md §5).

The graph does two jobs during the beam search: it adds a bonus (the boost) for every
token that extends a keyword prefix, which keeps keyword paths alive in a 4-wide beam,
and it takes that bonus back when a partial match fails. The fail/output arcs make
both O(1) per token however many keywords there are.

Building the graph is pure Python and grows with the list: about a second for 10,000
keywords of a few words. The spotter's `GraphCache` (kwsd/search/shared.py) keeps the
graphs of recent keyword lists, so the registry builds a new list's graph in its compile
thread (`KeywordSpotter.prepare`) and the engine, which swaps lists between two chunks on
the audio path, only picks it up. Graphs are never changed after they are built, so every
stream using a list shares its graph.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

ROOT: Final = 0  # index of the root in ContextGraph.nodes
NO_NODE: Final = -1


@dataclass(eq=False, slots=True)
class Node:
    """A trie node. Its fail and output arcs are indexes into `ContextGraph.nodes`, not
    references: the nodes then form a tree, which reference counting frees the moment
    the graph is dropped. With references, the arcs make cycles, and freeing the graph
    of a long list fell to the cyclic garbage collector: a pause of a second or more,
    holding the GIL, in whichever thread happened to trigger it (often the engine's).
    """

    token: int
    token_score: float
    node_score: float
    level: int
    index: int  # this node's place in ContextGraph.nodes
    children: dict[int, Node] = field(default_factory=dict)
    fail: int = ROOT  # the longest proper suffix that is in the trie
    output: int = NO_NODE  # the nearest end node among the suffixes
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
        self.root = Node(token=-1, token_score=0.0, node_score=0.0, level=0, index=ROOT)
        self.nodes: list[Node] = [self.root]
        for entry in entries:
            self._insert(entry)
        self._link()

    def _insert(self, entry: GraphEntry) -> None:
        node = self.root
        for level, token in enumerate(entry.token_ids, 1):
            child = node.children.get(token)
            if child is None:
                child = Node(
                    token, entry.boost, node.node_score + entry.boost, level, len(self.nodes)
                )
                self.nodes.append(child)
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
        nodes, root = self.nodes, self.root
        queue: deque[Node] = deque(root.children.values())
        while queue:
            node = queue.popleft()
            suffix = nodes[node.fail]
            node.output = suffix.index if suffix.is_end else suffix.output
            node.output_score = (node.node_score if node.is_end else 0.0) + (
                nodes[node.output].output_score if node.output != NO_NODE else 0.0
            )
            for token, child in node.children.items():
                fail = nodes[node.fail]
                while token not in fail.children and fail is not root:
                    fail = nodes[fail.fail]
                target = fail.children.get(token)
                child.fail = target.index if target is not None and target is not child else ROOT
                queue.append(child)

    def forward(self, state: Node, token: int) -> tuple[float, Node]:
        """Score for moving from `state` on `token`, and the node reached."""
        child = state.children.get(token)
        if child is not None:
            return child.token_score + child.output_score, child
        nodes = self.nodes
        node = nodes[state.fail]
        while token not in node.children and node is not self.root:
            node = nodes[node.fail]
        node = node.children.get(token, node)
        return node.node_score - state.node_score + node.output_score, node

    def finalize(self, state: Node) -> tuple[float, Node]:
        """Leave the graph: take back the boost of an unfinished prefix."""
        return -state.node_score, self.root

    def matched(self, state: Node) -> Node | None:
        """The keyword that ends at `state`, if any (itself or one of its suffixes)."""
        if state.is_end:
            return state
        return self.nodes[state.output] if state.output != NO_NODE else None
