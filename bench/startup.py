"""Start-up time and memory: `kwsd --help`, `kwsd detect` as a whole process, idle RSS.

Run: `python bench/startup.py [--quick] [--no-write]`. Writes its section of
docs/benchmarks.md. Every figure comes from fresh child processes, as a user starts
them: wall time of `kwsd --help` (repeated, hyperfine-style, medians), CPU time of a
whole `kwsd detect` process on one second of speech against a whole sherpa-onnx
process on the same file, and resident memory (psutil) of a process that holds the
model and a stream that has decoded real speech, with what makes it up, and what
each further stream of a `StreamBatch` adds.

The model is the real Zipformer2 architecture with random weights
(kws-assets `zipformer-random`, int8) with the release's real decoder and joiner: it
costs what the real model costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import soundfile as sf
from common import Stats, assets_dir, load_average, machine_table, write_section

ENCODER = "zipformer-random/encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx"
TARGET_HELP_S = 0.15
TARGET_RSS_MIB = 100.0
KWSD = Path(sys.executable).with_name("kwsd")

# Children print one JSON line. `rich` is hidden in the "as installed" runs: only the
# development tools pull it in, and structlog imports it when it is there.
HIDE_RICH = (
    "import sys, importlib.abc\n"
    "class _NoRich(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'rich' or name.startswith('rich.'):\n"
    "            raise ImportError('rich hidden: not a kwsd dependency')\n"
    "sys.meta_path.insert(0, _NoRich())\n"
)

KWSD_RSS = """
import json, sys, wave, psutil
import numpy as np
from kwsd import KeywordSpotter
proc = psutil.Process()
mib = lambda: proc.memory_info().rss / 2**20
model_dir, wav, streams = sys.argv[1], sys.argv[2], int(sys.argv[3])
exact = sys.argv[4] == "exact"
with wave.open(wav) as w:  # the stdlib reader: soundfile is not what is measured here
    rate = w.getframerate()
    audio = np.frombuffer(w.readframes(w.getnframes()), np.int16)
block = rate // 10
spotter = KeywordSpotter.from_model_dir(model_dir, keywords=["HEY COMPUTER", "LIGHTS OFF"])
loaded = mib()
stream = spotter.create_stream(sample_rate=rate)
for i in range(0, len(audio), block):
    stream.accept(audio[i : i + block])
idle = mib()
batch = spotter.create_batch(exact=exact)
members = [batch.add_stream(sample_rate=rate) for _ in range(streams)]
for i in range(0, min(len(audio), 5 * rate), block):
    for m in members:
        m.accept(audio[i : i + block])
    batch.step()
many = mib()
print(json.dumps({"loaded": loaded, "idle": idle, "many": many,
                  "modules": sorted(m for m in sys.modules if "." not in m)}))
"""

BARE_RSS = """
import json, sys, psutil
import numpy as np, onnxruntime as ort, kaldi_native_fbank as knf, sentencepiece as spm
proc = psutil.Process()
model_dir = sys.argv[1]
from pathlib import Path
root = Path(model_dir)
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
libs = proc.memory_info().rss / 2**20
enc = ort.InferenceSession(str(root / "encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx"), opts,
                           providers=["CPUExecutionProvider"])
dec = ort.InferenceSession(str(root / "decoder-epoch-12-avg-2-chunk-16-left-64.onnx"), opts,
                           providers=["CPUExecutionProvider"])
join = ort.InferenceSession(str(root / "joiner-epoch-12-avg-2-chunk-16-left-64.int8.onnx"), opts,
                            providers=["CPUExecutionProvider"])
sp = spm.SentencePieceProcessor(model_file=str(root / "bpe.model"))
fbank = knf.OnlineFbank(knf.FbankOptions())
state = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                          np.int64 if "int64" in i.type else np.float32)
         for i in enc.get_inputs() if i.name != "x"}
names = [n for n in state]
for _ in range(30):  # ten seconds of chunks
    out = enc.run(None, {"x": np.zeros((1, 45, 80), np.float32), **state})
    state = dict(zip(names, out[1:]))
    for _ in range(8):
        join.run(None, {"encoder_out": np.zeros((4, 320), np.float32),
                        "decoder_out": np.zeros((4, 320), np.float32)})
