"""Streams held at real time by `kwsd wyoming`, and decoding capacity against sherpa-onnx.

Run: `python bench/wyoming_load.py [--quick]`; it rewrites the "wyoming" section of
docs/benchmarks.md. All of it uses zipformer-random (the real encoder's architecture
and size with random weights: it costs what the real encoder costs and recognises
nothing) with the real decoder and joiner.

1. *Capacity in one process*: N streams of real speech decoded as fast as possible,
   320 ms blocks, every stream's ready chunks decoded together: kwsd's `StreamBatch`
   against sherpa-onnx's `decode_streams`, in interleaved runs. CPU per stream per
   audio second, and the streams one core holds at that cost.
2. *Streams held by the server*: a Wyoming server in its own process (as `kwsd
   wyoming` runs it) and N `wyoming`-package clients in this one, streaming as Home
   Assistant does: 16 kHz 16-bit mono in chunks of 1,024 samples at real-time pace,
   starts spread over a second. Measured: the delay from each client's `audio-stop` to
   its final answer (a `pong` to a ping sent right after, which the server sends
   after the stream's answers), and whether every stream got its answer. N grows
   until the p95 delay passes 1 s or an answer is missing. The same run measures the
   server as it was before issue 13 (`--baseline`), for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))

from common import (
    assets_dir,
    corpus_audio,
    load_average,
    machine_table,
    write_section,
)

if TYPE_CHECKING:
    from kwsd.spotter import KeywordSpotter

RATE, WIDTH, CHUNK_SAMPLES = 16000, 2, 1024
BLOCK = 5120  # 320 ms: what the capacity runs feed per step
ENCODER = "zipformer-random/encoder-epoch-12-avg-2-chunk-16-left-64{}.onnx"
KEYWORDS = ["HEY COMPUTER", "TURN ON THE LIGHTS", "GOOD NIGHT"]
TAIL = np.zeros(int(0.8 * RATE), np.float32)
P95_LIMIT_S = 1.0
BASELINE = "d9df116^"  # the server before issue 13: a thread hop per chunk and connection


def encoder_path(assets: Path, precision: str) -> Path:
    return assets / ENCODER.format(".int8" if precision == "int8" else "")


@functools.cache
def zipformer_spotter(precision: str) -> KeywordSpotter:
    """zipformer-random with the real decoder and joiner of `precision`, loaded once.

    Imported here, not at the top: `--serve` may run an older kwsd (`--baseline`).
    """
    from kwsd.model.bundle import open_bundle
    from kwsd.spotter import BackendOptions, KeywordSpotter

    assets = assets_dir()
    bundle = open_bundle(
        assets / "model", precision=precision, encoder_override=encoder_path(assets, precision)
    )
    return KeywordSpotter.from_bundle(
        bundle,
        backend=BackendOptions(runtime="onnx", precision=precision),  # type: ignore[arg-type]
    )


# -- the server, in its own process -------------------------------------------------
def serve(precision: str, workers: int) -> None:
    """`--serve`: a Wyoming server on a free port; stops when stdin closes, then prints
    the CPU time it and its decode processes used."""
    from kwsd.wyoming.server import WyomingServer

    spotter = zipformer_spotter(precision)
    keywords = spotter.compile(KEYWORDS)
    extra: dict[str, object] = {}
    if workers:
        from kwsd.wyoming.engine import DecodeOptions

        extra["decoding"] = DecodeOptions(workers=workers, load=spotter.loader())

    def cpu_now(server: WyomingServer) -> float:
        """CPU seconds of this process and its decode processes so far."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = time.process_time()
        engine = getattr(server, "engine", None)
        for shard in getattr(engine, "shards", []):
            pid = getattr(shard, "pid", None)
            if pid is not None:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / ticks
        return total

    try:
        from kwsd.wyoming.limits import ConnectionLimits
    except ImportError:  # the server before issue 12 had no connection limit
        pass
    else:
        extra["limits"] = ConnectionLimits(max_connections=1024)  # the default 32 would refuse

    async def run() -> float:
        server = WyomingServer(spotter, lambda: keywords, version="bench", **extra)  # type: ignore[arg-type]
        address = await server.start("tcp://127.0.0.1:0")  # "tcp://127.0.0.1:PORT"
        ready = cpu_now(server)  # start-up (model loads, batch probes) is not serving
        print(f"PORT {address.rsplit(':', 1)[1]}", flush=True)
        await asyncio.to_thread(sys.stdin.read)
        served = cpu_now(server) - ready
        await server.close()
        return served

    print("CPU", json.dumps(asyncio.run(run())), flush=True)


