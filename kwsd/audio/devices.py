"""PortAudio input devices: loading PortAudio, listing inputs, and choosing one.

Every call here blocks (PortAudio probes hardware), so async code runs them in a
worker thread. sounddevice is imported lazily: a missing libportaudio must produce an
actionable AudioError from the commands that need audio, not break `import kwsd`.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import Any

from kwsd.audio.base import SAMPLE_RATE
from kwsd.errors import AudioError

PORTAUDIO_MISSING = (
    "cannot load the PortAudio library ({detail}); install it: "
    "`sudo apt install libportaudio2` (Debian/Ubuntu/Raspberry Pi OS), "
    "`sudo dnf install portaudio` (Fedora), `brew install portaudio` (macOS)"
)


# PortAudio is not thread-safe, and a driver can take seconds to open or abort. Every
# blocking PortAudio call kwsd makes (scan, probe, open, abort, close) holds this lock,
# so a stream still closing in a background thread never races a rescan or a new open.
# The audio callback thread never takes it.
PORTAUDIO_LOCK = threading.RLock()


def portaudio() -> ModuleType:
    """The sounddevice module, or AudioError saying how to install PortAudio."""
    try:
        return importlib.import_module("sounddevice")
    except OSError as exc:  # sounddevice raises OSError when libportaudio is not found
        raise AudioError(PORTAUDIO_MISSING.format(detail=exc)) from exc


def rescan() -> None:
    """Re-enumerate devices. PortAudio only scans at initialisation, so a device plugged in
    (or back) after start is invisible until this runs. No stream may be open."""
    sd = portaudio()
    with PORTAUDIO_LOCK:
        sd._terminate()
        sd._initialize()


@dataclass(frozen=True, slots=True)
class InputDevice:
    index: int
    name: str
    hostapi: str
    max_input_channels: int
    default_samplerate: float
    is_default: bool
    supports_16k: bool | None  # None: not probed

    def label(self) -> str:
        return f"{self.index}: {self.name} ({self.hostapi})"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _default_input_index(sd: ModuleType) -> int | None:
    try:
        default = sd.default.device[0]
    except (TypeError, IndexError):
        return None
    if isinstance(default, int) and default >= 0:
        return default
    if isinstance(default, str):
        try:
            return int(sd.query_devices(default, "input")["index"])
        except (ValueError, sd.PortAudioError):
            return None
    return None


def supports_rate(index: int, rate: int, channels: int = 1) -> bool:
    """Whether PortAudio says the device can capture at `rate` Hz."""
    sd = portaudio()
    with PORTAUDIO_LOCK:
        try:
            sd.check_input_settings(
                device=index, samplerate=rate, channels=channels, dtype="float32"
            )
        except (ValueError, sd.PortAudioError):
            return False
    return True


def list_input_devices(*, probe_16k: bool = True) -> list[InputDevice]:
    """All devices with at least one input channel, in PortAudio index order."""
    with PORTAUDIO_LOCK:
        return _list_input_devices(probe_16k)


def _list_input_devices(probe_16k: bool) -> list[InputDevice]:
    sd = portaudio()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
    except sd.PortAudioError as exc:
        raise AudioError(f"PortAudio cannot list audio devices: {exc}") from exc
    default_index = _default_input_index(sd)
    result: list[InputDevice] = []
    for dev in devices:
        if int(dev["max_input_channels"]) <= 0:
            continue
        index = int(dev["index"])
        result.append(
            InputDevice(
                index=index,
                name=str(dev["name"]),
                hostapi=str(hostapis[int(dev["hostapi"])]["name"]),
                max_input_channels=int(dev["max_input_channels"]),
                default_samplerate=float(dev["default_samplerate"]),
                is_default=index == default_index,
                supports_16k=supports_rate(index, SAMPLE_RATE) if probe_16k else None,
            )
        )
    return result


def describe_devices(devices: list[InputDevice]) -> str:
    if not devices:
        return "none (PortAudio sees no capture device)"
    return "; ".join(d.label() for d in devices)


def select_input_device(spec: str | int | None, devices: list[InputDevice]) -> InputDevice:
    """The device `spec` names: an index, a case-insensitive name substring, or None for the
    system default. An exact (case-insensitive) name wins over substring matches, so
    "USB Mic" can be chosen even when "USB Mic 2" also exists."""
    if not devices:
        raise AudioError(
            "no audio input device found: PortAudio sees no capture device. Plug in a "
            "microphone; on Linux check `arecord -l` and that the user is in the `audio` "
            "group (in Docker pass --device /dev/snd)."
        )
    if spec is None:
        for dev in devices:
            if dev.is_default:
                return dev
        return devices[0]
    if isinstance(spec, str) and spec.strip().isdigit():
        spec = int(spec.strip())
    if isinstance(spec, int):
        for dev in devices:
            if dev.index == spec:
                return dev
        raise AudioError(
            f"audio.device = {spec} is not an input device index. Input devices: "
            f"{describe_devices(devices)} (see `kwsd devices`)"
        )
    wanted = spec.strip().casefold()
    exact = [d for d in devices if d.name.casefold() == wanted]
    if exact:
        return exact[0]
    partial = [d for d in devices if wanted in d.name.casefold()]
    if partial:
        return partial[0]
    raise AudioError(
        f"no input device matches audio.device = {spec!r}. Input devices: "
        f"{describe_devices(devices)} (see `kwsd devices`; a name substring or an index works)"
    )