print(json.dumps({"libs": libs, "sessions": proc.memory_info().rss / 2**20}))
"""

SHERPA = """
import json, sys, resource
import soundfile as sf
import sherpa_onnx
model_dir, wav, keywords = sys.argv[1], sys.argv[2], sys.argv[3]
audio, rate = sf.read(wav, dtype="float32")
sp = sherpa_onnx.KeywordSpotter(
    tokens=f"{model_dir}/tokens.txt",
    encoder=f"{model_dir}/encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx",
    decoder=f"{model_dir}/decoder-epoch-12-avg-2-chunk-16-left-64.onnx",
    joiner=f"{model_dir}/joiner-epoch-12-avg-2-chunk-16-left-64.int8.onnx",
    keywords_file=keywords, num_threads=1, max_active_paths=4)
s = sp.create_stream()
s.accept_waveform(rate, audio)
s.accept_waveform(rate, [0.0] * int(0.8 * rate))
s.input_finished()
while sp.is_ready(s):
    sp.decode_stream(s)
    if sp.get_result(s):
        sp.reset_stream(s)
print(json.dumps({"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


@dataclass(frozen=True, slots=True)
class Timed:
    label: str
    wall: Stats  # seconds
    cpu: Stats  # seconds, user + system of the child
    fastest: float  # the quickest wall time: what an idle machine gives


def run_timed(label: str, argv: Sequence[str], runs: int, env: dict[str, str]) -> Timed:
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
    return Timed(label, Stats.of(walls), Stats.of(cpus), min(walls))


def child_json(code: str, args: Sequence[str], env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def model_dir(assets: Path, where: Path) -> Path:
    """The release layout: the zipformer-random encoder beside the real decoder/joiner."""
    for part in (assets / "model").iterdir():
        if part.suffix in (".onnx", ".txt", ".model"):
            (where / part.name).symlink_to(part)
    for part in (assets / "zipformer-random").glob("*.onnx"):
        (where / part.name).symlink_to(part)
    return where


def speech_file(where: Path, text: str) -> Path:
    wav = where / "speech.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+m3", "-w", str(wav), text], check=True)
    return wav


def mib(value: object) -> float:
    assert isinstance(value, int | float)
    return float(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    args = parser.parse_args(argv)
    runs = 5 if args.quick else 20
    started = time.perf_counter()
    loads = [load_average()]
    assets = assets_dir()
    env = {**os.environ, "KWSD_ASSETS": str(assets)}
    py = sys.executable
    added = 16
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model").mkdir()
        models = model_dir(assets, Path(tmp) / "model")
        one_second = speech_file(Path(tmp), "hey computer")
        long_dir = Path(tmp) / "long"
        long_dir.mkdir()
        long_speech = speech_file(
            long_dir,
            "good evening everyone, hey computer, turn on the lights in the living room "
            "please, and then lights off in the kitchen",
        )
        speech_seconds = sf.info(str(long_speech)).duration
        keywords = Path(tmp) / "keywords.txt"
        keywords.write_text("▁HE Y ▁COMP U TER\n")  # as kwsd compiles HEY COMPUTER

        timed = [
            run_timed("`python -c pass` (the interpreter alone)", [py, "-c", "pass"], runs, env),
            run_timed(
                "`python -c 'import numpy, onnxruntime'`",
                [py, "-c", "import numpy, onnxruntime"],
                runs,
                env,
            ),
            run_timed("`kwsd --help`", [str(KWSD), "--help"], runs, env),
            run_timed("`kwsd --version`", [str(KWSD), "--version"], runs, env),
        ]
        detect_runs = max(3, runs // 4)
        whole = [
            run_timed(
                "`kwsd detect` (1 s of speech)",
                [
                    str(KWSD),
                    "detect",
                    "--model-dir",
                    str(models),
                    "--keywords",
                    "HEY COMPUTER",
                    "--log-level",
                    "warning",
                    str(one_second),
                ],
                detect_runs,
                env,
            ),
            run_timed(
                "sherpa-onnx `KeywordSpotter` process (the same file)",
                [py, "-c", SHERPA, str(models), str(one_second), str(keywords)],
                detect_runs,
                env,
            ),
        ]
        rss_args = [str(models), str(long_speech), str(added)]
        kwsd_rss = child_json(KWSD_RSS, [*rss_args, "exact"], env)
        installed_rss = child_json(HIDE_RICH + KWSD_RSS, [*rss_args, "exact"], env)
        batched_rss = child_json(HIDE_RICH + KWSD_RSS, [*rss_args, "batched"], env)
        bare = child_json(BARE_RSS, [str(models)], env)
        sherpa = child_json(SHERPA, [str(models), str(long_speech), str(keywords)], env)
    loads.append(load_average())
    elapsed = time.perf_counter() - started

    help_row = next(t for t in timed if t.label == "`kwsd --help`")
    help_s, help_cpu = help_row.wall.median, help_row.cpu.median
    idle = mib(installed_rss["idle"])
    loaded_heavy = [
        m for m in ("pydantic", "structlog", "asyncio", "ssl") if m in installed_rss["modules"]
    ]
    heavy_note = (
        "none of pydantic, structlog, asyncio and ssl"
        if not loaded_heavy
        else f"{', '.join(loaded_heavy)} (and should not)"
    )
    lines = ["## Start-up and memory (`bench/startup.py`)", ""]
    lines.append(
        f"Run {'with `--quick`' if args.quick else 'in full'} in {elapsed:.0f} s. Fresh child "
        f"processes; {runs} runs per command (whole `detect` processes: {detect_runs}), "
        "medians (90th percentiles). Model: kws-assets `zipformer-random` int8 (the real "
        "Zipformer2 architecture, random weights) with the release's decoder and joiner."
    )
    lines += ["", f"Load average at the start / end: {loads[0]}; {loads[-1]}.", ""]
    lines += [machine_table(), ""]
    lines += ["| command | wall s | fastest wall s | CPU s |", "|---|---:|---:|---:|"]
    for t in timed + whole:
        lines.append(
            f"| {t.label} | {t.wall.median:.3f} ({t.wall.p90:.3f}) | {t.fastest:.3f} | "
            f"{t.cpu.median:.3f} ({t.cpu.p90:.3f}) |"
        )
    kw_cpu, sherpa_cpu = whole[0].cpu.median, whole[1].cpu.median
    lines += [
        "",
        f"- `kwsd --help`: {help_s:.3f} s median wall time (target ≤ {TARGET_HELP_S} s: "
        f"{'meets' if help_s <= TARGET_HELP_S else '**misses**'}; {help_cpu:.3f} s of CPU). "
        "On a loaded machine the wall time includes waiting for a core: compare it with "
        "the interpreter's own row. kwsd imports only the module of the command it runs; "
        "`--help` and `--version` import no numpy, ONNX Runtime or pydantic.",
        f"- A whole `kwsd detect` process costs {kw_cpu / sherpa_cpu:.2f}× the CPU of a whole "
        "sherpa-onnx process on the same file; most of it is start-up (the configuration "
        "with pydantic, structlog, the model and keyword compilation).",
        "",
        "| resident memory (MiB) | as installed (no `rich`) | development venv |",
        "|---|---:|---:|",
        f"| numpy, ONNX Runtime, kaldi-native-fbank, sentencepiece imported | "
        f"{mib(bare['libs']):.1f} | |",
        f"| ... plus the three sessions, after 10 s of encoder and joiner calls | "
        f"{mib(bare['sessions']):.1f} | |",
        f"| kwsd: model loaded (`KeywordSpotter.from_model_dir`) | "
        f"{mib(installed_rss['loaded']):.1f} | {mib(kwsd_rss['loaded']):.1f} |",
        f"| kwsd: idle, after a stream decoded {speech_seconds:.0f} s of speech | {idle:.1f} | "
        f"{mib(kwsd_rss['idle']):.1f} |",
        f"| kwsd: each further stream of an exact `StreamBatch` ({added} streams, 5 s each; "
        f"int8: one encoder call per stream) | {(mib(installed_rss['many']) - idle) / added:.2f}"
        f" | {(mib(kwsd_rss['many']) - mib(kwsd_rss['idle'])) / added:.2f} |",
        f"| kwsd: the same with `create_batch(exact=False)` (one encoder call of batch "
        f"{added}) | {(mib(batched_rss['many']) - mib(batched_rss['idle'])) / added:.2f} | |",
        f"| sherpa-onnx process, peak, same model and speech | {mib(sherpa['peak']):.1f} | |",
        "",
        f"- Idle RSS {idle:.1f} MiB (target ≤ {TARGET_RSS_MIB:.0f} MiB: "
        f"{'meets' if idle <= TARGET_RSS_MIB else '**misses**'}). Above the bare libraries "
        "and sessions: kwsd's own modules, the keyword graph and the decoder cache. A "
        f"program that only spots keywords imports {heavy_note}: keyword entries check "
        "themselves (kwsd/keywords/spec.py) and library log lines load structlog only "
        "when written (kwsd/liblog.py); the configuration and the daemon do import them "
        "(pydantic about 14 MiB, structlog with asyncio and OpenSSL about 7 MiB). ONNX "
        "Runtime's memory arena grows with the encoder's batch: a batched server pays its "
        "largest batch once.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section("startup", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
