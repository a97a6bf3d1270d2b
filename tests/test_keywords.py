import dataclasses
from pathlib import Path

import pytest

from kwsd.backends.base import ModelDefaults
from kwsd.errors import KeywordError
from kwsd.keywords import (
    KeywordSpec,
    KeywordSpecError,
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


# -- KeywordSpec checks itself (no pydantic: the library must not import it) ---------------


def test_spec_normalises_the_natural_spellings() -> None:
    spec = KeywordSpec(pieces=["▁", "L", "IGHT", "▁UP"], boost=2, alternates=["▁LI GHT ▁UP"])  # type: ignore[arg-type]
    same = KeywordSpec(
        pieces=("▁", "L", "IGHT", "▁UP"), boost=2.0, alternates=(("▁LI", "GHT", "▁UP"),)
    )
    assert spec == same and hash(spec) == hash(same)
    assert KeywordSpec(pieces="▁ L IGHT ▁UP") == KeywordSpec(pieces=("▁", "L", "IGHT", "▁UP"))  # type: ignore[arg-type]
    assert isinstance(spec.boost, float) and spec.to_dict()["boost"] == 2.0
    assert KeywordSpec(phrase="X", threshold="0.3").threshold == 0.3  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"phrase": "X", "boost": 10.5}, "`boost`: must be from 0 to 10, not 10.5"),
        ({"phrase": "X", "boost": -1}, "`boost`: must be from 0 to 10"),
        ({"phrase": "X", "threshold": 0}, "`threshold`: must be above 0 and at most 1, not 0"),
        ({"phrase": "X", "threshold": float("nan")}, "`threshold`: must be above 0"),
        ({"phrase": "X", "threshold": True}, "`threshold`: must be a number above 0"),
        ({"phrase": "X", "boost": "high"}, "`boost`: must be a number from 0 to 10, not 'high'"),
        ({"phrase": 3}, "`phrase`: must be text, not 3"),
        ({"phrase": "X", "display": ["a"]}, "`display`: must be text"),
        ({"pieces": ["▁UP", 3]}, "`pieces`: must be BPE pieces"),
        ({"phrase": "X", "alternates": "▁LI GHT"}, "`alternates`: must be a list of piece"),
        ({"phrase": "X", "alternates": [["▁LI"], 2]}, "`alternates`: must be BPE pieces"),
        ({"pieces": ""}, "needs a non-empty `phrase`"),
        ({}, "needs a non-empty `phrase`"),
    ],
)
def test_spec_refuses_bad_values_naming_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(KeywordSpecError) as info:
        KeywordSpec.from_mapping(fields)
    assert message in str(info.value)
    assert isinstance(info.value, KeywordError) and isinstance(info.value, ValueError)
    named = [name for name in fields if f"`{name}`" in message]
    assert info.value.field == (named[0] if named else None)


def test_spec_from_mapping_refuses_unknown_keys_and_reads_back_to_dict() -> None:
    with pytest.raises(KeywordSpecError) as info:
        KeywordSpec.from_mapping({"phrase": "X", "treshold": 0.3, "colour": "red"})
    assert info.value.unknown == ("colour", "treshold")
    assert "unknown fields `colour`, `treshold`" in str(info.value)
    assert "(allowed: phrase, pieces, boost, threshold, display, alternates)" in str(info.value)
    with pytest.raises(KeywordSpecError, match="did you mean `threshold`"):
        KeywordSpec.from_mapping({"phrase": "X", "treshold": 0.3})

    spec = KeywordSpec(pieces=("▁HE", "Y"), threshold=0.3, alternates=(("▁H", "EY"),))
    assert spec.to_dict() == {
        "pieces": ["▁HE", "Y"],
        "threshold": 0.3,
        "alternates": [["▁H", "EY"]],
    }
    assert KeywordSpec.from_mapping(spec.to_dict()) == spec
    assert KeywordSpec(phrase="X").to_dict() == {"phrase": "X"}
    assert dataclasses.replace(spec, boost=3).boost == 3.0
    with pytest.raises(KeywordSpecError, match="`boost`"):
        dataclasses.replace(spec, boost=11.0)


def test_structured_entries_name_the_entry_at_fault() -> None:
    with pytest.raises(KeywordError, match=r"invalid keyword entry \[1\]: `threshold`: must be"):
        parse_keyword_entries(["LIGHT UP", {"phrase": "X", "threshold": 2}])
    with pytest.raises(
        KeywordError, match=r"entry \[0\]: a keyword entry is a phrase or an object"
    ):
        parse_keyword_entries([3])
    with pytest.raises(KeywordError, match="keyword entries must be a list"):
        parse_keyword_entries({"phrase": "X"})
    with pytest.raises(KeywordError, match=r"keyword line 'LIGHT UP :12': `boost`: must be from 0"):
        parse_keyword_line("LIGHT UP :12")
