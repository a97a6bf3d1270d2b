"""Spot keywords in audio files: WAV, FLAC, OGG, ... at any sample rate, mono or stereo.

python examples/detect_file.py kitchen.flac hallway.wav -k "hey computer" -k "good night"
"""

from __future__ import annotations

import argparse

from choose_model import DEFAULT_KEYWORDS, add_model_args, load_spotter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", nargs="+", help="audio files")
    parser.add_argument("-k", "--keyword", action="append", help="a keyword phrase (repeatable)")
    add_model_args(parser)
    args = parser.parse_args()

    spotter = load_spotter(args, args.keyword or DEFAULT_KEYWORDS)
    assert spotter.keywords is not None
    for warning in spotter.keywords.warnings:  # e.g. a one-word keyword that fires too easily
        print("warning:", warning)
    for path in args.audio:
        for det in spotter.detect_file(path):
            print(
                f"{path}: {det.keyword} at {det.start:.2f}-{det.end:.2f} s, score {det.score:.2f}"
            )


if __name__ == "__main__":
    main()
