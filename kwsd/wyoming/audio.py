"""audio-start / audio-chunk / audio-stop, and PCM of any format to float32 16 kHz mono.

Wyoming clients send raw little-endian PCM with `rate`, `width` (bytes per sample) and
`channels` in every audio event. Satellites commonly send 16 kHz 16-bit mono, but
nothing forbids 48 kHz stereo, so everything is converted with soxr (streaming, so
chunk edges leave no artefacts). A chunk may end mid-frame; the remainder waits for
the next chunk instead of shifting every later sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from kwsd.audio.convert import StreamResampler, to_float32, to_mono
from kwsd.wyoming.event import Event, ProtocolError

AUDIO_START: Final = "audio-start"
AUDIO_CHUNK: Final = "audio-chunk"
AUDIO_STOP: Final = "audio-stop"

FloatArray = npt.NDArray[np.float32]
_DTYPES: Final[dict[int, np.dtype[Any]]] = {
    1: np.dtype(np.uint8),
    2: np.dtype("<i2"),
    4: np.dtype("<i4"),
}


@dataclass(frozen=True, slots=True)
class AudioFormat:
    rate: int
    width: int
    channels: int

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> AudioFormat:
        values = {}
        for key in ("rate", "width", "channels"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ProtocolError(f"audio event needs an integer `{key}`, got {value!r}")
            values[key] = value
        fmt = cls(**values)
        if not 1000 <= fmt.rate <= 384_000:
            raise ProtocolError(f"unsupported sample rate {fmt.rate} Hz (1000..384000)")
        if fmt.width not in _DTYPES:
            raise ProtocolError(f"unsupported sample width {fmt.width} (use 1, 2 or 4 bytes)")
        if not 1 <= fmt.channels <= 64:
            raise ProtocolError(f"unsupported channel count {fmt.channels} (1..64)")
        return fmt

    @property
    def frame_bytes(self) -> int:
        return self.width * self.channels

    def to_data(self) -> dict[str, Any]:
        return {"rate": self.rate, "width": self.width, "channels": self.channels}


def audio_start(fmt: AudioFormat, timestamp: int | None = None) -> Event:
    data = fmt.to_data()
    if timestamp is not None:
        data["timestamp"] = timestamp
    return Event(AUDIO_START, data)


def audio_chunk(fmt: AudioFormat, pcm: bytes, timestamp: int | None = None) -> Event:
    data = fmt.to_data()
    if timestamp is not None:
        data["timestamp"] = timestamp
    return Event(AUDIO_CHUNK, data, pcm)


def audio_stop(timestamp: int | None = None) -> Event:
    return Event(AUDIO_STOP, {} if timestamp is None else {"timestamp": timestamp})


class PcmConverter:
    """Interleaved PCM bytes in one format → float32 mono 16 kHz, streaming."""

    def __init__(self, fmt: AudioFormat) -> None:
        self.format = fmt
        self._resampler = StreamResampler(fmt.rate)
        self._rest = b""

    def process(self, pcm: bytes) -> FloatArray:
        data = self._rest + pcm
        usable = len(data) - len(data) % self.format.frame_bytes
        self._rest = data[usable:]
        if usable == 0:
            return np.zeros(0, dtype=np.float32)
        samples = np.frombuffer(data[:usable], dtype=_DTYPES[self.format.width])
        frames = samples.reshape(-1, self.format.channels)
        mono = to_mono(to_float32(frames), None)
        return self._resampler.process(np.ascontiguousarray(mono, dtype=np.float32))

    def flush(self) -> FloatArray:
        """The resampler's held-back tail (a trailing partial frame is dropped)."""
        self._rest = b""
        return self._resampler.flush()
