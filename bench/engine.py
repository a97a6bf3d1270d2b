"""Decoding-core benchmarks: search per frame, fbank/encoder per chunk, total CPU vs sherpa-onnx.

Run: `python bench/engine.py [--quick]`. Writes its section of docs/benchmarks.md.
`python bench/engine.py --peer-only` runs (and prints) only the kwsd vs sherpa-onnx CPU
comparison; run it on a quiet machine, it reports the load average it saw.
Everything is single-threaded (ONNX Runtime with 1 thread, as the daemon is configured
by default): it runs on Raspberry-Pi-class machines next to other services.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The replay encoder and the sherpa-onnx keyword file come from the parity tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import (
    CHUNK_SAMPLES,
    FloatArray,
    Stats,
    assets_dir,
    corpus_audio,
    corpus_phrases,
    espeak_audio,
    load_16k,
    machine_table,
    write_section,
)
from engine_support import COMMAND_SENTENCES
from replay_encoder import signature_source, write_replay_encoder
from sherpa_peer import keyword_file

from kwsd import BackendOptions, KeywordSet, KeywordSpec, KeywordSpotter, SearchOptions
from kwsd.backends.base import Backend
from kwsd.backends.onnx import OnnxBackend
from kwsd.backends.replay import ContentReplayBackend, ReplayTable, read_frames
from kwsd.engine import Frontend
from kwsd.features import Chunker, FbankStream
from kwsd.keywords import compile_keywords
from kwsd.model.bundle import ModelBundle
from kwsd.search import KeywordSearch

ESPEAK_SENTENCES = COMMAND_SENTENCES
KEYWORD_COUNTS = (10, 250, 2000)
# Commands spoken in ESPEAK_SENTENCES: listed first, so the searches find something.
ESPEAK_KEYWORDS = (
    "HEY COMPUTER",
    "TURN ON THE LIGHTS",
    "LIVING ROOM",
    "OPEN THE GARAGE",
    "LIGHT UP",
    "GOOD NIGHT",
    "LIGHTS OFF",
    "FRONT DOOR",
    "PLAY SOME MUSIC",
    "YELLOW LAMPS",
)
RANDOM_ENCODER = "encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx"
TARGET_SEARCH_MS = 0.5
TARGET_PEER_RATIO = 1.0  # issue 13: a single stream costs no more CPU than sherpa-onnx's


@dataclass(frozen=True, slots=True)
class Setup:
    assets: Path
    standin: KeywordSpotter  # stand-in encoder with the real decoder/joiner
    synthetic: KeywordSpotter  # the same, with the synthetic zipformer2-signature encoder
    zipformer_random: KeywordSpotter  # the real encoder's architecture, random weights
    phrases: list[str]
    speech: FloatArray  # real corpus speech
    espeak: FloatArray

    @property
    def bundle(self) -> ModelBundle:
        assert self.standin.bundle is not None
        return self.standin.bundle


def keyword_set(setup: Setup, count: int) -> KeywordSet:
    return setup.standin.compile(setup.phrases[:count])


def prepare(quick: bool) -> Setup:
    assets = assets_dir()
    standin = KeywordSpotter.from_assets(assets, backend=BackendOptions(runtime="onnx", threads=1))
    assert standin.bundle is not None
    synthetic_path = assets / "synthetic" / "encoder-synthetic.onnx"
    bundle = standin.bundle
    return Setup(
        assets=assets,
        standin=standin,
        synthetic=standin.with_backend(
            OnnxBackend(synthetic_path, bundle.decoder, bundle.joiner, num_threads=1)
        ),
        zipformer_random=standin.with_backend(
            OnnxBackend(
                assets / "zipformer-random" / RANDOM_ENCODER,
                bundle.decoder,
                bundle.joiner,
                num_threads=1,
            )
        ),
        phrases=corpus_phrases(assets, max(KEYWORD_COUNTS), first=("LIGHT UP", "HEY COMPUTER")),
        speech=corpus_audio(assets, 30.0 if quick else 60.0),
        espeak=espeak_audio(ESPEAK_SENTENCES[:3] if quick else ESPEAK_SENTENCES),
    )


def encode_all(backend: Backend, audio: FloatArray) -> FloatArray:
    frontend = Frontend(backend)
    chunks = frontend.accept(audio) + frontend.flush()
    return np.concatenate(chunks)


# -- 1. search cost per encoder frame ------------------------------------------------
@dataclass(frozen=True, slots=True)
class SearchResult:
    source: str
    keywords: int
    frames: int
    cold_ms: float  # first pass, empty decoder cache
    warm: Stats  # per-frame ms over repeated passes
    detections: int


def search_pass(search: KeywordSearch, frames: FloatArray) -> tuple[float, int]:
    """One pass over `frames` in encoder-chunk steps: (ms per frame, detections)."""
    chunk = search.backend.chunk.frames_out
    search.reset()
    found = 0
    t0 = time.perf_counter()
    for i in range(0, len(frames), chunk):
        found += len(search.step(frames[i : i + chunk]))
    return (time.perf_counter() - t0) * 1e3 / len(frames), found


def bench_search(
    setup: Setup, frame_sets: dict[str, FloatArray], repeats: int
) -> list[SearchResult]:
    results = []
    for count in KEYWORD_COUNTS:
        ks = keyword_set(setup, count)
        for source, frames in frame_sets.items():
            search = KeywordSearch(setup.standin.backend, ks, SearchOptions(beam=4))
            cold, found = search_pass(search, frames)
            per_frame = [search_pass(search, frames)[0] for _ in range(repeats)]
            results.append(
                SearchResult(source, len(ks), len(frames), cold, Stats.of(per_frame), found)
            )
    return results


@dataclass(frozen=True, slots=True)
class KeywordCost:
    keywords: int
    compile: Stats  # ms: tokenise and validate the phrases
    swap: Stats  # ms: build the search graph (`set_keywords`)


def bench_keyword_lists(setup: Setup, repeats: int) -> list[KeywordCost]:
    """What a keyword update costs (MQTT `cmd/keywords/set`, config reload)."""
    out = []
    search = KeywordSearch(setup.standin.backend, keyword_set(setup, 1), SearchOptions(beam=4))
    for count in KEYWORD_COUNTS:
        specs = [KeywordSpec(phrase=p) for p in setup.phrases[:count]]
        compile_ms, swap_ms = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            ks = compile_keywords(specs, setup.standin.tokenizer, setup.standin.backend.defaults)
            t1 = time.perf_counter()
            search.set_keywords(ks)
            t2 = time.perf_counter()
            compile_ms.append((t1 - t0) * 1e3)
            swap_ms.append((t2 - t1) * 1e3)
        out.append(KeywordCost(count, Stats.of(compile_ms), Stats.of(swap_ms)))
    return out


# -- 2. fbank and 3. encoder cost per chunk ------------------------------------------
def bench_fbank(audio: FloatArray, repeats: int) -> Stats:
    """ms per 320 ms block of audio: fbank + chunking, fed as a microphone would."""
    times: list[float] = []
    for _ in range(repeats):
        fbank, chunker = FbankStream(), Chunker()
        for i in range(0, len(audio) - CHUNK_SAMPLES + 1, CHUNK_SAMPLES):
            t0 = time.perf_counter()
            chunker.push(fbank.accept(audio[i : i + CHUNK_SAMPLES]))
            times.append((time.perf_counter() - t0) * 1e3)
    return Stats.of(times)


def bench_encoder(backend: Backend, audio: FloatArray, repeats: int) -> Stats:
    fbank, chunker = FbankStream(), Chunker(backend.chunk.frames_in, backend.chunk.frames_shift)
    feats = chunker.push(fbank.accept(audio))
    times: list[float] = []
    for _ in range(repeats):
        state = backend.init_state()
        for x in feats:
            t0 = time.perf_counter()
            _, state = backend.run_chunk(x, state)
            times.append((time.perf_counter() - t0) * 1e3)
    return Stats.of(times)


# -- 4. total CPU per audio second, kwsd vs sherpa-onnx ------------------------------
# How the comparison is made so that it reproduces (docs/benchmarks.md says it too):
# - the same files for both (encoder, decoder, joiner, tokens), the same keyword list
#   with the same boost/threshold, beam/max_active_paths 4, 1 thread, the same audio fed
#   in the same 320 ms blocks plus the same 0.8 s of tail padding;
# - the cost is process CPU time (`time.process_time`) of the decoding only: models are
#   loaded, keyword graphs built and streams opened before the clock starts, for both;
# - one untimed warm-up run each, then `repeats` pairs, interleaved in ABBA order
#   (kwsd first in even pairs, sherpa-onnx first in odd ones) so drift in the machine's
#   load hits both alike; the ratio is taken per pair, and its median and 10th-90th
#   percentile spread are reported with the load average before and after;
# - kwsd starts every timed run with empty decoder-output caches (a new spotter), as
#   cold as the first stream of a new process: sherpa-onnx has no such cache.
TAIL = np.zeros(int(0.8 * 16000), np.float32)


@dataclass(frozen=True, slots=True)
class PeerCase:
    """One encoder both decoders run, and the audio streams decoded per measurement."""

    label: str
    kwsd: KeywordSpotter  # kwsd over this encoder (or its replay), the real decoder/joiner
    encoder: Path  # the ONNX encoder file sherpa-onnx loads
    streams: tuple[FloatArray, ...]
    spoken: tuple[str, ...]  # keywords said in the audio, listed before the corpus phrases
    counts: tuple[int, ...]

    @property
    def audio_seconds(self) -> float:
        return sum(s.size for s in self.streams) / 16000


def peer_cases(setup: Setup, workdir: Path, quick: bool) -> list[PeerCase]:
    """The encoders of the comparison.

    - replay encoders (tests/replay_encoder.py): recorded encoder output answered per
      chunk by the chunk's content, in the real export's signature. Encoding is almost
      free, and the searches do real work: the frames are speech, keywords get found.
      Real encoder frames of light_up.wav (real speech), and the stand-in's frames of the
      espeak-ng sentences.
    - zipformer-random: the real encoder's architecture and size with random weights:
      what the real encoder costs; its frames are noise to the search.
    - synthetic: the real signature with trivial weights (the earlier published figure).
    """
    standin = setup.standin
    bundle = setup.bundle
    signature = signature_source(setup.assets)
    light_up = load_16k(setup.assets / "audio" / "light_up.wav")
    fixture = read_frames(setup.assets / "fixtures" / "ref_encoder_light_up.bin")
    real_table = ReplayTable.from_recording(standin.backend, fixture, light_up)
    espeak_table = ReplayTable.record(standin.backend, setup.espeak)
    random_path = setup.assets / "zipformer-random" / RANDOM_ENCODER
    synthetic_path = setup.assets / "synthetic" / "encoder-synthetic.onnx"
    counts = (10, 250)
    repeats = 2 if quick else 4  # light_up.wav is 6.6 s: decoded as that many streams

    def replay(table: ReplayTable) -> KeywordSpotter:
        return standin.with_backend(ContentReplayBackend(standin.backend, table))

    def onnx(path: Path) -> KeywordSpotter:
        return standin.with_backend(OnnxBackend(path, bundle.decoder, bundle.joiner, num_threads=1))

    return [
        PeerCase(
            f"replay: real encoder frames, light_up.wav ×{repeats}",
            replay(real_table),
            write_replay_encoder(real_table, signature, workdir / "replay-light-up.onnx"),
            (light_up,) * repeats,
            ("LIGHT UP", "AFTER EARLY", "YELLOW LAMPS", "HERE AND THERE", "SQUALID QUARTER"),
            counts,
        ),
        PeerCase(
            "replay: stand-in frames, espeak-ng sentences",
            replay(espeak_table),
            write_replay_encoder(espeak_table, signature, workdir / "replay-espeak.onnx"),
            (setup.espeak,),
            ESPEAK_KEYWORDS,
            counts,
        ),
        PeerCase(
            "zipformer-random (real architecture, int8), corpus speech",
            onnx(random_path),
            random_path,
            (setup.speech,),
            (),
            counts,
        ),
        PeerCase(
            "synthetic (real signature, trivial weights), corpus speech",
            onnx(synthetic_path),
            synthetic_path,
            (setup.speech,),
            (),
            counts if quick else (*counts, 2000),
        ),
    ]


def kwsd_cpu(
    spotter: KeywordSpotter, ks: KeywordSet, streams: Sequence[FloatArray]
) -> tuple[float, int]:
    """Process CPU seconds to decode `streams` one after the other, and detections."""
    fresh = spotter.with_backend(spotter.backend)  # empty caches: see above
    prepared = [fresh.create_stream(ks) for _ in streams]  # graph built, streams opened
    found = 0
    t0 = time.process_time()
    for stream, audio in zip(prepared, streams, strict=True):
        for i in range(0, len(audio), CHUNK_SAMPLES):
            found += len(stream.accept(audio[i : i + CHUNK_SAMPLES]))
        found += len(stream.finish())
    return time.process_time() - t0, found


class SherpaPeer:
    """sherpa-onnx's KeywordSpotter on the same files and keyword list, used as its
    documentation shows: decode while ready, reset the stream after a detection."""

    def __init__(self, setup: Setup, encoder: Path, ks: KeywordSet, workdir: Path) -> None:
        import sherpa_onnx

        kw_file = workdir / f"keywords-{len(ks)}.txt"
        kw_file.write_text(keyword_file(ks)[0], encoding="utf-8")
        defaults = setup.standin.backend.defaults
        self.spotter = sherpa_onnx.KeywordSpotter(
            tokens=str(setup.bundle.tokens),
            encoder=str(encoder),
            decoder=str(setup.bundle.decoder),
            joiner=str(setup.bundle.joiner),
            keywords_file=str(kw_file),
            num_threads=1,
            provider="cpu",
            max_active_paths=4,
            keywords_score=defaults.boost,
            keywords_threshold=defaults.threshold,
            num_trailing_blanks=defaults.num_trailing_blanks,
        )

    def cpu(self, streams: Sequence[FloatArray]) -> tuple[float, int]:
        sp = self.spotter
        prepared = [sp.create_stream() for _ in streams]
        found = 0

        def drain(stream: object) -> int:
            hits = 0
            while sp.is_ready(stream):
                sp.decode_stream(stream)
                if sp.get_result(stream):
                    hits += 1
                    sp.reset_stream(stream)
            return hits

        t0 = time.process_time()
        for stream, audio in zip(prepared, streams, strict=True):
            for i in range(0, len(audio), CHUNK_SAMPLES):
                stream.accept_waveform(16000, audio[i : i + CHUNK_SAMPLES])
                found += drain(stream)
            stream.accept_waveform(16000, TAIL)
            stream.input_finished()
            found += drain(stream)
        return time.process_time() - t0, found


@dataclass(frozen=True, slots=True)
class PeerResult:
    label: str
    keywords: int
    audio_s: float
    kwsd: Stats  # ms of process CPU per second of audio
    sherpa: Stats
    ratio: Stats  # kwsd / sherpa-onnx, per interleaved pair
    kwsd_found: int
    sherpa_found: int
    load: tuple[float, float]  # 1-minute load average before and after


def compare_with_peer(
    setup: Setup, case: PeerCase, count: int, repeats: int, workdir: Path
) -> PeerResult:
    phrases = list(dict.fromkeys([*case.spoken, *setup.phrases]))[:count]
    ks = case.kwsd.compile(phrases)
    peer = SherpaPeer(setup, case.encoder, ks, workdir)
    kwsd_cpu(case.kwsd, ks, case.streams)  # warm-up, both
    peer.cpu(case.streams)
    load_before = os.getloadavg()[0]
    k_runs: list[float] = []
    s_runs: list[float] = []
    k_found = s_found = 0
    for r in range(repeats):
        if r % 2 == 0:
            (k, k_found), (s, s_found) = (
                kwsd_cpu(case.kwsd, ks, case.streams),
                peer.cpu(case.streams),
            )
        else:
            (s, s_found), (k, k_found) = (
                peer.cpu(case.streams),
                kwsd_cpu(case.kwsd, ks, case.streams),
            )
        k_runs.append(k * 1e3 / case.audio_seconds)
        s_runs.append(s * 1e3 / case.audio_seconds)
    return PeerResult(
        case.label,
        len(ks),
        case.audio_seconds,
        Stats.of(k_runs),
        Stats.of(s_runs),
        Stats.of([a / b for a, b in zip(k_runs, s_runs, strict=True)]),
        k_found,
        s_found,
        (load_before, os.getloadavg()[0]),
    )


def bench_peer(
    setup: Setup, quick: bool, repeats: int, step: Callable[[str], None]
) -> list[PeerResult]:
    results: list[PeerResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in peer_cases(setup, Path(tmp), quick):
            for count in case.counts:
                step(f"  {case.label}, {count} keywords")
                results.append(compare_with_peer(setup, case, count, repeats, Path(tmp)))
    return results


def standin_cost(setup: Setup, repeats: int) -> Stats:
    """kwsd alone with the stand-in encoder on the espeak-ng sentences it recognises
    (sherpa-onnx cannot load a GRU encoder), 10 keywords: ms CPU per audio second."""
    ks = setup.standin.compile(list(dict.fromkeys([*ESPEAK_KEYWORDS, *setup.phrases]))[:10])
    seconds = setup.espeak.size / 16000
    kwsd_cpu(setup.standin, ks, (setup.espeak,))
    return Stats.of(
        [kwsd_cpu(setup.standin, ks, (setup.espeak,))[0] * 1e3 / seconds for _ in range(repeats)]
    )


def sherpa_loads_standin(setup: Setup) -> str:
    """Whether sherpa-onnx accepts the stand-in encoder (it exits the process when it
    does not, so the attempt runs in a child process)."""
    with tempfile.TemporaryDirectory() as tmp:
        kw = Path(tmp) / "k.txt"
        kw.write_text("▁ L IGHT ▁UP\n")
        code = (
            "import sys, sherpa_onnx\n"
            "sp = sherpa_onnx.KeywordSpotter(tokens=sys.argv[1], encoder=sys.argv[2], "
            "decoder=sys.argv[3], joiner=sys.argv[4], keywords_file=sys.argv[5], "
            "num_threads=1)\n"
            "print('loaded')\n"
        )
        b = setup.bundle
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                code,
                str(b.tokens),
                str(b.encoder),
                str(b.decoder),
                str(b.joiner),
                str(kw),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    if proc.returncode == 0 and "loaded" in proc.stdout:
        return "yes"
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    last = errors[0].rsplit(" ", 4)[-4:] if errors else [f"exit {proc.returncode}"]
    return f'no (it exits with "{" ".join(last)}")'


# -- report --------------------------------------------------------------------------
def fmt(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def verdict(ok: bool) -> str:
    return "meets" if ok else "**misses**"


def peer_section(
    setup: Setup, peer: list[PeerResult], standin: Stats, standin_note: str, quick: bool
) -> list[str]:
    """The kwsd vs sherpa-onnx table (also printed alone by `--peer-only`)."""
    loads = [v for r in peer for v in r.load]
    lines = [
        "### Total CPU per audio second: kwsd vs sherpa-onnx `KeywordSpotter`",
        "",
        "Both decoders get the same files (encoder, the fp32 decoder kwsd picks, the int8 "
        "joiner, tokens), the same keyword list with the same boost/threshold, "
        "beam/max_active_paths 4, 1 thread, and the same audio in 320 ms blocks plus 0.8 s "
        "of tail padding. Measured: process CPU time of the decoding only (models loaded, "
        "keyword graphs built and streams opened before the clock starts, for both), after "
        "one untimed warm-up run each, in interleaved pairs (ABBA order), every kwsd run "
        "with empty decoder caches. The ratio is taken per pair; cells show the median and "
        "the [10th–90th percentile] over the pairs. Encoders: *replay* answers each chunk "
        "with recorded encoder output keyed by the chunk's content (tests/replay_encoder.py:"
        " nearly free to run, and the frames are speech, so both searches find keywords); "
        "*zipformer-random* has the real encoder's architecture and size with random "
        "weights (what the real encoder costs; its frames are noise to the search); "
        "*synthetic* has the real signature and trivial weights. "
        f"sherpa-onnx loads the stand-in encoder: {standin_note}.",
        "",
        f"{'Quick run: ' if quick else ''}load average (1 min) during this table: "
        f"{min(loads):.2f}–{max(loads):.2f} on {os.cpu_count()} logical cores. On a busy "
        "machine the spread widens; compare medians from quiet runs.",
        "",
        "| encoder, audio | audio s | keywords | kwsd ms CPU/s | sherpa-onnx ms CPU/s | "
        "kwsd/sherpa-onnx | pairs | detections kwsd / sherpa-onnx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in peer:
        lines.append(
            f"| {r.label} | {r.audio_s:.1f} | {r.keywords} | {r.kwsd.spread()} | "
            f"{r.sherpa.spread()} | {r.ratio.spread(unit='×')} | {r.ratio.n} | "
            f"{r.kwsd_found} / {r.sherpa_found} |"
        )
    lines += [
        "",
        f"kwsd alone with the stand-in encoder (GRU) on the espeak-ng sentences, 10 keywords: "
        f"{standin.spread()} ms CPU per audio second (sherpa-onnx cannot load it).",
        "",
        "Detections differ where kwsd deliberately differs from sherpa-onnx's documented "
        "use (tests/sherpa_peer.py: after a detection sherpa-onnx drops the rest of the "
        "320 ms chunk; kwsd keeps searching from the next frame).",
        "",
    ]
    for r in peer:
        lines.append(
            f"- {r.label}, {r.keywords} keywords: kwsd/sherpa-onnx {r.ratio.median:.2f}× "
            f"(spread {r.ratio.p10:.2f}–{r.ratio.p90:.2f}×; target ≤ {TARGET_PEER_RATIO}×: "
            f"{verdict(r.ratio.median <= TARGET_PEER_RATIO)})"
        )
    return lines


def report(
    setup: Setup,
    quick: bool,
    search: list[SearchResult],
    kw_costs: list[KeywordCost],
    fbank: Stats,
    encoders: dict[str, Stats],
    peer: list[PeerResult],
    standin: Stats,
    standin_note: str,
    elapsed: float,
) -> str:
    lines = ["## Decoding core (`bench/engine.py`)", ""]
    lines.append(
        f"Run {'with `--quick`' if quick else 'in full'} in {elapsed:.0f} s; "
        "one thread (ONNX Runtime `num_threads=1`, sherpa-onnx `num_threads=1`). "
        "Medians and 90th percentiles over repeated runs."
    )
    lines += ["", machine_table(), ""]
    lines += [
        "### Keyword search per encoder frame (beam 4)",
        "",
        "Keywords are distinct 2–3 word phrases cut from the real corpus transcripts "
        "(plus LIGHT UP and HEY COMPUTER), default boost/threshold. Frames: the real "
        "encoder's output for `light_up.wav` (the fixture) and the stand-in encoder's "
        "output for espeak-ng sentences. *Cold* is the first pass over the frames with an "
        "empty decoder-output cache; *warm* passes reuse the cache, as a long-running "
        "stream does. One frame is 40 ms of audio.",
        "",
        "| frames | keywords | frames/pass | cold ms/frame | warm median ms/frame | "
        "warm p90 ms/frame | detections/pass |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in search:
        lines.append(
            f"| {r.source} | {r.keywords} | {r.frames} | {fmt(r.cold_ms)} | "
            f"{fmt(r.warm.median)} | {fmt(r.warm.p90)} | {r.detections} |"
        )
    lines.append("")
    for source in dict.fromkeys(r.source for r in search):
        by = {r.keywords: r for r in search if r.source == source}
        mid, big = by[KEYWORD_COUNTS[1]], by[KEYWORD_COUNTS[2]]
        ratio = big.warm.median / mid.warm.median
        lines.append(
            f"- {source}: {mid.keywords} keywords {fmt(mid.warm.median)} ms/frame "
            f"(target ≤ {TARGET_SEARCH_MS}: {verdict(mid.warm.median <= TARGET_SEARCH_MS)}); "
            f"{big.keywords} keywords {ratio:.2f}× that (target ≤ 1.5×: "
            f"{verdict(ratio <= 1.5)})."
        )
    lines += [
        "",
        "Cost of a keyword-list update (MQTT `cmd/keywords/set` or a config reload), done "
        "off the audio path: tokenising and validating the phrases, then building the "
        "search graph.",
        "",
        "| keywords | compile median ms | compile p90 ms | graph build median ms | "
        "graph build p90 ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    for c in kw_costs:
        lines.append(
            f"| {c.keywords} | {fmt(c.compile.median, 2)} | {fmt(c.compile.p90, 2)} | "
            f"{fmt(c.swap.median, 2)} | {fmt(c.swap.p90, 2)} |"
        )
    lines += [
        "",
        "### Features and encoder per 320 ms chunk",
        "",
        "| stage | median ms | p90 ms | calls | target |",
        "|---|---:|---:|---:|---|",
        f"| fbank + chunker (real speech, 5,120-sample blocks) | {fmt(fbank.median)} | "
        f"{fmt(fbank.p90)} | {fbank.n} | ≤ 0.5 ms: {verdict(fbank.median <= 0.5)} |",
    ]
    for name, st in encoders.items():
        lines.append(f"| encoder: {name} | {fmt(st.median)} | {fmt(st.p90)} | {st.n} | – |")
    lines += [
        "",
        "The real Zipformer2 encoder is not available on this machine; zipformer-random "
        "is its architecture and size with random weights (int8 as released), so its cost "
        "is the real encoder's. The stand-in (GRU, 4.7 M parameters, fp32) is the trained "
        "encoder of the tests; the synthetic one (real I/O signature and state plumbing, "
        "trivial weights) costs almost nothing, which isolates everything around it.",
        "",
    ]
    lines += peer_section(setup, peer, standin, standin_note, quick)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (a few minutes)")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    parser.add_argument(
        "--peer-only",
        action="store_true",
        help="only the kwsd vs sherpa-onnx CPU comparison; printed, the docs are not edited",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        metavar="N",
        help="interleaved kwsd/sherpa-onnx pairs per comparison (default 5 quick, 15 full)",
    )
    args = parser.parse_args(argv)
    quick: bool = args.quick
    pairs: int = args.pairs or (5 if quick else 15)
    started = time.perf_counter()

    def step(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    step("preparing assets, keywords and audio")
    setup = prepare(quick)
    if args.peer_only:
        step("total CPU, kwsd vs sherpa-onnx")
        peer = bench_peer(setup, quick, pairs, step)
        standin = standin_cost(setup, 3 if quick else 7)
        lines = peer_section(setup, peer, standin, sherpa_loads_standin(setup), quick)
        print("\n".join([machine_table(), *lines]))
        return 0
    frame_sets = {
        "real encoder (light_up fixture)": read_frames(
            setup.assets / "fixtures" / "ref_encoder_light_up.bin"
        ),
        "stand-in encoder on espeak-ng": encode_all(setup.standin.backend, setup.espeak),
    }
    step("search per frame")
    search = bench_search(setup, frame_sets, repeats=5 if quick else 20)
    step("keyword-list updates")
    kw_costs = bench_keyword_lists(setup, repeats=3 if quick else 10)
    step("fbank")
    fbank = bench_fbank(setup.speech, repeats=2 if quick else 5)
    step("encoders")
    encoders = {
        "stand-in (GRU)": bench_encoder(setup.standin.backend, setup.speech, 1 if quick else 3),
        "zipformer-random (real architecture, int8)": bench_encoder(
            setup.zipformer_random.backend, setup.speech, 1 if quick else 3
        ),
        "synthetic (zipformer2 I/O)": bench_encoder(
            setup.synthetic.backend, setup.speech, 1 if quick else 3
        ),
    }
    step("sherpa-onnx with the stand-in encoder")
    standin_note = sherpa_loads_standin(setup)
    step("total CPU, kwsd vs sherpa-onnx")
    peer = bench_peer(setup, quick, pairs, step)
    standin = standin_cost(setup, 3 if quick else 7)
    text = report(
        setup,
        quick,
        search,
        kw_costs,
        fbank,
        encoders,
        peer,
        standin,
        standin_note,
        time.perf_counter() - started,
    )
    print(text)
    if not args.no_write:
        write_section("engine", text)
        step("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
