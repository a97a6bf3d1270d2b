"""Daemon benchmark: detection latency to an MQTT subscriber, CPU and memory at real time.

Run: `python bench/daemon.py [--quick]`. Writes its section of docs/benchmarks.md.

The real daemon (`kwsd.daemon.Daemon`: file source paced at real time, engine worker
thread, MQTT link) runs in this process against a private mosquitto on a free loopback
port; a separate subscriber process stamps each detection on arrival with
`time.monotonic()`, which on Linux is the same clock the audio source stamps blocks
with. Speech is espeak-ng (what the stand-in encoder recognises), keyword commands with
pauses between them. Two instruments are attached through supported `Daemon` hooks,
neither replacing anything: the backend wrapper accumulates the worker thread's CPU time
inside the encoder, and the block observer notes the worker's CPU time per block and
which captured block produced each detection.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    SAMPLE_RATE,
    assets_dir,
    espeak_audio,
    machine_table,
    mosquitto,
    write_section,
)

from kwsd.backends.base import Backend, DelegatingBackend, EncoderState, FloatArray
from kwsd.config import Settings, load_settings
from kwsd.daemon import Daemon
from kwsd.detection import Detection
from kwsd.pipeline import BlockReport

KEYWORDS = ("HEY COMPUTER", "LIGHTS OFF", "OPEN THE GARAGE", "GOOD NIGHT", "VOLUME UP")
COMMANDS = (
    "hey computer",
    "lights off please",
    "open the garage",
    "good night everyone",
    "volume up",
    "okay, hey computer",
    "turn the lights off",
    "please open the garage",
    "good night",
    "turn the volume up",
)
HOST = "127.0.0.1"

SUBSCRIBER = """
import asyncio, json, sys, time
import aiomqtt

async def main(host, port, topic):
    async with aiomqtt.Client(host, int(port)) as client:
        await client.subscribe(topic, qos=1)
        print("ready", flush=True)
        async for message in client.messages:
            now = time.monotonic()
            print(json.dumps({"t": now, "payload": message.payload.decode()}), flush=True)

asyncio.run(main(*sys.argv[1:]))
"""


class EncoderTimer(DelegatingBackend):
    """Delegates to the real backend; adds up the calling thread's CPU time in run_chunk."""

    def __init__(self, inner: Backend) -> None:
        super().__init__(inner)
        self.cpu_s = 0.0
        self.calls = 0

    def run_chunk(self, feats: FloatArray, state: EncoderState) -> tuple[FloatArray, EncoderState]:
        t0 = time.thread_time()
        out = self.inner.run_chunk(feats, state)
        self.cpu_s += time.thread_time() - t0
        self.calls += 1
        return out


@dataclass(slots=True)
class Emitted:
    """A detection as it left the engine: the captured block that produced it."""

    det: Detection
    captured_at: float
    block_end: float  # stream seconds
    emitted_at: float


@dataclass(slots=True)
class Run:
    audio_s: float
    emitted: list[Emitted] = field(default_factory=list)
    received: dict[tuple[str, float], float] = field(default_factory=dict)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds, MiB)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    encoder_cpu_s: float = 0.0
    worker_cpu_s: float = 0.0  # the engine worker thread, all blocks (encoder included)
    encoder_calls: int = 0
    exit_code: int = -1
    stream_t0: float | None = None  # monotonic time of stream second 0


def make_audio(path: Path, count: int) -> float:
    sentences = [COMMANDS[i % len(COMMANDS)] for i in range(count)]
    audio = espeak_audio(sentences, gap_seconds=1.6)
    lead = np.zeros(SAMPLE_RATE, np.float32)  # 1 s before the first command
    audio = np.concatenate([lead, audio])
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    return len(audio) / SAMPLE_RATE


