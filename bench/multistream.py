"""Many streams on one core: `StreamBatch` against the same streams decoded one by one.

Run: `python bench/multistream.py [--quick] [--no-write]`. Writes its section of
docs/benchmarks.md. One ONNX Runtime thread, one process: the cost per stream of a
server that holds N satellites. Each run decodes N streams of distinct real speech
(or espeak-ng speech for the stand-in encoder), fed in 320 ms blocks, once as N
`KeywordStream`s one after the other and once as one `StreamBatch` stepped after
every block, and compares the process CPU time of the two in the same run. Both
decode the same audio with the same keywords, and the benchmark checks that they find
the same detections.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    CHUNK_SAMPLES,
    FloatArray,
    Stats,
    assets_dir,
    corpus_audio,
    corpus_phrases,
    espeak_audio,
    load_average,
    machine_table,
    write_section,
)

from kwsd import BackendOptions, Detection, KeywordSet, KeywordSpotter, SearchOptions
from kwsd.backends.onnx import OnnxBackend

STREAM_COUNTS = (1, 2, 4, 8, 16)
ZIPFORMER = "zipformer-random/encoder-epoch-12-avg-2-chunk-16-left-64{}.onnx"
ESPEAK = (
    "good evening everyone, hey computer, turn on the lights in the living room please",
    "could you open the garage door and then set the volume up a little",
    "good night, lights off in the kitchen and lock the front door",
    "hey computer, what time is it, and play some quiet music in the bedroom",
)


@dataclass(frozen=True, slots=True)
class Encoder:
    label: str
    spotter: KeywordSpotter
    exact: bool  # StreamBatch(exact=...)
    audio: FloatArray  # a long stretch; stream i decodes its own slice


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    streams: int
    plan: str
    alone: Stats  # CPU ms per stream per audio second, streams one by one
    batched: Stats  # the same, in one StreamBatch
    same_detections: bool
    detections: int


def spotter_for(assets: Path, encoder: Path | None, precision: str) -> KeywordSpotter:
    """Real decoder and joiner of `precision`; the stand-in encoder unless `encoder`."""
    options = BackendOptions(runtime="onnx", precision="int8" if precision == "int8" else "fp32")
    base = KeywordSpotter.from_assets(assets, backend=options, search=SearchOptions())
    if encoder is None:
        return base
    bundle = base.bundle
    assert bundle is not None
    return base.with_backend(OnnxBackend(encoder, bundle.decoder, bundle.joiner, num_threads=1))


def slices(audio: FloatArray, count: int, seconds: float) -> list[FloatArray]:
    """`count` different stretches of `seconds` each (wrapping around a shorter source)."""
    length = int(seconds * 16000)
    step = max(1, (len(audio) - length) // max(1, count)) if len(audio) > length else 0
    out = []
    for i in range(count):
        start = (i * step) % max(1, len(audio) - length + 1) if step else 0
        piece = audio[start : start + length]
        if len(piece) < length:  # shorter source: repeat it
            piece = np.resize(audio, length)
        out.append(np.ascontiguousarray(piece))
    return out


def decode_alone(
    spotter: KeywordSpotter, ks: KeywordSet, streams: list[FloatArray]
) -> list[list[Detection]]:
    found = []
    for audio in streams:
        stream = spotter.create_stream(ks)
        got: list[Detection] = []
        for i in range(0, len(audio), CHUNK_SAMPLES):
            got += stream.accept(audio[i : i + CHUNK_SAMPLES])
        found.append(got + stream.finish())
    return found


def decode_batched(
    spotter: KeywordSpotter, ks: KeywordSet, streams: list[FloatArray], exact: bool
) -> list[list[Detection]]:
    batch = spotter.create_batch(exact=exact)
    members = [batch.add_stream(ks) for _ in streams]
    found: list[list[Detection]] = [[] for _ in streams]
    length = max(len(a) for a in streams)
    for i in range(0, length, CHUNK_SAMPLES):
        for member, audio in zip(members, streams, strict=True):
            member.accept(audio[i : i + CHUNK_SAMPLES])
        for member, got in batch.step().items():
            found[members.index(member)] += got
    for member in members:
        member.finish()
    for member, got in batch.drain().items():
        found[members.index(member)] += got
    return found


def measure(enc: Encoder, ks: KeywordSet, count: int, seconds: float, repeats: int) -> Row:
    streams = slices(enc.audio, count, seconds)
    audio_s = count * seconds
    # Warm the shared decoder cache and the batch plan, so neither side pays them.
    decode_alone(enc.spotter, ks, streams[:1])
    plan = enc.spotter.create_batch(exact=enc.exact).plan
    alone_ms, batched_ms = [], []
    same = True
    found_alone: list[list[Detection]] = []
    for _ in range(repeats):  # interleaved, so both see the same machine noise
        t0 = time.process_time()
        found_alone = decode_alone(enc.spotter, ks, streams)
        t1 = time.process_time()
        found_batched = decode_batched(enc.spotter, ks, streams, enc.exact)
        t2 = time.process_time()
        alone_ms.append((t1 - t0) * 1e3 / audio_s)
        batched_ms.append((t2 - t1) * 1e3 / audio_s)
        same = same and found_batched == found_alone
    parts = [p for p, on in (("encoder", plan.encoder), ("joiner", plan.joiner)) if on]
    return Row(
        enc.label,
        count,
        " + ".join(parts) if parts else "nothing (one stream per call)",
        Stats.of(alone_ms),
        Stats.of(batched_ms),
        same,
        sum(len(f) for f in found_alone),
    )


def report(rows: list[Row], quick: bool, seconds: float, elapsed: float, loads: list[str]) -> str:
    lines = ["## Many streams on one core (`bench/multistream.py`)", ""]
    lines.append(
        f"Run {'with `--quick`' if quick else 'in full'} in {elapsed:.0f} s; one process, "
        f"ONNX Runtime `num_threads=1`. Each stream decodes its own {seconds:.0f} s of speech "
        "in 320 ms blocks. *Alone*: the streams as `KeywordStream`s, one after the other; "
        "*batched*: one `StreamBatch`, stepped after every block (so every step encodes all "
        "N streams in one call). Process CPU time per stream per audio second, medians (90th "
        "percentiles) of interleaved runs. *Gain* is alone / batched of the medians, measured "
        "in one run. *Same detections*: every stream found exactly what it found alone."
    )
    lines += ["", f"Load average at the start / end: {loads[0]}; {loads[-1]}.", ""]
    lines += [machine_table(), ""]
    lines += [
        "| encoder (decoder, joiner) | streams | batched parts | alone ms/s | batched ms/s | "
        "gain | same detections | detections |",
        "|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.label} | {r.streams} | {r.plan} | {r.alone.median:.2f} ({r.alone.p90:.2f}) | "
            f"{r.batched.median:.2f} ({r.batched.p90:.2f}) | "
            f"{r.alone.median / r.batched.median:.2f}× | {'yes' if r.same_detections else '**no**'}"
            f" | {r.detections} |"
        )
    lines += [
        "",
        "- *exact* batches only the parts that give each stream what it gets alone (checked "
        "per model when the batch is created). The int8 encoder and joiner quantize their "
        "activations with one scale per call (ONNX Runtime's dynamic quantization), so "
        "batching them lets one stream's level shift another's scores: exact batching keeps "
        "them one stream per call; `create_batch(exact=False)` batches them anyway (its "
        "rows show what that buys, and whether detections stayed the same on this audio). "
        "The fp32 files batch exactly.",
        "- zipformer-random is the real encoder architecture with random weights: it costs "
        "what the real encoder costs and recognises nothing (0 detections is expected).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (a few minutes)")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    args = parser.parse_args(argv)
    quick: bool = args.quick
    started = time.perf_counter()
    loads = [load_average()]
    assets = assets_dir()

    def step(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    step("loading models and audio")
    seconds = 10.0 if quick else 30.0
    repeats = 2 if quick else 5
    speech = corpus_audio(assets, seconds * 4)
    espeak = espeak_audio(ESPEAK)
    encoders = [
        Encoder(
            "zipformer-random int8 (fp32 decoder, int8 joiner), exact",
            spotter_for(assets, assets / ZIPFORMER.format(".int8"), "int8"),
            True,
            speech,
        ),
        Encoder(
            "zipformer-random int8 (fp32 decoder, int8 joiner), exact=False",
            spotter_for(assets, assets / ZIPFORMER.format(".int8"), "int8"),
            False,
            speech,
        ),
        Encoder(
            "zipformer-random fp32 (fp32 decoder, fp32 joiner), exact",
            spotter_for(assets, assets / ZIPFORMER.format(""), "fp32"),
            True,
            speech,
        ),
        Encoder(
            "stand-in GRU fp32 on espeak-ng (fp32 decoder, int8 joiner), exact",
            spotter_for(assets, None, "int8"),
            True,
            espeak,
        ),
        Encoder(
            "stand-in GRU fp32 on espeak-ng (fp32 decoder, int8 joiner), exact=False",
            spotter_for(assets, None, "int8"),
            False,
            espeak,
        ),
    ]
    phrases = corpus_phrases(assets, 10, first=("LIGHT UP", "HEY COMPUTER"))
    rows = []
    counts = STREAM_COUNTS[:4] if quick else STREAM_COUNTS
    for enc in encoders:
        ks = enc.spotter.compile(phrases)
        for count in counts:
            step(f"{enc.label}: {count} streams")
            rows.append(measure(enc, ks, count, seconds, repeats))
    loads.append(load_average())
    text = report(rows, quick, seconds, time.perf_counter() - started, loads)
    print(text)
    if not args.no_write:
        write_section("multistream", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
