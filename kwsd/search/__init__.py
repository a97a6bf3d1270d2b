"""Keyword search: the context graph and the beam search over encoder frames."""

from kwsd.search.beam import KeywordSearch, SearchOptions
from kwsd.search.graph import ContextGraph, GraphEntry, graph_for

__all__ = ["ContextGraph", "GraphEntry", "KeywordSearch", "SearchOptions", "graph_for"]