def watch_rss(run: Run, stop: threading.Event, started: float) -> None:
    proc = psutil.Process()
    while not stop.wait(0.5):
        run.rss_mb.append((time.monotonic() - started, proc.memory_info().rss / 2**20))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_subscriber(port: int, base: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SUBSCRIBER, HOST, str(port), f"{base}/detection"],
        stdout=subprocess.PIPE,
        text=True,
    )


def daemon_settings(
    workdir: Path, audio: Path, port: int, base: str, site: str, **extra: object
) -> Settings:
    """The daemon as a user runs it: file source, MQTT on, the bench keywords."""
    return load_settings(
        None,
        {
            "assets": str(assets_dir()),
            "site_id": site,
            "data_dir": str(workdir / f"{site}-data"),
            "audio.source": "file",
            "audio.file": str(audio),
            "audio.silence_warning_seconds": 0,
            "keywords.phrases": list(KEYWORDS),
            "mqtt.host": HOST,
            "mqtt.port": port,
            "mqtt.base_topic": base,
            "homeassistant.discovery": False,
            "health.enabled": False,
            **extra,
        },
    )


async def run_daemon(
    workdir: Path, audio: Path, audio_s: float, port: int, base: str, sub: subprocess.Popen[str]
) -> Run:
    settings = daemon_settings(workdir, audio, port, base, "bench", **{"audio.realtime": True})
    run = Run(audio_s)
    lines: list[str] = []
    try:
        assert sub.stdout is not None
        ready = await asyncio.to_thread(sub.stdout.readline)
        if ready.strip() != "ready":
            raise SystemExit("the MQTT subscriber did not start")
        reader = threading.Thread(target=lambda: lines.extend(sub.stdout or ()), daemon=True)
        reader.start()
        timer: list[EncoderTimer] = []

        def wrap(backend: Backend) -> Backend:
            timer.append(EncoderTimer(backend))
            return timer[0]

        def observe(report: BlockReport) -> None:
            block = report.block
            if block is None:  # the tail flushed at the end of the input
                return
            run.worker_cpu_s += report.cpu_seconds
            done = report.finished_at
            if block.captured_at is not None and run.stream_t0 is None:
                run.stream_t0 = block.captured_at - block.end
            for det in report.published:
                run.emitted.append(Emitted(det, block.captured_at or done, block.end, done))

        daemon = Daemon(
            settings, backend_wrapper=wrap, install_signal_handlers=False, block_observer=observe
        )
        task = asyncio.create_task(daemon.run())
        await daemon.started.wait()
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        stop = threading.Event()
        sampler = threading.Thread(target=watch_rss, args=(run, stop, wall0), daemon=True)
        sampler.start()
        run.exit_code = await task
        run.cpu_s, run.wall_s = cpu_seconds() - cpu0, time.monotonic() - wall0
        stop.set()
        run.encoder_cpu_s, run.encoder_calls = timer[0].cpu_s, timer[0].calls
        await asyncio.sleep(0.5)  # last messages reach the subscriber
    finally:
        sub.terminate()
        await asyncio.to_thread(sub.wait, 5)
    for line in lines:
        msg = json.loads(line)
        payload = json.loads(msg["payload"])
        run.received[(payload["keyword"], round(float(payload["start"]), 3))] = msg["t"]
    return run


