"""Running sherpa-onnx's KeywordSpotter and kwsd side by side on the same audio.

Both sides get the same 16 kHz samples, the same decoder and joiner files, the same
keywords with the same boost and threshold (written in sherpa's keyword-file format
from kwsd's compiled list), beam/max_active_paths 4 and num_trailing_blanks 1.

Detections are compared as `Hit`s: keyword, BPE pieces, and the absolute encoder
frames (40 ms) of the first and last token. Where the two decoders differ on purpose
(listed in `DIFFERENCES`), the helpers here make the difference explicit:

- `run_sherpa` uses sherpa's Python API as its documentation and examples do: decode
  while `is_ready`, read the result once after each `decode_stream` (a second read of
  the same result returns nothing: sherpa suppresses it as a duplicate), and call
  `reset_stream` right after a detection. sherpa then reports token times relative to
  that reset; the harness adds the encoder frames decoded before it, so its hits carry
  absolute frames like kwsd's.
- `run_kwsd` runs a `KeywordStream`, as every kwsd user does.
- `run_kwsd_on_peer_schedule` runs kwsd's own search and encoder chunk by chunk with
  sherpa's reset schedule imposed from outside, through kwsd's public API: after a
  chunk with detections only the last one is kept, the search paths are reset and the
  encoder state is zeroed before the next chunk. This is what must equal sherpa exactly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from kwsd import Detection, KeywordSet, KeywordSpotter
from kwsd.backends.base import Backend, DelegatingBackend, EncoderState, FloatArray
from kwsd.engine import Frontend
from kwsd.features import SAMPLE_RATE, TAIL_PADDING_SECONDS
from kwsd.search import KeywordSearch

FRAME_S = 0.04  # one encoder frame
CHUNK_FRAMES = 8  # encoder frames per encoder call
BLOCK = SAMPLE_RATE // 10  # both sides are fed 100 ms blocks, as from a microphone
NEVER = 1e9  # seconds: an auto-reset that does not happen

DIFFERENCES = """\
Deliberate differences between kwsd and sherpa-onnx's KeywordSpotter (Python API):
1. Time: sherpa restarts token times at 0 after every reset (a detection, or 1.5 s of
   blanks); kwsd reports absolute stream time.
2. Encoder state: sherpa zeroes it (processed_lens included) at every reset; kwsd keeps
   it, so the encoder never loses its left context in the middle of a stream.
3. After a detection, sherpa's reset_stream drops the search paths of the rest of that
   320 ms chunk, and of several detections within one chunk only the last is
   reported; kwsd resets the paths at the detection frame and keeps searching, so a
   keyword that starts within that chunk is still found.
4. Auto-reset after 1.5 s of blanks: sherpa checks between chunks, kwsd at every frame.
5. Score: sherpa averages the probabilities of the first `level` tokens of the path,
   kwsd those of the keyword's own tokens (the last `level`); they differ only when a
   failed partial match left extra tokens on the path.
