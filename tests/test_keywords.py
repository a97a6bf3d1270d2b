from pathlib import Path

import pytest

from kwsd.backends.base import ModelDefaults
from kwsd.errors import KeywordError
from kwsd.keywords import (
    KeywordSpec,
    Tokenizer,
    compile_keywords,
    load_keyword_file,
    parse_keyword_entries,
    parse_keyword_line,
    parse_keyword_lines,
)


@pytest.fixture(scope="module")
def tokenizer(assets: Path) -> Tokenizer:
    return Tokenizer(assets / "model" / "tokens.txt", assets / "model" / "bpe.model")


def compile_(specs: list[KeywordSpec], tok: Tokenizer, **kw: float):  # type: ignore[no-untyped-def]
    return compile_keywords(specs, tok, ModelDefaults(threshold=0.25, boost=1.0), **kw)


def test_plain_phrase_any_case(tokenizer: Tokenizer) -> None:
    ks = compile_([KeywordSpec(phrase="light Up")], tokenizer)
    (kw,) = ks.keywords
    assert kw.pieces == ("▁", "L", "IGHT", "▁UP")
    assert kw.display == "LIGHT UP"
    assert kw.token_ids == ((20, 33, 166, 141),)


def test_sherpa_keyword_file_line(tokenizer: Tokenizer) -> None:
    spec = parse_keyword_line("▁ L IGHT ▁UP :2.0 #0.35 @LIGHT_UP")
    assert spec == KeywordSpec(
        pieces=("▁", "L", "IGHT", "▁UP"), boost=2.0, threshold=0.35, display="LIGHT_UP"
    )
    (kw,) = compile_([spec], tokenizer).keywords
    assert (kw.display, kw.phrase, kw.boost, kw.threshold) == ("LIGHT_UP", "LIGHT UP", 2.0, 0.35)


def test_real_upstream_keyword_file(assets: Path, tokenizer: Tokenizer) -> None:
    specs = load_keyword_file(assets / "audio" / "test_keywords.txt")
    ks = compile_(specs, tokenizer)
    assert [k.display for k in ks.keywords] == ["LIGHT UP", "LOVELY CHILD", "FOREVER"]


def test_structured_entries_with_alternates_and_defaults(tokenizer: Tokenizer) -> None:
    specs = parse_keyword_entries(
        [
            "hey computer",
            {
                "phrase": "light up",
                "alternates": ["▁LI G H T ▁UP"],
                "threshold": 0.3,
                "display": "Lights",
            },
        ]
    )
    ks = compile_(specs, tokenizer, boost=1.5)
    hey, light = ks.keywords
    assert hey.boost == 1.5 and hey.threshold == 0.25
    assert light.sequences == (("▁", "L", "IGHT", "▁UP"), ("▁LI", "G", "H", "T", "▁UP"))
    assert light.display == "Lights" and light.threshold == 0.3


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"phrase": "   "}, "empty"),
        ({"pieces": "▁ L IGHTX ▁UP"}, "'IGHTX' is not in the model's tokens.txt"),
        ({"phrase": " ".join(["SUPERCALIFRAGILISTIC"] * 5)}, "more than the limit of 32"),
        ({"phrase": "turn on light 2"}, "'2' are not in the model's vocabulary"),
        ({"phrase": "café"}, "'É'"),
        ({"pieces": "<unk> ▁UP"}, "special token"),
    ],
)
def test_invalid_keywords_have_actionable_messages(
    tokenizer: Tokenizer, entry: dict[str, str], message: str
) -> None:
    with pytest.raises(KeywordError, match=message):
        compile_(parse_keyword_entries([entry]), tokenizer)


def test_missing_phrase_and_pieces_is_refused() -> None:
    with pytest.raises(KeywordError, match="needs a non-empty `phrase`"):
        parse_keyword_entries([{"boost": 2.0}])
    with pytest.raises(KeywordError, match="not a number"):
        parse_keyword_line("LIGHT UP :high")


@pytest.mark.parametrize(
    ("display", "named"),
    [("HEY\x00COMPUTER", "NUL"), ("HEY\tCOMPUTER", "tab"), ("HEY\nCOMPUTER", "line feed"),
     ("HEY COMPUTER\r", "carriage return"), ("HEY\x1bCOMPUTER", "U+001B")],
)  # fmt: skip
def test_display_names_with_control_characters_are_refused(display: str, named: str) -> None:
    """They would go into MQTT topics (a NUL is not allowed in one), HA names and logs."""
    with pytest.raises(KeywordError) as info:
        parse_keyword_entries([{"phrase": "HEY COMPUTER", "display": display}])
    assert f"contains a control character ({named} at position" in str(info.value)
    if not any(c.isspace() for c in display):  # whitespace separates words in a line
        with pytest.raises(KeywordError, match="control character"):
            parse_keyword_line(f"HEY COMPUTER @{display}")
    assert KeywordSpec(phrase="HEY COMPUTER", display="Hé Computer ☕").display == "Hé Computer ☕"


def test_duplicates_are_merged_with_a_warning(tokenizer: Tokenizer) -> None:
    ks = compile_(parse_keyword_lines("LIGHT UP\n# comment\n\n▁ L IGHT ▁UP @OTHER\n"), tokenizer)
    assert [k.display for k in ks.keywords] == ["LIGHT UP"]
    assert any("duplicates 'LIGHT UP'; merged" in w for w in ks.warnings)


def test_weak_keywords_warn_but_are_kept(tokenizer: Tokenizer) -> None:
    ks = compile_(
        [KeywordSpec(phrase="mister"), KeywordSpec(phrase="up"), KeywordSpec(phrase="good night")],
        tokenizer,
    )
    assert len(ks.keywords) == 3
    assert any("one word split into 3 pieces" in w for w in ks.warnings)
    assert any("single BPE piece '▁UP'" in w for w in ks.warnings)
    assert not any("GOOD NIGHT" in w for w in ks.warnings)
