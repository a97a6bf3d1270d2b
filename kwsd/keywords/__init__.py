"""Keywords: the user-facing entries, their parsing, tokenisation and validation."""

from kwsd.keywords.compile import Keyword, KeywordSet, compile_keywords, pieces_to_phrase
from kwsd.keywords.parse import (
    load_keyword_file,
    parse_keyword_entries,
    parse_keyword_line,
    parse_keyword_lines,
)
from kwsd.keywords.spec import KeywordSpec
from kwsd.keywords.tokenizer import Tokenizer

__all__ = [
    "Keyword",
    "KeywordSet",
    "KeywordSpec",
    "Tokenizer",
    "compile_keywords",
    "load_keyword_file",
    "parse_keyword_entries",
    "parse_keyword_line",
    "parse_keyword_lines",
    "pieces_to_phrase",
]
