"""How many real-time Wyoming streams one kwsd server holds (a quick load check).

Run: `python bench/wyoming_load.py [--streams 1,4,8,16] [--seconds 6] [--encoder zipformer]`.
Prints a table; writes nothing. For each stream count it starts a `WyomingServer` in
this process, opens that many `wyoming`-package clients, and has each stream speech
the way Home Assistant does: 16 kHz 16-bit mono in chunks of 1,024 samples, at
real-time pace. It measures the delay from each client's `audio-stop` to its final
answer (the `pong` of a ping sent right after, which the server sends after the
stream's detections or `not-detected`). A server that keeps up answers within a chunk
or two of decoding; one that does not falls behind by seconds. The clients run in
this process too, so on a small machine they take some of its CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import assets_dir, corpus_audio, espeak_audio, load_average
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.ping import Ping, Pong

from kwsd import BackendOptions, KeywordSpotter, SearchOptions
from kwsd.backends.onnx import OnnxBackend
from kwsd.wyoming.server import WyomingServer

RATE, WIDTH, CHUNK_SAMPLES = 16000, 2, 1024
ZIPFORMER = "zipformer-random/encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx"
KEYWORDS = ["HEY COMPUTER", "TURN ON THE LIGHTS", "GOOD NIGHT"]


def spotter_for(assets: Path, encoder: str) -> KeywordSpotter:
    base = KeywordSpotter.from_assets(
        assets, backend=BackendOptions(runtime="onnx"), search=SearchOptions()
    )
    if encoder == "standin":
        return base
    bundle = base.bundle
    assert bundle is not None
    return base.with_backend(OnnxBackend(assets / ZIPFORMER, bundle.decoder, bundle.joiner))


async def one_stream(port: int, pcm: bytes, start_after: float) -> float:
    """Stream `pcm` in real time; seconds from audio-stop to the final answer."""
    await asyncio.sleep(start_after)  # streams start spread over one chunk
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(AudioStart(rate=RATE, width=WIDTH, channels=1).event())
        step = CHUNK_SAMPLES * WIDTH
        began = time.monotonic()
        for n, offset in enumerate(range(0, len(pcm), step)):
            due = began + n * CHUNK_SAMPLES / RATE
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            chunk = AudioChunk(
                rate=RATE, width=WIDTH, channels=1, audio=pcm[offset : offset + step]
            )
            await client.write_event(chunk.event())
        stopped = time.monotonic()
        await client.write_event(AudioStop().event())
        await client.write_event(Ping(text="end").event())
        while (event := await client.read_event()) is not None:
            if Pong.is_type(event.type):
                return time.monotonic() - stopped
        raise RuntimeError("the server closed the connection")


async def run(spotter: KeywordSpotter, counts: list[int], audio: np.ndarray) -> None:
    keywords = spotter.compile(KEYWORDS)
    pcm = (np.clip(audio, -1, 0.999) * 32768).astype("<i2").tobytes()
    print(f"load average before: {load_average()}")
    print("streams | audio-stop → final answer: p50 ms | p95 ms | max ms")
    for count in counts:
        server = WyomingServer(spotter, lambda: keywords, version="bench")
        await server.start("tcp://127.0.0.1:0")
        assert server.bound is not None
        port = server.bound[1]
        try:
            spread = CHUNK_SAMPLES / RATE / max(1, count)
            delays = await asyncio.gather(
                *(one_stream(port, pcm, i * spread) for i in range(count))
            )
        finally:
            await server.close()
        ms = np.asarray(delays) * 1000
        p50, p95 = np.percentile(ms, [50, 95])
        print(f"{count:7d} | {p50:8.0f} | {p95:6.0f} | {ms.max():6.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,4,8,16", help="stream counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=6.0, help="audio per stream")
    parser.add_argument("--encoder", choices=["standin", "zipformer"], default="zipformer")
    args = parser.parse_args()
    assets = assets_dir()
    spotter = spotter_for(assets, args.encoder)
    if args.encoder == "standin":
        audio = espeak_audio(["hey computer, turn on the lights", "good night everyone"])
    else:
        audio = corpus_audio(assets, args.seconds)
    audio = np.resize(audio, int(args.seconds * RATE)).astype(np.float32)
    asyncio.run(run(spotter, [int(n) for n in args.streams.split(",")], audio))


if __name__ == "__main__":
    main()