def report(run: Run, quick: bool, count: int) -> str:
    lat, engine, user = [], [], []
    for e in run.emitted:
        got = run.received.get((e.det.keyword, round(e.det.start, 3)))
        if got is None:
            continue
        lat.append((got - e.captured_at) * 1e3)
        engine.append((e.emitted_at - e.captured_at) * 1e3)
        if run.stream_t0 is not None:
            user.append((got - (run.stream_t0 + e.det.end)) * 1e3)
    audio_s = run.audio_s
    rest_cpu = run.cpu_s - run.encoder_cpu_s
    rss = [mb for _, mb in run.rss_mb]
    early = [mb for t, mb in run.rss_mb if t <= 10.0] or rss[:1]
    lines = ["## Daemon at real time (`bench/daemon.py`)", ""]
    lines.append(
        f"Run {'with `--quick`' if quick else 'in full'}: {audio_s:.0f} s of espeak-ng speech "
        f"with {count} spoken commands ({', '.join(KEYWORDS)}) and 1.6 s pauses, read from a "
        "file paced at real time (100 ms blocks, as a microphone delivers them); the real "
        "daemon in-process with the stand-in encoder (real decoder/joiner), ONNX Runtime 1 "
        "thread, publishing over a private mosquitto on loopback; a subscriber in another "
        "process stamps arrivals. Exit code of the daemon at end of input: "
        f"{run.exit_code}."
    )
    lines += ["", machine_table(), ""]
    lines += [
        "### Latency",
        "",
        f"{len(run.emitted)} detections emitted, {len(run.received)} received by the "
        f"subscriber, {len(lat)} matched.",
        "",
        "| latency | p50 ms | p95 ms | max ms |",
        "|---|---:|---:|---:|",
    ]

    def row(name: str, values: list[float]) -> str:
        if not values:
            return f"| {name} | – | – | – |"
        arr = np.asarray(values)
        return (
            f"| {name} | {np.percentile(arr, 50):.1f} | {np.percentile(arr, 95):.1f} | "
            f"{arr.max():.1f} |"
        )

    lines += [
        row("processing: capture of the deciding audio block → MQTT receipt", lat),
        row("of which engine: capture → detection leaves the worker", engine),
        row("end of the keyword's last token → MQTT receipt (what a user feels)", user),
        "",
        "The last row adds the model's own delay: the search waits for trailing blank "
        "frames after the keyword, and audio reaches the encoder in 320 ms chunks.",
        "",
        "### CPU and memory at real time",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| wall time (daemon started → exit) | {run.wall_s:.1f} s |",
        f"| process CPU, all threads | {run.cpu_s:.2f} s = {100 * run.cpu_s / run.wall_s:.2f}% "
        "of one core |",
        f"| of which encoder `run_chunk` ({run.encoder_calls} chunks, stand-in) | "
        f"{run.encoder_cpu_s:.2f} s |",
        f"| everything except the encoder | {rest_cpu:.2f} s = "
        f"{1000 * rest_cpu / audio_s:.1f} ms CPU per audio second = "
        f"{100 * rest_cpu / run.wall_s:.2f}% of one core |",
        f"| – engine worker except the encoder (fbank, search, pipeline) | "
        f"{run.worker_cpu_s - run.encoder_cpu_s:.2f} s = "
        f"{1000 * (run.worker_cpu_s - run.encoder_cpu_s) / audio_s:.1f} ms per audio second |",
        f"| – everything else (event loop, file source, MQTT, logging, thread hand-offs) | "
        f"{run.cpu_s - run.worker_cpu_s:.2f} s = "
        f"{1000 * (run.cpu_s - run.worker_cpu_s) / audio_s:.1f} ms per audio second |",
    ]
    if rss:
        lines += [
            f"| RSS after start-up (first 10 s, max) | {max(early):.1f} MiB |",
            f"| RSS peak | {max(rss):.1f} MiB |",
            f"| RSS at the end | {rss[-1]:.1f} MiB |",
            f"| RSS growth after the first 10 s | {rss[-1] - max(early):+.1f} MiB over "
            f"{run.rss_mb[-1][0] - 10:.0f} s |",
        ]
    lines += [
        "",
        "The real Zipformer2 encoder is not available here; with it, only the encoder row "
        "changes (its cost is measured by the engine benchmark on machines that have it). "
        '"Everything else" includes reading the file: each 100 ms block is read in a '
        "worker thread (`asyncio.to_thread`) and handed to the engine thread; with a "
        "microphone, the sound device's callback thread takes the file reader's place. "
        "The RSS includes this benchmark's own imports and sampler thread.",
    ]
    return "\n".join(lines) + "\n"


