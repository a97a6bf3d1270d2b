"""The batched multi-stream engine (`StreamBatch`) against streams run alone.

Real parts only: the real decoder and joiner (int8 and fp32), the real encoder's output
for a real recording replayed through them (the light_up fixture), the trained
stand-in encoder on espeak-ng speech, and the Zipformer2 architecture with random
weights (kws-assets zipformer-random) for the encoder's batched numerics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from engine_support import espeak

from kwsd import (
    AudioError,
    BackendOptions,
    BatchStream,
    Detection,
    KeywordError,
    KeywordSpotter,
    SearchOptions,
    StreamBatch,
)
from kwsd.backends.onnx import OnnxBackend
from kwsd.backends.replay import ReplayBackend, read_frames
from kwsd.batch import BatchPlan
from kwsd.features import Chunker, FbankStream

REFERENCE = SearchOptions(boost=2.0, threshold=0.25)  # the fixtures' reference search
PHRASES = ["HEY COMPUTER", "LIVING ROOM", "GOOD NIGHT", "TURN ON THE LIGHTS"]
BLOCK = 1600  # 100 ms, as a microphone or a Wyoming client sends it
ZIPFORMER = "zipformer-random/encoder-epoch-12-avg-2-chunk-16-left-64{}.onnx"


@pytest.fixture(scope="module", params=["int8", "fp32"])
def spotter(request: pytest.FixtureRequest, assets: Path) -> KeywordSpotter:
    """The stand-in encoder with the real decoder and the int8 or the fp32 joiner."""
    return KeywordSpotter.from_assets(
        assets,
        keywords=PHRASES,
        search=REFERENCE,
        backend=BackendOptions(runtime="onnx", precision=request.param),
    )


@pytest.fixture(scope="module")
def sentences(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Three espeak-ng utterances of different lengths and voices."""
    where = tmp_path_factory.mktemp("batch")
    texts = [
        ("good evening everyone, hey computer, turn on the lights in the living room", "en-us+m3"),
        ("good night", "en-us+f2"),
        ("well, hey computer, the living room is dark, turn on the lights", "en-gb+m1"),
    ]
    return [espeak(text, where / f"{i}.wav", voice) for i, (text, voice) in enumerate(texts)]


# -- a schedule of streams joining and leaving ----------------------------------------------


@dataclass
class Plan:
    """One stream's part in a schedule: when it joins, what it hears and spots."""

    audio: np.ndarray
    start_block: int = 0  # the batch's block index at which the stream joins
    keywords: Sequence[str] | None = None
    leave_after: int | None = None  # blocks fed before the stream is closed mid-way
    found: list[Detection] = field(default_factory=list)


def run_schedule(batch: StreamBatch, plans: list[Plan], *, steps_per_block: int = 1) -> None:
    """Feed every stream block by block from its start; step the batch after each block."""
    streams: dict[int, BatchStream] = {}
    block = 0
    done: set[int] = set()

    def collect(results: dict[BatchStream, list[Detection]]) -> None:
        for index, stream in streams.items():
            plans[index].found += results.get(stream, [])

    while len(done) < len(plans):
        for index, plan in enumerate(plans):
            if index in done or block < plan.start_block:
                continue
            stream = streams.get(index)
            if stream is None:
                stream = streams[index] = batch.add_stream(plan.keywords)
            fed = block - plan.start_block
            if plan.leave_after is not None and fed == plan.leave_after:
                stream.close()
                done.add(index)
                continue
            piece = plan.audio[fed * BLOCK : (fed + 1) * BLOCK]
            if piece.size:
                stream.accept(piece)
            else:
                stream.finish()
                done.add(index)
        for _ in range(steps_per_block):
            collect(batch.step())
        block += 1
    collect(batch.drain())


def alone(spotter: KeywordSpotter, plan: Plan) -> list[Detection]:
    """The same audio (cut where the stream left) through a stream of its own."""
    stream = spotter.create_stream(plan.keywords)
    audio = plan.audio if plan.leave_after is None else plan.audio[: plan.leave_after * BLOCK]
    found: list[Detection] = []
    for start in range(0, len(audio), BLOCK):
        found += stream.accept(audio[start : start + BLOCK])
    if plan.leave_after is None:
        found += stream.finish()
    return found


# -- identical detections ---------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 3], ids=["one-thread", "encoder-over-3-threads"])
def test_streams_in_a_batch_find_what_they_find_alone(
    spotter: KeywordSpotter, sentences: list[np.ndarray], threads: int
) -> None:
    a, b, c = sentences
    plans = [
        Plan(a),
        Plan(c, start_block=3, keywords=["turn on the lights", "living room"]),
        Plan(b, start_block=5, keywords=["good night"]),
        Plan(np.concatenate([b, a]), start_block=9),
        Plan(a, start_block=2, keywords=["hey computer"], leave_after=25),  # leaves mid-way
        Plan(c, start_block=30),  # joins late, after others left
    ]
    expected = [alone(spotter, plan) for plan in plans]
    batch = spotter.create_batch(threads=threads)
    try:
        run_schedule(batch, plans)
    finally:
        batch.close()
    assert [p.found for p in plans] == expected
    # The scenario means something: every stream that heard a keyword to its end found it.
    assert [len(e) for e in expected] == [3, 2, 1, 4, 1, 3]


