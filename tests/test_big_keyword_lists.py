"""Long keyword lists: compiled off the audio path, and capped with a clear refusal.

Measured before: a 200,000-line keywords file blocked reload for about 30 s and dropped
20 s of audio, because the search graph of a new list was built on the engine thread,
between two audio blocks.
"""

from __future__ import annotations

import gc
import io
import itertools
import time
from pathlib import Path

import pytest
import structlog
from async_support import wait_until
from daemon_support import make_settings, running

from kwsd.backends.base import ModelDefaults
from kwsd.config import Settings
from kwsd.daemon import Daemon
from kwsd.errors import KeywordError
from kwsd.keywords import MAX_KEYWORDS, KeywordSpec, Tokenizer, compile_keywords
from kwsd.pipeline import BlockReport
from kwsd.registry import STATE_FILE_NAME, KeywordCompiler, KeywordRegistry, Refusal
from kwsd.search import ContextGraph, GraphEntry, build_graph

# Words the model can spell; four of them make 25**4 distinct phrases.
WORD_LIST = (
    "APPLE BANANA CHERRY DELTA ECHO GOLF HOTEL INDIA KILO LIMA MIKE OSCAR PAPA ROMEO "
    "SIERRA TANGO VICTOR WHISKEY YANKEE ZULU KITCHEN GARDEN OFFICE WINDOW MUSIC"
)
WORDS = WORD_LIST.split()


def phrases(count: int, suffix: str = "") -> list[str]:
    """`count` distinct phrases the model can spell: four words, then `suffix`."""
    combinations = itertools.islice(itertools.product(WORDS, repeat=4), count)
    return [" ".join(words) + suffix for words in combinations]


