"""Listen to a microphone inside your own asyncio program, with sounddevice.

    python examples/microphone_asyncio.py                       # default input, until Ctrl-C
    python examples/microphone_asyncio.py --device "USB" --seconds 30

PortAudio calls `on_audio` on its own thread; the block is handed to the event loop
through a bounded queue, and decoding runs in a worker thread (`asyncio.to_thread`) so
the loop stays free for the rest of your program (here: a status line every 5 s).
The stream resamples from whatever rate the device records at.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import numpy as np
import sounddevice as sd
from choose_model import DEFAULT_KEYWORDS, add_model_args, load_spotter

from kwsd import KeywordStream

QUEUE_SECONDS = 5.0  # audio held while the decoder catches up; older blocks are dropped


async def decode(stream: KeywordStream, blocks: asyncio.Queue[np.ndarray]) -> None:
    while True:
        block = await blocks.get()
        for det in await asyncio.to_thread(stream.accept, block):
            print(f"{det.keyword} at {det.start:.2f} s (score {det.score:.2f})", flush=True)


async def status(stream: KeywordStream) -> None:
    while True:
        await asyncio.sleep(5)
        print(f"listening for {', '.join(stream.keywords.displays())}", flush=True)


async def listen(args: argparse.Namespace) -> None:
    spotter = await asyncio.to_thread(load_spotter, args, args.keyword or DEFAULT_KEYWORDS)
    rate = args.rate or int(sd.query_devices(args.device, "input")["default_samplerate"])
    block = rate // 10
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=int(QUEUE_SECONDS * 10))

    def enqueue(samples: np.ndarray) -> None:  # on the loop
        if blocks.full():
            blocks.get_nowait()  # the decoder fell behind: drop the oldest audio
        blocks.put_nowait(samples)

    def on_audio(indata: np.ndarray, frames: int, time: Any, status: sd.CallbackFlags) -> None:
        loop.call_soon_threadsafe(enqueue, indata[:, 0].copy())  # PortAudio's thread

    stream = spotter.create_stream(sample_rate=rate)
    with sd.InputStream(
        device=args.device,
        channels=1,
        samplerate=rate,
        blocksize=block,
        dtype="float32",
        callback=on_audio,
    ) as mic:
        print(f"recording from {sd.query_devices(mic.device)['name']} at {rate} Hz", flush=True)
        work = asyncio.gather(decode(stream, blocks), status(stream))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(work, args.seconds)  # None: until Ctrl-C


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", help="input device name (substring) or index")
    parser.add_argument("--rate", type=int, help="sample rate (default: the device's)")
    parser.add_argument("--seconds", type=float, help="stop after this long")
    parser.add_argument("-k", "--keyword", action="append", help="a keyword phrase (repeatable)")
    add_model_args(parser)
    args = parser.parse_args()
    if args.device is not None and args.device.isdigit():
        args.device = int(args.device)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(listen(args))


if __name__ == "__main__":
    main()