@dataclass(frozen=True, slots=True)
class ServerSetup:
    label: str
    precision: str
    workers: int
    tree: Path | None  # None: this checkout


class ServerProcess:
    def __init__(self, setup: ServerSetup) -> None:
        env = dict(os.environ)
        if setup.tree is not None:
            env["PYTHONPATH"] = str(setup.tree)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                "--precision",
                setup.precision,
                "--workers",
                str(setup.workers),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"the server did not start ({setup.label}): {line!r}")
        self.port = int(line.split()[1])

    def stop(self) -> float:
        """Stop it; the CPU seconds it used (server and decode processes)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        cpu = 0.0
        for line in self.proc.stdout:
            if line.startswith("CPU "):
                cpu = float(line.split()[1])
        self.proc.wait(timeout=60)
        return cpu


# -- the clients -------------------------------------------------------------------
async def one_client(port: int, pcm: bytes, start_after: float) -> tuple[float, float]:
    """Stream `pcm` at real time; (seconds from audio-stop to the final answer, the
    client's own worst lateness against its schedule)."""
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.ping import Ping, Pong

    await asyncio.sleep(start_after)
    late = 0.0
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(AudioStart(rate=RATE, width=WIDTH, channels=1).event())
        step = CHUNK_SAMPLES * WIDTH
        began = time.monotonic()
        for n, offset in enumerate(range(0, len(pcm), step)):
            due = began + n * CHUNK_SAMPLES / RATE
            now = time.monotonic()
            late = max(late, now - due)
            await asyncio.sleep(max(0.0, due - now))
            chunk = AudioChunk(
                rate=RATE, width=WIDTH, channels=1, audio=pcm[offset : offset + step]
            )
            await client.write_event(chunk.event())
        stopped = time.monotonic()
        await client.write_event(AudioStop().event())
        await client.write_event(Ping(text="end").event())
        while (event := await client.read_event()) is not None:
            if Pong.is_type(event.type):
                return time.monotonic() - stopped, late
    raise RuntimeError("the server closed the connection")


@dataclass(frozen=True, slots=True)
class Level:
    streams: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    answered: int
    client_late_ms: float
    server_cpu_s: float
    audio_s: float
    load: float

    @property
    def holds(self) -> bool:
        return self.answered == self.streams and self.p95_ms <= P95_LIMIT_S * 1000


async def clients(port: int, pcms: Sequence[bytes]) -> list[tuple[float, float] | None]:
    rng = np.random.default_rng(len(pcms))
    starts = rng.uniform(0.0, 1.0, len(pcms))

    async def guarded(pcm: bytes, start: float) -> tuple[float, float] | None:
        try:
            return await asyncio.wait_for(one_client(port, pcm, start), len(pcm) / 16000 + 120)
        except (OSError, RuntimeError, TimeoutError):
            return None

    return list(await asyncio.gather(*(guarded(p, s) for p, s in zip(pcms, starts, strict=True))))


def run_level(setup: ServerSetup, count: int, audio: np.ndarray) -> Level:
    seconds = len(audio) / RATE
    pcms = []
    for i in range(count):  # each stream its own stretch of the speech
        shifted = np.roll(audio, i * len(audio) // max(count, 1))
        pcms.append((np.clip(shifted, -1, 0.999) * 32768).astype("<i2").tobytes())
    server = ServerProcess(setup)
    try:
        results = asyncio.run(clients(server.port, pcms))
    finally:
        cpu = server.stop()
    got = [r for r in results if r is not None]
    ms = np.asarray([d for d, _ in got]) * 1000 if got else np.asarray([np.inf])
    return Level(
        streams=count,
        p50_ms=float(np.percentile(ms, 50)),
        p95_ms=float(np.percentile(ms, 95)),
        max_ms=float(ms.max()),
        answered=len(got),
        client_late_ms=max((late for _, late in got), default=0.0) * 1000,
        server_cpu_s=cpu,
        audio_s=seconds * count,
        load=os.getloadavg()[0],
    )


# -- capacity in one process --------------------------------------------------------
def kwsd_capacity(precision: str, streams: Sequence[np.ndarray]) -> float:
    """CPU ms per stream per audio second: all streams through one `StreamBatch`."""
    spotter = zipformer_spotter(precision)
    keywords = spotter.compile(KEYWORDS)
    batch = spotter.create_batch()
    members = [batch.add_stream(keywords) for _ in streams]
    t0 = time.process_time()
    for start in range(0, len(streams[0]), BLOCK):
        for member, audio in zip(members, streams, strict=True):
            member.accept(audio[start : start + BLOCK])
        batch.drain()
    for member in members:
        member.finish()
    batch.drain()
    used = time.process_time() - t0
    return used * 1000 / (len(streams) * len(streams[0]) / RATE)


@functools.cache
def sherpa_spotter(precision: str, workdir: Path) -> Any:
    """sherpa-onnx's `KeywordSpotter` on the same files and keywords, loaded once."""
    import sherpa_onnx
    from sherpa_peer import keyword_file

    assets = assets_dir()
    suffix = ".int8.onnx" if precision == "int8" else ".onnx"
    model = assets / "model"
    keywords = workdir / "keywords.txt"
    keywords.write_text(
        keyword_file(zipformer_spotter("fp32").compile(KEYWORDS))[0], encoding="utf-8"
    )
    return sherpa_onnx.KeywordSpotter(
        tokens=str(model / "tokens.txt"),
        encoder=str(encoder_path(assets, precision)),
        decoder=str(model / "decoder-epoch-12-avg-2-chunk-16-left-64.onnx"),
        joiner=str(model / f"joiner-epoch-12-avg-2-chunk-16-left-64{suffix}"),
        keywords_file=str(keywords),
        num_threads=1,
        provider="cpu",
        max_active_paths=4,
    )


def sherpa_capacity(precision: str, streams: Sequence[np.ndarray], workdir: Path) -> float:
    """The same for sherpa-onnx: every ready stream in one `decode_streams` call."""
    sp = sherpa_spotter(precision, workdir)
    members = [sp.create_stream() for _ in streams]

    def drain() -> None:
        while ready := [m for m in members if sp.is_ready(m)]:
            sp.decode_streams(ready)
            for m in ready:
                if sp.get_result(m):
                    sp.reset_stream(m)

    t0 = time.process_time()
    for start in range(0, len(streams[0]), BLOCK):
        for member, audio in zip(members, streams, strict=True):
            member.accept_waveform(RATE, audio[start : start + BLOCK])
        drain()
    for member in members:
        member.accept_waveform(RATE, TAIL)
        member.input_finished()
    drain()
    used = time.process_time() - t0
    return used * 1000 / (len(streams) * len(streams[0]) / RATE)


@dataclass(frozen=True, slots=True)
class Capacity:
    label: str
    streams: int
    kwsd_ms: float  # median CPU ms per stream per audio second
    sherpa_ms: float
    ratio: float  # median of per-pair kwsd / sherpa-onnx


def capacity(
    counts: Sequence[int], audio: np.ndarray, seconds: float, repeats: int, workdir: Path
) -> list[Capacity]:
    out: list[Capacity] = []
    length = int(seconds * RATE)
    for precision in ("fp32", "int8"):
        for count in counts:
            streams = [
                np.roll(audio, i * len(audio) // count)[:length].astype(np.float32)
                for i in range(count)
            ]
            kwsd_capacity(precision, streams[:1])  # warm-up, both
            sherpa_capacity(precision, streams[:1], workdir)
            k_runs, s_runs = [], []
            for r in range(repeats):  # ABBA
                if r % 2 == 0:
                    k_runs.append(kwsd_capacity(precision, streams))
                    s_runs.append(sherpa_capacity(precision, streams, workdir))
                else:
                    s_runs.append(sherpa_capacity(precision, streams, workdir))
                    k_runs.append(kwsd_capacity(precision, streams))
            ratios = [k / s for k, s in zip(k_runs, s_runs, strict=True)]
            row = Capacity(
                label=f"{precision} encoder and joiner",
                streams=count,
                kwsd_ms=statistics.median(k_runs),
                sherpa_ms=statistics.median(s_runs),
                ratio=statistics.median(ratios),
            )
            print(
                f"capacity {row.label} x{count}: kwsd {row.kwsd_ms:.1f} sherpa "
                f"{row.sherpa_ms:.1f} ms/s ({row.ratio:.2f}x)",
                flush=True,
            )
            out.append(row)
    return out


# -- report -------------------------------------------------------------------------
def report(
    caps: list[Capacity],
    held: dict[str, list[Level]],
    seconds: float,
    quick: bool,
    elapsed: float,
    loads: tuple[str, str],
) -> str:
    cores = os.cpu_count() or 1
    lines = [
        "## Wyoming server: streams held at real time (`bench/wyoming_load.py`)",
        "",
        f"Run {'with `--quick` ' if quick else ''}in {elapsed:.0f} s. Encoder: "
        "zipformer-random (the real architecture and size, random weights: what the real "
        "encoder costs); real decoder and joiner; keywords HEY COMPUTER, TURN ON THE "
        "LIGHTS, GOOD NIGHT; real speech from the corpus.",
        "",
        f"Load average at the start / end: {loads[0]}; {loads[1]}.",
        "",
        machine_table(),
        "### Decoding capacity in one process, against sherpa-onnx",
        "",
        "N streams decoded as fast as possible in 320 ms blocks; after each block every "
        "ready stream is decoded together (kwsd `StreamBatch.drain`, sherpa-onnx "
        "`decode_streams`), one thread each. Process CPU per stream per audio second, "
        "medians of interleaved runs; *streams per core* is 1,000 / that. kwsd batches "
        "only what stays exact (the fp32 files; the int8 encoder and joiner run one "
        "stream per call, see `bench/multistream.py`); sherpa-onnx batches int8 anyway.",
        "",
        "| model files | streams | kwsd ms/s per stream | sherpa-onnx ms/s per stream "
        "| kwsd/sherpa-onnx | kwsd streams per core | sherpa-onnx streams per core |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in caps:
        lines.append(
            f"| {c.label} | {c.streams} | {c.kwsd_ms:.1f} | {c.sherpa_ms:.1f} | "
            f"{c.ratio:.2f}× | {1000 / c.kwsd_ms:.0f} | {1000 / c.sherpa_ms:.0f} |"
        )
    lines += [
        "",
        "### Streams held by the server",
        "",
        f"The server runs in its own process; {seconds:.0f} s of speech per stream from "
        "`wyoming`-package clients in the benchmark's process (on the same "
        f"{cores}-core machine, so they take some of its CPU), 1,024-sample chunks at "
        "real-time pace. *Delay*: `audio-stop` to the final answer. A level *holds* when "
        f"every stream is answered and the p95 delay is ≤ {P95_LIMIT_S:.0f} s. *Server "
        "CPU*: the server's and its decode processes' CPU per stream per audio second. "
        "*Client late*: the clients' worst lateness against their schedule (high values "
        "mean the machine, not only the server, was saturated).",
        "",
        "| server | streams | p50 ms | p95 ms | max ms | answered | holds | server CPU ms/s "
        "per stream | client late ms | load (1 min) |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    most: dict[str, int] = {}
    for label, levels in held.items():
        for lv in levels:
            lines.append(
                f"| {label} | {lv.streams} | {lv.p50_ms:.0f} | {lv.p95_ms:.0f} | "
                f"{lv.max_ms:.0f} | {lv.answered}/{lv.streams} | "
                f"{'yes' if lv.holds else '**no**'} | "
                f"{lv.server_cpu_s * 1000 / lv.audio_s:.1f} | {lv.client_late_ms:.0f} | "
                f"{lv.load:.2f} |"
            )
            if lv.holds:
                most[label] = max(most.get(label, 0), lv.streams)
    lines += ["", "Most streams held (the largest level that held):", ""]
    for label in held:
        lines.append(f"- {label}: {most.get(label, 0)}")
    baseline = next((v for k, v in most.items() if k.startswith("before")), None)
    best = max((v for k, v in most.items() if not k.startswith("before")), default=0)
    if baseline:
        lines.append(
            f"- best of this tree against the server before issue 13: {best} / {baseline} = "
            f"{best / baseline:.2f}× (target: ≥ 96 streams, 2× the issue's measurement)"
        )
    cheapest = min((c.kwsd_ms for c in caps), default=0.0)
    if cheapest:
        lines += [
            "",
            f"Decoding alone, at its cheapest in the capacity table ({cheapest:.1f} ms per "
            f"stream per audio second), would hold about {cores * 1000 / cheapest:.0f} streams "
            f"on this machine's {cores} cores; the server's protocol work (reading and "
            "converting 15.6 chunks per second per stream) and the load clients share those "
            "cores. The issue's target of 96 was set on a machine where zipformer-random's "
            "int8 encoder took 7.2 ms per 320 ms chunk; here it takes about twice that (see "
            "`bench/engine.py`'s encoder table), so 96 is beyond what this machine's cores "
            "can encode.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter audio, fewer levels")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        help=f"revision of the server to compare with (default {BASELINE}; '' to skip)",
    )
    parser.add_argument(
        "--levels", default="1,2,4,8,16,24,32,40,48,56,64,80,96,112,128", help="stream counts"
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not write the doc")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.precision, args.workers)
        return 0

    began = time.monotonic()
    load_start = load_average()
    assets = assets_dir()
    seconds = 10.0 if args.quick else 15.0
    audio = corpus_audio(assets, 120.0)
    levels = [int(n) for n in args.levels.split(",")]
    cores = os.cpu_count() or 1
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        caps = capacity(
            [1, 16] if args.quick else [1, 16, 32], audio, 10.0, 2 if args.quick else 3, tmp
        )
        setups = [
            ServerSetup("this tree, one decode thread, int8", "int8", 0, None),
            ServerSetup("this tree, one decode thread, fp32", "fp32", 0, None),
            ServerSetup("this tree, 1 decode process, fp32", "fp32", 1, None),
            ServerSetup(f"this tree, {cores} decode processes, fp32", "fp32", cores, None),
            ServerSetup(f"this tree, {cores} decode processes, int8", "int8", cores, None),
        ]
        if args.baseline:
            tree = tmp / "baseline"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(tree), args.baseline],
                check=True,
                capture_output=True,
            )
            stack.callback(
                subprocess.run,
                ["git", "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )
            setups.insert(
                0, ServerSetup(f"before issue 13 ({args.baseline}), int8", "int8", 0, tree)
            )
        # Level by level, every setup that still holds takes its turn: whatever else
        # the machine does meanwhile hits all of them alike.
        held: dict[str, list[Level]] = {setup.label: [] for setup in setups}
        running = list(setups)
        for count in levels:
            for setup in list(running):
                level = run_level(setup, count, audio[: int(seconds * RATE)])
                held[setup.label].append(level)
                print(
                    f"{setup.label} x{count}: p95 {level.p95_ms:.0f} ms, "
                    f"answered {level.answered}/{count}, holds {level.holds}",
                    flush=True,
                )
                if not level.holds:
                    running.remove(setup)
            if not running:
                break
    body = report(
        caps, held, seconds, args.quick, time.monotonic() - began, (load_start, load_average())
    )
    print(body)
    if not args.no_write:
        write_section("wyoming", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
