"""Home Assistant's side of a Wyoming wake-word stream, for the server tests.

The client is the `wyoming` package, as Home Assistant runs it: 16 kHz 16-bit mono
audio in chunks of 1,024 samples.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import numpy.typing as npt
from engine_support import espeak
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.ping import Ping, Pong
from wyoming.wake import Detection, NotDetected

RATE, WIDTH, CHANNELS = 16000, 2, 1
CHUNK_SAMPLES = 1024


def pcm16(audio: npt.ArrayLike) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM (what satellites stream)."""
    return (np.clip(audio, -1, 0.999) * 32768).astype("<i2").tobytes()


def espeak_pcm(text: str, path: Path) -> bytes:
    """espeak-ng saying `text`, as 16 kHz 16-bit mono PCM (the wav is kept at `path`)."""
    return pcm16(espeak(text, path))


async def utterance(client: AsyncTcpClient, pcm: bytes) -> list[str]:
    """One audio-start..audio-stop in Home Assistant's chunks; the answers' names
    (detections), "not-detected" or "error:CODE", up to the pong of a ping sent after
    audio-stop."""
    await client.write_event(AudioStart(rate=RATE, width=WIDTH, channels=CHANNELS).event())
    await send_audio(client, pcm)
    await client.write_event(AudioStop().event())
    return await answers(client)


async def send_audio(client: AsyncTcpClient, pcm: bytes) -> None:
    step = CHUNK_SAMPLES * WIDTH
    for offset in range(0, len(pcm), step):
        audio = pcm[offset : offset + step]
        chunk = AudioChunk(rate=RATE, width=WIDTH, channels=CHANNELS, audio=audio)
        await client.write_event(chunk.event())


async def answers(client: AsyncTcpClient) -> list[str]:
    """Send a ping; the answers that come before its pong (see `utterance`)."""
    await client.write_event(Ping(text="end").event())
    found: list[str] = []
    while True:
        async with asyncio.timeout(30):
            event = await client.read_event()
        assert isinstance(event, Event), f"connection closed after {found}"
        if Pong.is_type(event.type):
            return found
        if Detection.is_type(event.type):
            found.append(str(Detection.from_event(event).name))
        elif NotDetected.is_type(event.type):
            found.append("not-detected")
        elif Error.is_type(event.type):
            found.append(f"error:{Error.from_event(event).code}")
        else:
            raise AssertionError(event)
