"""Shared helpers for the benchmark scripts: assets, real speech, keyword lists, stats, report.

Benchmarks only use real data: the kws-assets corpus (real human speech), the real
encoder-frames fixture, and espeak-ng speech for the stand-in encoder (which was trained
on generated speech). The report goes into docs/benchmarks.md between per-script
markers so each script replaces only its own section.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
import platform
import random
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "docs" / "benchmarks.md"
SAMPLE_RATE = 16000
CHUNK_SAMPLES = 5120  # 320 ms: one encoder chunk of new audio

FloatArray = npt.NDArray[np.float32]


def assets_dir() -> Path:
    return Path(os.environ.get("KWSD_ASSETS", REPO.parent / "shared" / "kws-assets"))


# -- statistics ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Stats:
    median: float
    p90: float
    n: int
    p10: float = float("nan")

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        arr = np.asarray(values, dtype=np.float64)
        p10, median, p90 = np.percentile(arr, [10, 50, 90])
        return cls(float(median), float(p90), int(arr.size), float(p10))

    def spread(self, digits: int = 2, unit: str = "") -> str:
        """`median [p10–p90]`: the middle and the spread of repeated measurements."""
        return f"{self.median:.{digits}f}{unit} [{self.p10:.{digits}f}–{self.p90:.{digits}f}]"


# -- machine -------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> list[tuple[str, str]]:
    import onnxruntime as ort

    info = [
        ("date (UTC)", dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M")),
        ("CPU", cpu_model()),
        ("logical cores", str(os.cpu_count())),
        ("OS", f"{platform.system()} {platform.release()} ({platform.machine()})"),
        ("Python", platform.python_version()),
        ("numpy", np.__version__),
        ("onnxruntime", ort.__version__),
    ]
    try:
        import sherpa_onnx

        info.append(("sherpa-onnx", str(sherpa_onnx.__version__)))
    except ImportError:
        info.append(("sherpa-onnx", "not installed"))
    return info


def load_average() -> str:
    """The machine's load while a benchmark ran: its figures are only as good as this."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)"


def machine_table() -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in machine_info())
    return f"| machine | |\n|---|---|\n{rows}\n"


# -- real speech ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Utterance:
    path: Path
    duration: float
    transcript: str


def corpus_sentences(assets: Path) -> list[Utterance]:
    """The corpus' sentence utterances (not the isolated digits), in manifest order."""
    root = assets / "corpus"
    out: list[Utterance] = []
    with (root / "manifest.tsv").open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            if row["relpath"].startswith("fsdd"):
                continue
            out.append(
                Utterance(root / row["relpath"], float(row["duration_s"]), row["transcript"])
            )
    return out


def load_16k(path: Path) -> FloatArray:
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono: FloatArray = np.asarray(data.mean(axis=1), dtype=np.float32)
    if rate != SAMPLE_RATE:
        mono = np.asarray(soxr.resample(mono, rate, SAMPLE_RATE), dtype=np.float32)
    return mono


def corpus_audio(assets: Path, seconds: float) -> FloatArray:
    """At least `seconds` of real speech: corpus sentences concatenated, several speakers."""
    utts = corpus_sentences(assets)
    # Interleave sources so the audio is not one speaker only.
    by_source: dict[str, list[Utterance]] = {}
    for u in utts:
        by_source.setdefault(u.path.parent.name, []).append(u)
    order: list[Utterance] = []
    lists = list(by_source.values())
    for i in range(max(len(v) for v in lists)):
        order.extend(v[i] for v in lists if i < len(v))
    parts: list[FloatArray] = []
    total = 0
    for u in order:
        audio = load_16k(u.path)
        parts.append(audio)
        total += audio.size
        if total >= seconds * SAMPLE_RATE:
            break
    return np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]


def espeak_audio(
    sentences: Sequence[str], voice: str = "en-us+m3", gap_seconds: float = 0.3
) -> FloatArray:
    """Generated speech (what the stand-in encoder understands), with gaps, 16 kHz."""
    parts: list[FloatArray] = []
    gap = np.zeros(int(gap_seconds * SAMPLE_RATE), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(sentences):
            wav = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
            parts += [load_16k(wav), gap]
    return np.concatenate(parts)


# -- broker -------------------------------------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def mosquitto(workdir: Path, host: str = "127.0.0.1") -> Iterator[int]:
    """A private mosquitto on a free loopback port (its own config); yields the port."""
    port = free_port(host)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {host}\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type error\n"
    )
    exe = os.environ.get("KWSD_MOSQUITTO", "/usr/sbin/mosquitto")
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"mosquitto exited at start: {err.strip()}")
            try:
                socket.create_connection((host, port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("mosquitto did not start listening within 10 s") from None
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- keywords ------------------------------------------------------------------------
_WORD = re.compile(r"^[A-Z]+$")


def corpus_phrases(assets: Path, count: int, first: Sequence[str] = (), seed: int = 7) -> list[str]:
    """`count` distinct 2–3 word phrases taken from real transcripts (consecutive words).

    Each phrase has a word of at least four letters, so lists are not dominated by
    "OF THE"-style phrases nobody would configure.
    """
    grams: set[str] = set()
    for u in corpus_sentences(assets):
        words = [w for w in u.transcript.upper().split() if _WORD.match(w)]
        for n in (2, 3):
            for i in range(len(words) - n + 1):
                gram = words[i : i + n]
                if max(len(w) for w in gram) >= 4:
                    grams.add(" ".join(gram))
    pool = sorted(grams - set(first))
    random.Random(seed).shuffle(pool)
    phrases = list(first) + pool
    if len(phrases) < count:
        raise SystemExit(f"only {len(phrases)} phrases in the corpus, need {count}")
    return phrases[:count]


# -- report --------------------------------------------------------------------------
def write_section(name: str, body: str, report: Path = REPORT) -> None:
    """Replace this script's section of docs/benchmarks.md (create the file if needed)."""
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = (
        report.read_text()
        if report.exists()
        else (
            "# Benchmarks\n\nGenerated by the scripts in `bench/`; each script rewrites only its "
            "own section. Re-run them on your machine:\n`python bench/engine.py` and "
            "`python bench/daemon.py` (`--quick` for a short run).\n"
        )
    )
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
