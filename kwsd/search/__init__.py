"""Keyword search: the context graph and the beam search over encoder frames."""

from kwsd.search.beam import KeywordSearch, SearchOptions
from kwsd.search.graph import ContextGraph, GraphEntry
from kwsd.search.shared import DecoderCache, GraphCache, build_graph

__all__ = [
    "ContextGraph",
    "DecoderCache",
    "GraphCache",
    "GraphEntry",
    "KeywordSearch",
    "SearchOptions",
    "build_graph",
]