"""


@dataclass(frozen=True, slots=True)
class Hit:
    """A detection in encoder frames (40 ms).

    `start`/`end` are absolute stream frames of the first and last token. `reported`
    is the (start, end) a decoder reports: kwsd absolute ones, sherpa-onnx ones relative
    to its last reset. `chunk` is the encoder call (0-based) after which it came out.
    """

    start: int
    end: int
    keyword: str
    tokens: tuple[str, ...]
    chunk: int
    reported: tuple[int, int]

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        return self.keyword, self.tokens

    def __str__(self) -> str:
        shown = "" if self.reported == (self.start, self.end) else f", reported {self.reported}"
        return (
            f"{self.keyword} [{' '.join(self.tokens)}] frames {self.start}-{self.end} "
            f"({self.start * FRAME_S:.2f}-{self.end * FRAME_S:.2f} s, chunk {self.chunk}{shown})"
        )


def hit_of(det: Detection, reset_at: int = 0) -> Hit:
    """A kwsd detection; `reset_at` is the frame of the last reset when a peer schedule
    is imposed (what sherpa counts its times from)."""
    start, end = round(det.start / FRAME_S), round(det.end / FRAME_S)
    return Hit(
        start,
        end,
        det.keyword,
        det.tokens,
        det.frame // CHUNK_FRAMES,
        (start - reset_at, end - reset_at),
    )


def keyword_file(keywords: KeywordSet) -> tuple[str, dict[str, str]]:
    """sherpa's keyword-file text for a compiled list, and sherpa's name -> kwsd display.

    Every tokenisation (alternates too) is one line with the keyword's boost,
    threshold and display name (`@NAME`: sherpa's names cannot hold spaces).
    """
    lines: list[str] = []
    names: dict[str, str] = {}
    for index, kw in enumerate(keywords.keywords):
        name = kw.display.replace(" ", "_")
        if name in names:
            name = f"{name}~{index}"
        names[name] = kw.display
        for pieces in kw.sequences:
            lines.append(f"{' '.join(pieces)} :{kw.boost:g} #{kw.threshold:g} @{name}")
    return "\n".join(lines) + "\n", names


@dataclass(frozen=True, slots=True)
class ModelFiles:
    tokens: Path
    encoder: Path
    decoder: Path
    joiner: Path


def _with_tail(audio: FloatArray) -> FloatArray:
    """The audio plus the silence kwsd appends at the end of a finite stream."""
    tail = np.zeros(int(TAIL_PADDING_SECONDS * SAMPLE_RATE), np.float32)
    return np.concatenate([np.asarray(audio, np.float32), tail])


class SherpaPeer:
    """sherpa-onnx's KeywordSpotter with one keyword list; `run` decodes one stream."""

    def __init__(
        self,
        files: ModelFiles,
        keywords: KeywordSet,
        *,
        beam: int = 4,
        num_trailing_blanks: int = 1,
    ) -> None:
        import sherpa_onnx

        text, self.names = keyword_file(keywords)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "keywords.txt"
            path.write_text(text, encoding="utf-8")
            # Explicit per-line boost/threshold; the defaults below apply to nothing.
            self.spotter = sherpa_onnx.KeywordSpotter(
                tokens=str(files.tokens),
                encoder=str(files.encoder),
                decoder=str(files.decoder),
                joiner=str(files.joiner),
                keywords_file=str(path),
                keywords_score=1.0,
                keywords_threshold=0.25,
                max_active_paths=beam,
                num_trailing_blanks=num_trailing_blanks,
                provider="cpu",
                num_threads=1,
            )

    def run(self, audio: FloatArray) -> list[Hit]:
        """Decode `audio` (16 kHz float32) plus kwsd's tail padding; every detection."""
        spotter = self.spotter
        stream = spotter.create_stream()
        hits: list[Hit] = []
        chunks = 0
        base = 0  # encoder frames decoded before the last reset_stream

        def drain() -> None:
            nonlocal chunks, base
            while spotter.is_ready(stream):
                spotter.decode_stream(stream)
                chunks += 1
                # One read per decode: sherpa returns a result once, then suppresses it.
                result = spotter.keyword_spotter.get_result(stream)
                if result.keyword.strip():
                    times = result.timestamps
                    first, last = round(times[0] / FRAME_S), round(times[-1] / FRAME_S)
                    tokens = tuple(t.replace(" ", "▁") for t in result.tokens)
                    name = result.keyword.strip()
                    hits.append(
                        Hit(
                            base + first,
                            base + last,
                            self.names.get(name, name),
                            tokens,
                            chunks - 1,
                            (first, last),
                        )
                    )
                    spotter.reset_stream(stream)  # as sherpa's examples do
                    base = chunks * CHUNK_FRAMES

        samples = _with_tail(audio)
        for start in range(0, len(samples), BLOCK):
            stream.accept_waveform(SAMPLE_RATE, samples[start : start + BLOCK])
            drain()
        stream.input_finished()
        drain()
        self.chunks = chunks
        return hits


def scoring_as_peer(spotter: KeywordSpotter) -> KeywordSpotter:
    """The same model and options, scoring detections as sherpa does (difference 5)."""
    options = replace(spotter.search_options, peer_score=True)
    return KeywordSpotter(spotter.backend, spotter.tokenizer, search=options)


def run_kwsd(spotter: KeywordSpotter, keywords: KeywordSet, audio: FloatArray) -> list[Hit]:
    """kwsd as its users run it: one `KeywordStream`, 100 ms blocks, then `finish`."""
    stream = spotter.create_stream(keywords)
    found: list[Detection] = []
    for start in range(0, len(audio), BLOCK):
        found += stream.accept(audio[start : start + BLOCK])
    found += stream.finish()
    return [hit_of(d) for d in found]


class _PeerSchedule(DelegatingBackend):
    """Searches each encoder chunk as soon as it is computed and resets as sherpa-onnx
    does: after a chunk with a detection (its Python API's reset_stream) and, before a
    chunk, when the best path has had only blanks for more than `auto_reset_seconds`
    (its own check). A reset drops the search paths and zeroes the encoder state."""

    def __init__(self, inner: Backend, search: KeywordSearch, auto_reset_seconds: float) -> None:
        super().__init__(inner)
        self.search = search
        self.auto_reset_seconds = auto_reset_seconds
        self.hits: list[Hit] = []
        self.auto_resets: list[int] = []  # chunks before which an auto-reset happened
        self._chunks = 0
        self._reset_at = 0  # frame of the last reset: sherpa's time origin
        self._zero_state = False

    def run_chunk(self, feats: FloatArray, state: EncoderState) -> tuple[FloatArray, EncoderState]:
        frame = self._chunks * CHUNK_FRAMES
        if self.search.trailing_blanks * FRAME_S > self.auto_reset_seconds:
            self.search.reset()
            self.auto_resets.append(self._chunks)
            self._reset_at, self._zero_state = frame, True
        if self._zero_state:
            state, self._zero_state = self.inner.init_state(), False
        enc, state = self.inner.run_chunk(feats, state)
        found = self.search.step(enc)
        self._chunks += 1
        if found:
            self.hits.append(hit_of(found[-1], self._reset_at))
            self.search.reset()
            self._reset_at, self._zero_state = self._chunks * CHUNK_FRAMES, True
        return enc, state


@dataclass(frozen=True, slots=True)
class Schedule:
    hits: list[Hit]
    auto_resets: list[int]


def run_kwsd_on_peer_schedule(
    spotter: KeywordSpotter, keywords: KeywordSet, audio: FloatArray, *, peer_score: bool = True
) -> Schedule:
    """kwsd's search and encoder with sherpa's reset schedule (see the module doc).

    `peer_score` also scores detections as sherpa does (difference 5); kwsd's own
    auto-reset is switched off, the schedule applies sherpa's.
    """
    options = spotter.search_options
    reset_s = options.auto_reset_seconds or spotter.backend.defaults.auto_reset_seconds
    search = KeywordSearch(
        spotter.backend,
        keywords,
        replace(options, peer_score=peer_score, auto_reset_seconds=NEVER),
    )
    schedule = _PeerSchedule(spotter.backend, search, reset_s)
    frontend = Frontend(schedule)
    for start in range(0, len(audio), BLOCK):
        frontend.accept(audio[start : start + BLOCK])
    frontend.flush()
    return Schedule(schedule.hits, schedule.auto_resets)


def describe(hits: Sequence[Hit]) -> str:
    return "\n".join(f"  {h}" for h in hits) or "  (none)"


def same_as_peer(peer: Sequence[Hit], ours: Sequence[Hit], tolerance: int = 1) -> bool:
    """The same detections as the peer reports them: keyword, pieces, the encoder call
    that produced them, and token times within `tolerance` frames."""
    return len(peer) == len(ours) and all(
        p.key == o.key
        and p.chunk == o.chunk
        and abs(p.reported[0] - o.reported[0]) <= tolerance
        and abs(p.reported[1] - o.reported[1]) <= tolerance
        for p, o in zip(peer, ours, strict=True)
    )


def _matched(hit: Hit, others: Sequence[Hit], tolerance: int) -> bool:
    return any(o.key == hit.key and abs(o.start - hit.start) <= tolerance for o in others)


def unexplained_differences(
    user: Sequence[Hit], scheduled: Sequence[Hit], tolerance: int = 1
) -> list[str]:
    """Differences between kwsd as its users run it and kwsd on sherpa's reset schedule
    (same scoring) that difference 3 does not explain; the answer should be empty.

    Explained, for a hit only kwsd finds: it starts inside the chunk in which kwsd's
    previous hit fired (the peer dropped those paths), or it fired in the same chunk as
    kwsd's next hit (the peer reports only the last of a chunk). For a hit only the
    schedule finds: kwsd fired in that same chunk (its paths were reset there at the
    detection frame, the schedule's at the end of an earlier chunk).
    """
    problems: list[str] = []
    for i, hit in enumerate(user):
        if _matched(hit, scheduled, tolerance):
            continue
        after_previous = i > 0 and hit.start // CHUNK_FRAMES <= user[i - 1].chunk
        shares_chunk = i + 1 < len(user) and user[i + 1].chunk == hit.chunk
        if not (after_previous or shares_chunk):
            problems.append(f"only kwsd: {hit}")
    fired = {h.chunk for h in user}
    problems += [
        f"only on the peer schedule: {hit}"
        for hit in scheduled
        if not _matched(hit, user, tolerance) and hit.chunk not in fired
    ]
    return problems