def write_keywords(path: Path, count: int, suffix: str = "") -> None:
    path.write_text("\n".join(phrases(count, suffix)) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer(assets: Path) -> Tokenizer:
    return Tokenizer(assets / "model" / "tokens.txt", assets / "model" / "bpe.model")


def paced_daemon(
    tmp_path: Path, assets: Path, speech: Path, reports: list[BlockReport]
) -> tuple[Daemon, Path]:
    """A daemon on a file read at real time (a stand-in for a microphone), keywords from
    a file, reloaded by explicit calls only."""
    words = tmp_path / "keywords.txt"
    words.write_text("hey computer\n", encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text('[keywords]\nfile = "keywords.txt"\nwatch = false\n', encoding="utf-8")

    def load() -> Settings:
        return make_settings(
            tmp_path, assets, speech, config=config, **{"audio.realtime": True, "audio.loop": True}
        )

    daemon = Daemon(
        load(),
        reload_settings=load,
        stdout=io.StringIO(),
        install_signal_handlers=False,
        block_observer=reports.append,
    )
    return daemon, words


def graph_build_seconds(specs: list[KeywordSpec], tokenizer: Tokenizer) -> float:
    compiled = compile_keywords(specs, tokenizer, ModelDefaults())
    started = time.perf_counter()
    build_graph(compiled)
    return time.perf_counter() - started


def dropped_seconds(daemon: Daemon) -> float:
    value = daemon.metrics.registry.get_sample_value("kwsd_audio_dropped_seconds_total")
    return value or 0.0


async def test_a_long_list_compiles_while_audio_keeps_flowing(
    tmp_path: Path, assets: Path, speech: Path, tokenizer: Tokenizer
) -> None:
    # What building this list's search graph costs here and now (machine load included):
    # the engine would have stalled this long if it built the graph itself. Long
    # phrases make a big graph: about 23 tokens per keyword.
    suffix = " PLEASE TURN ON THE LIGHTS"
    specs = [KeywordSpec(phrase=p) for p in phrases(MAX_KEYWORDS, suffix)]
    graph_seconds = min(graph_build_seconds(specs, tokenizer) for _ in range(2))

    reports: list[BlockReport] = []
    daemon, words = paced_daemon(tmp_path, assets, speech, reports)
    async with running(daemon):
        assert daemon.pipeline is not None
        stats = daemon.pipeline.stats
        await wait_until(lambda: len(reports) >= 10, what="audio flowing")
        write_keywords(words, MAX_KEYWORDS, suffix)
        first = len(reports)
        assert await daemon.reload()
        await wait_until(lambda: 2 in stats.keyword_versions, what="the engine swap")
        swapped = len(reports)
        await wait_until(lambda: len(reports) >= swapped + 5, what="audio after the swap")
        assert daemon.registry is not None and len(daemon.registry.keyword_set) == MAX_KEYWORDS
    during = reports[first:]
    worst = max(r.compute_seconds for r in during)
    gaps = [b.finished_at - a.finished_at for a, b in itertools.pairwise(during)]
    # The engine never built the graph itself: no block took anywhere near that long,
    # and blocks kept arriving at the pace of the audio.
    assert worst < graph_seconds * 0.75, (worst, graph_seconds)
    assert max(gaps) < max(0.5, graph_seconds * 0.75), (max(gaps), graph_seconds)
    assert dropped_seconds(daemon) == 0.0


async def test_a_list_over_the_cap_is_refused_and_the_old_one_stays(
    tmp_path: Path, assets: Path, speech: Path
) -> None:
    reports: list[BlockReport] = []
    daemon, words = paced_daemon(tmp_path, assets, speech, reports)
    async with running(daemon):
        assert daemon.registry is not None and daemon.pipeline is not None
        await wait_until(lambda: len(reports) >= 5, what="audio flowing")
        write_keywords(words, 200_000)  # the measured case
        before = len(reports)
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            assert not await daemon.reload()
        refused_after = time.monotonic() - started
        assert daemon.registry.keyword_set.displays() == ["HEY COMPUTER"]
        assert daemon.registry.version == 1 and daemon.pipeline.stats.keyword_versions == []
        await wait_until(lambda: len(reports) >= before + 5, what="audio after the refusal")
    errors = [e for e in logs if e["log_level"] == "error"]
    assert errors and "rejected" in errors[0]["event"], logs
    message = errors[0]["error"]
    assert str(words) in message and "200,000 keywords" in message, message
    assert "limit of 10,000" in message and "split it" in message, message
    assert refused_after < 5, f"refusing took {refused_after:.1f}s: the file was parsed first"
    assert dropped_seconds(daemon) == 0.0


async def test_an_mqtt_list_over_the_cap_is_refused(tmp_path: Path, tokenizer: Tokenizer) -> None:
    registry = KeywordRegistry(
        KeywordCompiler(tokenizer, ModelDefaults()), tmp_path / STATE_FILE_NAME
    )
    assert not isinstance(await registry.set([KeywordSpec(phrase="HEY COMPUTER")]), Refusal)
    result = await registry.set([KeywordSpec(phrase=p) for p in phrases(MAX_KEYWORDS + 1)])
    assert isinstance(result, Refusal), result
    assert "10,001 keywords" in result.error and "limit of 10,000" in result.error
    assert registry.keyword_set.displays() == ["HEY COMPUTER"] and result.version == 1


def test_the_cap_counts_lines_before_parsing_them(tmp_path: Path) -> None:
    """A huge file is refused without parsing 200,000 entries first."""
    from kwsd.keywords import load_keyword_file

    path = tmp_path / "huge.txt"
    write_keywords(path, 200_000)
    started = time.perf_counter()
    with pytest.raises(KeywordError, match=r"200,000 keywords, more than the limit of 10,000"):
        load_keyword_file(path)
    assert time.perf_counter() - started < 1.0
    at_cap = tmp_path / "cap.txt"
    write_keywords(at_cap, MAX_KEYWORDS)
    assert len(load_keyword_file(at_cap)) == MAX_KEYWORDS


def test_a_dropped_graph_is_freed_without_the_garbage_collector(tokenizer: Tokenizer) -> None:
    """A replaced list's graph goes away by reference counting. When its nodes formed
    cycles, freeing the graph of a long list was a garbage-collector pause of a second
    or more, holding the GIL in whatever thread set it off, the engine's included."""
    specs = [KeywordSpec(phrase=p) for p in phrases(500, " PLEASE")]
    compiled = compile_keywords(specs, tokenizer, ModelDefaults())
    gc.collect()
    gc.disable()
    try:
        graph = ContextGraph(
            GraphEntry(ids, kw.boost, kw.threshold, index, pieces)
            for index, kw in enumerate(compiled.keywords)
            for ids, pieces in zip(kw.token_ids, kw.sequences, strict=True)
        )
        assert len(graph.nodes) > 3_000
        del graph
        assert gc.collect() == 0, "the graph left cycles for the garbage collector"
    finally:
        gc.enable()