@dataclass(slots=True)
class Soak:
    """RSS over one hour of audio decoded as fast as possible (a looping file)."""

    audio_s: float = 0.0
    wall_s: float = 0.0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (audio s, MiB)
    exit_code: int = -1


async def soak_daemon(workdir: Path, audio: Path, port: int, base: str, hours: float) -> Soak:
    settings = daemon_settings(
        workdir,
        audio,
        port,
        base,
        "soak",
        **{"audio.realtime": False, "audio.loop": True, "log.level": "warning"},
    )
    soak = Soak()
    target = hours * 3600.0
    proc = psutil.Process()
    next_sample = 0.0

    def observe(report: BlockReport) -> None:
        nonlocal next_sample
        block = report.block
        if block is None:
            return
        soak.audio_s = block.end
        if block.end >= next_sample:
            soak.rss_mb.append((block.end, proc.memory_info().rss / 2**20))
            next_sample += 60.0
        if block.end >= target:
            daemon.stop()

    daemon = Daemon(settings, install_signal_handlers=False, block_observer=observe)
    task = asyncio.create_task(daemon.run())
    await daemon.started.wait()
    wall0 = time.monotonic()
    soak.exit_code = await task
    soak.wall_s = time.monotonic() - wall0
    soak.rss_mb.append((soak.audio_s, proc.memory_info().rss / 2**20))
    return soak


def soak_report(soak: Soak) -> str:
    warm = [mb for t, mb in soak.rss_mb if t >= 300.0] or [soak.rss_mb[-1][1]]
    growth = soak.rss_mb[-1][1] - warm[0]
    verdict = "meets" if growth <= 2.0 else "MISSES"
    peak = max(mb for _, mb in soak.rss_mb)
    return "\n".join(
        [
            "",
            "### Memory over one hour of audio, as fast as possible",
            "",
            f"The same daemon (MQTT on, stand-in encoder) decoded {soak.audio_s / 3600:.2f} h of "
            f"looping command audio in {soak.wall_s:.0f} s of wall time. RSS is sampled every "
            "minute of audio; growth is measured from the 5-minute mark (after warm-up) "
            "to the end.",
            "",
            "| RSS at 5 min | RSS at end | peak | growth | target |",
            "|---:|---:|---:|---:|---|",
            f"| {warm[0]:.1f} MiB | {soak.rss_mb[-1][1]:.1f} MiB | {peak:.1f} MiB | "
            f"{growth:+.2f} MiB | ≤ 2 MiB: {verdict} |",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="about 80 s of audio")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    parser.add_argument(
        "--soak-hours", type=float, default=1.0, help="audio hours for the memory soak (0: skip)"
    )
    args = parser.parse_args(argv)
    count = 22 if args.quick else 45
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        audio = workdir / "commands.wav"
        audio_s = make_audio(audio, count)
        print(f"{audio_s:.0f} s of audio, {count} commands; running at real time", file=sys.stderr)
        with mosquitto(workdir, HOST) as port:
            base = f"kwsdbench/{uuid.uuid4().hex[:8]}"
            sub = start_subscriber(port, base)
            try:
                run = asyncio.run(run_daemon(workdir, audio, audio_s, port, base, sub))
            finally:
                if sub.poll() is None:
                    sub.kill()
                    sub.wait()
            soak = None
            if args.soak_hours > 0:
                print(f"memory soak: {args.soak_hours:g} h of audio", file=sys.stderr)
                soak = asyncio.run(
                    soak_daemon(workdir, audio, port, base + "/soak", args.soak_hours)
                )
    text = report(run, args.quick, count) + (soak_report(soak) if soak else "")
    print(text)
    if not args.no_write:
        write_section("daemon", text)
    return 0 if run.exit_code == 0 and (soak is None or soak.exit_code == 0) else 1


if __name__ == "__main__":
    raise SystemExit(main())