def test_uneven_steps_and_queued_chunks(
    spotter: KeywordSpotter, sentences: list[np.ndarray]
) -> None:
    """Streams fed faster than the batch steps queue chunks; drain() catches up."""
    plans = [Plan(s, start_block=i * 2) for i, s in enumerate(sentences)]
    expected = [alone(spotter, plan) for plan in plans]
    batch = spotter.create_batch()
    run_schedule(batch, plans, steps_per_block=0)  # only the final drain
    assert [p.found for p in plans] == expected
    assert batch.ready == 0


def test_the_real_encoder_frames_fixture(assets: Path) -> None:
    """Real speech: the reference encoder's output for light_up.wav, replayed per stream
    through the real decoder/joiner (a replay backend cannot batch its encoder: the
    batch falls back to one call per stream, and still batches the joiner)."""
    frames = read_frames(assets / "fixtures" / "ref_encoder_light_up.bin")
    audio, _ = sf.read(str(assets / "audio" / "light_up.wav"), dtype="float32")
    for precision in ("int8", "fp32"):
        base = KeywordSpotter.from_assets(
            assets,
            search=REFERENCE,
            backend=BackendOptions(runtime="onnx", precision=precision),
        )
        replay = base.with_backend(ReplayBackend(base.backend, frames))
        lists = [
            ["▁ L IGHT ▁UP :2.0 #0.25 @LIGHT_UP"],
            ["LIGHT UP", "YELLOW LAMPS", "EARLY NIGHTFALL"],
            ["LIGHT UP"],
            ["LIGHT UP", "YELLOW LAMPS", "EARLY NIGHTFALL"],
        ]
        plans = [
            Plan(audio, start_block=3 * i, keywords=kw, leave_after=25 if i == 2 else None)
            for i, kw in enumerate(lists)
        ]
        expected = [alone(replay, plan) for plan in plans]
        batch = replay.create_batch()
        assert not batch.plan.encoder
        assert batch.plan.joiner is (precision == "fp32")
        run_schedule(batch, plans)
        assert [p.found for p in plans] == expected
        assert [d.keyword for d in expected[0]] == ["LIGHT_UP"]
        assert expected[0][0].start == pytest.approx(3.04, abs=0.05)
        assert {d.keyword for d in expected[1]} == {"LIGHT UP", "YELLOW LAMPS", "EARLY NIGHTFALL"}
        assert [d.keyword for d in expected[2]] == []  # left 2.5 s in, before LIGHT UP
        # Finished streams stay in the batch (reset() reuses one) until closed.
        assert len(batch) == 3 and all(s.finished for s in batch)


def test_reset_and_set_keywords_inside_a_batch(
    spotter: KeywordSpotter, sentences: list[np.ndarray]
) -> None:
    a, b, _ = sentences
    batch = spotter.create_batch()
    first, other = batch.add_stream(name="first"), batch.add_stream(["good night"])
    first.accept(a)
    other.accept(b)
    other.finish()
    found = batch.drain()
    assert [d.keyword for d in found[other]] == ["GOOD NIGHT"]
    before_reset = found[first]
    assert [d.keyword for d in before_reset] == ["HEY COMPUTER", "TURN ON THE LIGHTS"]
    assert other.finished
    with pytest.raises(RuntimeError, match="reset"):
        other.accept(b)

    # reset: the same audio again gives the same detections, times from 0
    first.reset()
    first.accept(a)
    first.finish()
    again = batch.drain()[first]
    assert again[:2] == before_reset
    assert first.finished

    # set_keywords: a bad list keeps the old one; a good one applies from the next frame
    other.reset()
    with pytest.raises(KeywordError):
        other.set_keywords(["turn on light 2"])
    assert other.keywords.displays() == ["GOOD NIGHT"]
    other.set_keywords(["living room"])
    other.accept(a)
    other.finish()
    assert [d.keyword for d in batch.drain()[other]] == ["LIVING ROOM"]


def test_streams_share_graphs_and_the_decoder_cache(spotter: KeywordSpotter) -> None:
    batch = spotter.create_batch()
    a = batch.add_stream(["hey computer", "good night"])
    b = batch.add_stream(["HEY   COMPUTER", "Good Night"])
    c = batch.add_stream(["open the garage"])
    assert a.search.graph is b.search.graph is not c.search.graph
    assert a.search.decoder is b.search.decoder is c.search.decoder is spotter.decoder_cache
    single = spotter.create_stream(["hey computer", "good night"])
    assert single.search.graph is a.search.graph  # the same caches as lone streams
    assert len(batch) == 3 and list(batch) == [a, b, c]


