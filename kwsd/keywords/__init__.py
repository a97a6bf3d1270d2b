"""Keywords: the user-facing entries, their parsing, tokenisation and validation."""

from kwsd.keywords.compile import (
    MAX_KEYWORDS,
    Keyword,
    KeywordSet,
    check_keyword_count,
    compile_keywords,
    pieces_to_phrase,
)
from kwsd.keywords.parse import (
    load_keyword_file,
    parse_keyword_entries,
    parse_keyword_entry,
    parse_keyword_line,
    parse_keyword_lines,
)
from kwsd.keywords.spec import KEYWORD_FIELDS, KeywordSpec, KeywordSpecError
from kwsd.keywords.tokenizer import Tokenizer

__all__ = [
    "KEYWORD_FIELDS",
    "MAX_KEYWORDS",
    "Keyword",
    "KeywordSet",
    "KeywordSpec",
    "KeywordSpecError",
    "Tokenizer",
    "check_keyword_count",
    "compile_keywords",
    "load_keyword_file",
    "parse_keyword_entries",
    "parse_keyword_entry",
    "parse_keyword_line",
    "parse_keyword_lines",
    "pieces_to_phrase",
]
