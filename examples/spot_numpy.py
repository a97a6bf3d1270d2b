"""Spot keywords in samples you already hold in a numpy array, block by block.

    python examples/spot_numpy.py recording.wav

Your program may get audio from anywhere (a socket, a camera, a Home Assistant
pipeline). Here it comes from a file, read as int16 at the file's own sample rate; the
stream resamples to the model's 16 kHz and takes blocks of any size.
"""

from __future__ import annotations

import argparse

import numpy as np
import soundfile as sf
from choose_model import DEFAULT_KEYWORDS, add_model_args, load_spotter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", help="a recording to turn into a numpy array")
    parser.add_argument("-k", "--keyword", action="append", help="a keyword phrase (repeatable)")
    add_model_args(parser)
    args = parser.parse_args()
    spotter = load_spotter(args, args.keyword or DEFAULT_KEYWORDS)

    samples, rate = sf.read(args.audio, dtype="int16")  # int16, or float32 in [-1, 1]
    if samples.ndim == 2:
        samples = samples.mean(axis=1).astype(np.int16)  # streams take one channel
    print(f"{len(samples)} samples at {rate} Hz")

    stream = spotter.create_stream(sample_rate=rate)
    block = rate // 50  # 20 ms, as a sound card delivers it
    for start in range(0, len(samples), block):
        for det in stream.accept(samples[start : start + block]):
            print(f"{det.keyword} at {det.start:.2f} s (score {det.score:.2f})")
    for det in stream.finish():  # the end of the audio completes the last words
        print(f"{det.keyword} at {det.start:.2f} s (score {det.score:.2f})")


if __name__ == "__main__":
    main()
