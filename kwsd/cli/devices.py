"""`kwsd devices`: the audio inputs PortAudio sees, to choose audio.device."""

from __future__ import annotations

import argparse
import json
from typing import Any

from kwsd.audio.devices import InputDevice, list_input_devices

NO_DEVICES = (
    "No audio input devices found: PortAudio sees no capture device.\n"
    "Plug in a microphone. On Linux check that `arecord -l` lists a capture card and that "
    "your user is in the `audio` group; in Docker pass `--device /dev/snd`."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "devices",
        help="list audio input devices",
        description="List the audio input devices kwsd can record from. Use the index or "
        "part of the name as audio.device (KWSD_AUDIO__DEVICE).",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array instead")
    parser.set_defaults(func=run)


def format_table(devices: list[InputDevice]) -> str:
    header = ("", "index", "name", "host API", "inputs", "default rate", "16 kHz")
    rows = [
        (
            "*" if d.is_default else "",
            str(d.index),
            d.name,
            d.hostapi,
            str(d.max_input_channels),
            f"{d.default_samplerate:.0f} Hz",
            {True: "yes", False: "no (resampled)", None: "?"}[d.supports_16k],
        )
        for d in devices
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    lines.append("")
    lines.append("* = system default input. Set audio.device to an index or a name substring.")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    devices = list_input_devices()
    if args.json:
        print(json.dumps([d.as_dict() for d in devices], indent=2))
        return 0
    if not devices:
        print(NO_DEVICES)
        return 0
    print(format_table(devices))
    return 0