def test_closed_streams_leave_cleanly(spotter: KeywordSpotter, sentences: list[np.ndarray]) -> None:
    batch = spotter.create_batch()
    gone, stays = batch.add_stream(), batch.add_stream()
    gone.accept(sentences[0])
    stays.accept(sentences[1])
    assert batch.ready == 2
    gone.close()
    gone.close()  # twice is harmless
    assert gone.closed and len(batch) == 1 and batch.ready == 1
    with pytest.raises(RuntimeError, match="closed"):
        gone.accept(sentences[0])
    stays.finish()
    assert set(batch.drain()) == {stays}
    assert batch.step() == {}


# -- batched numerics ----------------------------------------------------------------------


def windows_of(audio: np.ndarray) -> list[np.ndarray]:
    return Chunker().push(FbankStream().accept(audio.astype(np.float32)))


@pytest.mark.parametrize(
    ("encoder", "exact"),
    [
        ("standin/encoder-standin.onnx", True),
        (ZIPFORMER.format(""), True),
        (ZIPFORMER.format(".int8"), False),  # dynamic int8: one scale per batch
    ],
)
def test_batched_encoder_matches_one_stream_at_a_time(
    assets: Path, sentences: list[np.ndarray], encoder: str, exact: bool
) -> None:
    model = assets / "model"
    backend = OnnxBackend(
        assets / encoder,
        model / "decoder-epoch-12-avg-2-chunk-16-left-64.onnx",
        model / "joiner-epoch-12-avg-2-chunk-16-left-64.onnx",
    )
    streams = [windows_of(s) for s in sentences]
    chunks = min(len(w) for w in streams)
    alone_out = []
    for windows in streams:
        state = backend.init_state()
        rows = []
        for window in windows[:chunks]:
            enc, state = backend.run_chunk(window, state)
            rows.append(enc)
        alone_out.append(np.stack(rows))
    states = [backend.init_state() for _ in streams]
    batched_rows = []
    for k in range(chunks):
        enc, states = backend.run_batch(np.stack([w[k] for w in streams]), states)
        batched_rows.append(enc)
    batched = np.stack(batched_rows, axis=1)  # [streams, chunks, frames, dim]
    difference = max(float(np.abs(batched[i] - alone_out[i]).max()) for i in range(len(streams)))
    if exact:
        assert difference <= 1e-5
    else:
        assert difference > 1e-3  # what the plan's probe detects
    plan = BatchPlan.probe(backend)
    assert plan.encoder is exact and plan.encoder_exact is exact
    assert BatchPlan.probe(backend, exact=False).encoder  # batched anyway when asked


def test_batch_axes_come_from_the_declared_shapes(assets: Path) -> None:
    model = assets / "model"
    parts = (
        model / "decoder-epoch-12-avg-2-chunk-16-left-64.onnx",
        model / "joiner-epoch-12-avg-2-chunk-16-left-64.int8.onnx",
    )
    zipformer = OnnxBackend(assets / ZIPFORMER.format(".int8"), *parts)
    assert zipformer.batch_axes is not None
    axes = zipformer.batch_axes
    assert (axes["cached_key_0"], axes["cached_nonlin_attn_0"], axes["cached_val1_3"]) == (1, 1, 1)
    assert (axes["cached_conv1_0"], axes["embed_states"], axes["processed_lens"]) == (0, 0, 0)
    assert len(axes) == 6 * 6 + 2
    standin = OnnxBackend(assets / "standin" / "encoder-standin.onnx", *parts)
    assert standin.batch_axes == {"cached_conv": 0, "cached_gru": 1, "processed_lens": 0}


def test_joiner_plan_follows_the_joiner_precision(spotter: KeywordSpotter) -> None:
    """fp32 joiner rows are independent of each other; the int8 joiner quantizes all
    rows of a call with one scale, so only the fp32 joiner is batched across streams."""
    plan = spotter.create_batch().plan
    fp32 = spotter.backend_options is not None and spotter.backend_options.precision == "fp32"
    assert plan.joiner is plan.joiner_exact is fp32
    assert plan.encoder  # the stand-in (fp32 GRU) batches exactly
    assert spotter.create_batch(exact=False).plan.joiner


def test_bad_input_is_refused_and_the_batch_carries_on(
    spotter: KeywordSpotter, sentences: list[np.ndarray]
) -> None:
    batch = spotter.create_batch()
    with pytest.raises(KeywordError):
        batch.add_stream(["turn on light 2"])
    with pytest.raises(ValueError, match="sample_rate"):
        batch.add_stream(sample_rate=0)
    assert len(batch) == 0  # nothing half-added
    stream = batch.add_stream()
    with pytest.raises(AudioError, match="mono"):
        stream.accept(np.zeros((1600, 2), np.float32))
    with pytest.raises(AudioError, match="NaN"):
        stream.accept(np.full(1600, np.nan, np.float32))
    assert stream.ready == 0  # the bad blocks queued nothing
    stream.accept(sentences[1])
    stream.finish()
    assert [d.keyword for d in batch.drain()[stream]] == ["GOOD NIGHT"]
