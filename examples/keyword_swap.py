"""Change the keyword list while audio streams: a wake phrase, then commands.

    python examples/keyword_swap.py conversation.wav

The stream listens only for the wake phrase. When it hears it, it switches to the
command list for a few seconds, then back. `set_keywords` takes effect at the next
encoder frame: no audio is lost and stream time runs on. A command said without the
wake phrase first is not reported, because it is not in the list at that moment.
"""

from __future__ import annotations

import argparse

import soundfile as sf
from choose_model import add_model_args, load_spotter

from kwsd import Detection, KeywordSet, KeywordStream

WAKE = ["hey computer"]
COMMANDS = ["turn on the lights", "turn off the lights", "good night", "open the garage"]
COMMAND_WINDOW_SECONDS = 4.0


class Assistant:
    """Asleep: spot the wake phrase. Awake: spot one command, or give up after a while."""

    def __init__(self, stream: KeywordStream, commands: KeywordSet) -> None:
        self.stream = stream
        self.commands = commands
        self.awake_until: float | None = None  # stream seconds when the window closes

    def heard(self, det: Detection, now: float) -> None:
        if self.awake_until is None:
            print(f"wake: {det.keyword} at {det.start:.2f} s; listening for commands")
            self.stream.set_keywords(self.commands)
            self.awake_until = now + COMMAND_WINDOW_SECONDS
        else:
            print(f"command: {det.keyword} at {det.start:.2f} s")
            self.sleep()

    def tick(self, now: float) -> None:
        if self.awake_until is not None and now >= self.awake_until:
            print(f"no command; back to the wake phrase at {now:.2f} s")
            self.sleep()

    def sleep(self) -> None:
        self.stream.set_keywords(WAKE)
        self.awake_until = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", help="a recording (any rate; the first channel is used)")
    add_model_args(parser)
    args = parser.parse_args()
    spotter = load_spotter(args, WAKE)
    commands = spotter.compile(COMMANDS)  # compiled once, checked before any audio

    samples, rate = sf.read(args.audio, dtype="float32", always_2d=True)
    assistant = Assistant(spotter.create_stream(sample_rate=rate), commands)
    block = rate // 10
    for start in range(0, len(samples), block):
        now = min(start + block, len(samples)) / rate
        for det in assistant.stream.accept(samples[start : start + block, 0]):
            assistant.heard(det, now)
        assistant.tick(now)
    for det in assistant.stream.finish():
        assistant.heard(det, len(samples) / rate)


if __name__ == "__main__":
    main()
