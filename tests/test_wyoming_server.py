"""The Wyoming server over real TCP, with the real decoder/joiner and the stand-in encoder.

Speech is espeak-ng output at its native 22.05 kHz (so every stream is resampled);
the second client sends 48 kHz stereo 32-bit PCM of other words at the same time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import soundfile as sf
import soxr
from engine_support import espeak_wav

from kwsd import KeywordSet, KeywordSpec, KeywordSpotter
from kwsd.errors import ConfigError
from kwsd.mute import MuteState
from kwsd.wyoming.audio import AudioFormat, audio_chunk, audio_start, audio_stop
from kwsd.wyoming.event import Event, EventReader, write_event
from kwsd.wyoming.server import WyomingServer, parse_uri

PHRASES = ("HEY COMPUTER", "TURN ON THE LIGHTS", "GOOD NIGHT")
IDS = ("hey_computer", "turn_on_the_lights", "good_night")  # the advertised model names


@dataclass
class Speech:
    pcm: npt.NDArray[np.int16]
    rate: int


def _espeak(text: str, path: Path) -> Speech:
    pcm, rate = sf.read(espeak_wav(path, text), dtype="int16")
    return Speech(pcm, rate)


@pytest.fixture(scope="module")
def utterances(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Speech]:
    tmp = tmp_path_factory.mktemp("speech")
    return {
        "command": _espeak("hey computer, turn on the lights", tmp / "command.wav"),
        "night": _espeak("thank you, and good night everyone", tmp / "night.wav"),
        "other": _espeak("the weather is nice today in the garden", tmp / "other.wav"),
    }


@pytest.fixture(scope="module")
def model(assets: Path) -> tuple[KeywordSpotter, KeywordSet]:
    spotter = KeywordSpotter.from_assets(assets)
    specs = [KeywordSpec(phrase=p, boost=2.0, threshold=0.25) for p in PHRASES]
    return spotter, spotter.compile(specs)


@pytest.fixture
async def server(model: tuple[KeywordSpotter, KeywordSet]) -> AsyncIterator[WyomingServer]:
    spotter, keywords = model
    srv = WyomingServer(spotter, lambda: keywords, version="9.9.9")
    await srv.start("tcp://127.0.0.1:0")
    try:
        yield srv
    finally:
        await srv.close()


class Client:
    """A minimal Wyoming client: send events, collect the answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.events = EventReader(reader)
        self.writer = writer

    @classmethod
    async def connect(cls, server: WyomingServer) -> Client:
        assert server.address is not None
        host, port = parse_uri(server.address)  # type: ignore[misc]
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, event: Event) -> None:
        await write_event(self.writer, event)

    async def send_raw(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def read(self, within: float = 30.0) -> Event | None:
        async with asyncio.timeout(within):
            return await self.events.read()

    async def stream(
        self, pcm_bytes: bytes, fmt: AudioFormat, *, chunk_seconds: float = 0.1
    ) -> None:
        await self.send(audio_start(fmt))
        step = int(fmt.rate * chunk_seconds) * fmt.frame_bytes
        for offset in range(0, len(pcm_bytes), step):
            await self.send(audio_chunk(fmt, pcm_bytes[offset : offset + step]))
            await asyncio.sleep(0)  # let the other client interleave
        await self.send(audio_stop())

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _mono16(speech: Speech) -> tuple[bytes, AudioFormat]:
    return speech.pcm.astype("<i2").tobytes(), AudioFormat(speech.rate, 2, 1)


def _stereo48k_int32(speech: Speech) -> tuple[bytes, AudioFormat]:
    mono = soxr.resample(speech.pcm.astype(np.float32) / 32768.0, speech.rate, 48000)
    stereo = np.stack([mono, mono], axis=1)
    return (np.clip(stereo, -1, 0.999) * 2**31).astype("<i4").tobytes(), AudioFormat(48000, 4, 2)


async def _detections_after_stop(client: Client) -> list[str]:
    """Every detection name of a stopped stream.

    Events are answered in order, so a `pong` to a ping sent after audio-stop marks the
    end of that stream's answers (`not-detected` must then have come first if nothing
    was found).
    """
    await client.send(Event("ping", {"text": "end"}))
    names: list[str] = []
    while True:
        event = await client.read()
        assert event is not None, f"server closed the connection after {names}"
        if event.type == "pong":
            return names
        assert event.type == "detection", event
        names.append(event.data["name"])


async def test_describe_lists_every_keyword_as_a_wake_model(server: WyomingServer) -> None:
    client = await Client.connect(server)
    await client.send(Event("describe"))
    info = await client.read()
    assert info is not None and info.type == "info"
    (program,) = info.data["wake"]
    assert program["name"] == "kwsd" and program["installed"] is True
    assert program["version"] == "9.9.9"
    assert [m["name"] for m in program["models"]] == list(IDS)
    assert [m["phrase"] for m in program["models"]] == list(PHRASES)
    assert [m["description"] for m in program["models"]] == [
        "Hey Computer",
        "Turn On The Lights",
        "Good Night",
    ]
    assert all(m["languages"] == ["en"] for m in program["models"])
    await client.close()


async def test_speech_is_detected_over_tcp(
    server: WyomingServer, utterances: dict[str, Speech]
) -> None:
    client = await Client.connect(server)
    await client.send(Event("detect", {"names": ["HEY COMPUTER", "TURN ON THE LIGHTS"]}))
    await client.stream(*_mono16(utterances["command"]))
    names = await _detections_after_stop(client)
    assert names == ["HEY COMPUTER", "TURN ON THE LIGHTS"]
    await client.close()


async def test_detection_carries_name_and_stream_timestamp(
    server: WyomingServer, utterances: dict[str, Speech]
) -> None:
    client = await Client.connect(server)
    pcm, fmt = _mono16(utterances["command"])
    await client.send(audio_start(fmt, timestamp=5000))
    await client.send(audio_chunk(fmt, pcm))
    await client.send(audio_stop())
    event = await client.read()
    assert event is not None and event.type == "detection"
    assert event.data["name"] == "hey_computer"  # no `detect`: the advertised name
    duration_ms = 1000 * len(utterances["command"].pcm) / utterances["command"].rate
    assert 5000 < event.data["timestamp"] < 5000 + duration_ms
    await client.close()


async def test_detect_names_filter_keywords(
    server: WyomingServer, utterances: dict[str, Speech]
) -> None:
    client = await Client.connect(server)
    await client.send(Event("detect", {"names": ["turn_on_the_lights"]}))
    await client.stream(*_mono16(utterances["command"]))
    assert await _detections_after_stop(client) == ["turn_on_the_lights"]
    await client.close()


async def test_not_detected_after_audio_stop_when_nothing_found(
    server: WyomingServer, utterances: dict[str, Speech]
) -> None:
    client = await Client.connect(server)
    await client.stream(*_mono16(utterances["other"]))
    event = await client.read()
    assert event is not None and event.type == "not-detected"
    # The connection stays usable for the next pipeline run.
    await client.stream(*_mono16(utterances["command"]))
    assert await _detections_after_stop(client) == ["hey_computer", "turn_on_the_lights"]
    await client.close()


async def test_two_concurrent_clients_each_get_their_own_results(
    server: WyomingServer, utterances: dict[str, Speech]
) -> None:
    first, second = await Client.connect(server), await Client.connect(server)

    async def run(client: Client, pcm: bytes, fmt: AudioFormat) -> list[str]:
        await client.stream(pcm, fmt)
        return await _detections_after_stop(client)

    got_first, got_second = await asyncio.gather(
        run(first, *_mono16(utterances["command"])),
        run(second, *_stereo48k_int32(utterances["night"])),
    )
    assert got_first == ["hey_computer", "turn_on_the_lights"]
    assert got_second == ["good_night"]
    await first.close()
    await second.close()


async def _expect_error_and_close(client: Client, fragment: str) -> None:
    event = await client.read()
    assert event is not None and event.type == "error", event
    assert event.data["code"] == "protocol-error"
    assert fragment in event.data["text"]
    assert await client.read() is None  # the server closed this connection


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"this is not json\n", "not valid UTF-8 JSON"),
        (b'{"type": "audio-chunk", "payload_length": 1073741824}\n', "over the"),
        (b'{"type": "audio-chunk", "data_length": 5}\n[1,2]', "must be a JSON object"),
        # Announces 2 payload bytes but sends more: the rest is read as a (bad) header.
        (
            b'{"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1},'
            b' "payload_length": 2}\n\x00\x00\x00\x00garbage\n',
            "not valid UTF-8 JSON",
        ),
        (
            Event("audio-start", {"rate": 16000, "width": 3, "channels": 1}).to_bytes(),
            "unsupported sample width",
        ),
    ],
)
async def test_malformed_frames_close_only_that_connection(
    server: WyomingServer, utterances: dict[str, Speech], raw: bytes, fragment: str
) -> None:
    good = await Client.connect(server)
    pcm, fmt = _mono16(utterances["command"])
    half = len(pcm) // 2 // fmt.frame_bytes * fmt.frame_bytes
    await good.send(audio_start(fmt))
    await good.send(audio_chunk(fmt, pcm[:half]))

    bad = await Client.connect(server)
    await bad.send_raw(raw)
    await _expect_error_and_close(bad, fragment)

    await good.send(audio_chunk(fmt, pcm[half:]))
    await good.send(audio_stop())
    assert await _detections_after_stop(good) == ["hey_computer", "turn_on_the_lights"]
    await good.close()


async def test_announced_bytes_that_never_come_are_an_error(server: WyomingServer) -> None:
    bad = await Client.connect(server)
    await bad.send_raw(b'{"type": "audio-chunk", "payload_length": 100}\n' + b"\x00" * 10)
    bad.writer.write_eof()
    await _expect_error_and_close(bad, "connection closed after 10 of 100")


async def test_ping_pong_and_unknown_events_are_harmless(server: WyomingServer) -> None:
    client = await Client.connect(server)
    await client.send(Event("something-new", {"x": 1}))
    await client.send(Event("ping", {"text": "hi"}))
    event = await client.read()
    assert event == Event("pong", {"text": "hi"})
    await client.close()


async def test_unix_socket(model: tuple[KeywordSpotter, KeywordSet], tmp_path: Path) -> None:
    spotter, keywords = model
    srv = WyomingServer(spotter, lambda: keywords, version="1")
    path = tmp_path / "kwsd.sock"
    assert await srv.start(f"unix://{path}") == f"unix://{path}"
    reader, writer = await asyncio.open_unix_connection(str(path))
    await write_event(writer, Event("describe"))
    event = await EventReader(reader).read()
    assert event is not None and event.type == "info"
    writer.close()
    await srv.close()
    assert not path.exists()


async def test_a_busy_port_is_a_config_error(
    server: WyomingServer, model: tuple[KeywordSpotter, KeywordSet]
) -> None:
    spotter, keywords = model
    other = WyomingServer(spotter, lambda: keywords, version="1")
    assert server.address is not None
    with pytest.raises(ConfigError, match="already using that port"):
        await other.start(server.address)
    with pytest.raises(ConfigError, match="directory exists"):
        await other.start("unix:///nonexistent-dir/kwsd.sock")


def test_parse_uri() -> None:
    assert parse_uri("tcp://0.0.0.0:10400") == ("0.0.0.0", 10400)
    assert parse_uri("tcp://[::1]:10400") == ("::1", 10400)
    assert parse_uri("unix:///run/kwsd.sock") == Path("/run/kwsd.sock")
    for bad in ("http://x:1", "tcp://host", "tcp://host:99999", "unix://"):
        with pytest.raises(ConfigError):
            parse_uri(bad)


async def test_global_mute_suppresses_wyoming_detections(
    model: tuple[KeywordSpotter, KeywordSet], utterances: dict[str, Speech]
) -> None:
    spotter, keywords = model
    mute = MuteState()
    mute.pause("night mode")
    srv = WyomingServer(spotter, lambda: keywords, version="1", mute=mute)
    await srv.start("tcp://127.0.0.1:0")
    try:
        client = await Client.connect(srv)
        await client.stream(*_mono16(utterances["command"]))
        event = await client.read()
        assert event is not None and event.type == "not-detected"
        mute.resume()
        await client.stream(*_mono16(utterances["command"]))
        assert await _detections_after_stop(client) == ["hey_computer", "turn_on_the_lights"]
        await client.close()
    finally:
        await srv.close()


async def test_keyword_changes_reach_the_next_stream(
    model: tuple[KeywordSpotter, KeywordSet], utterances: dict[str, Speech]
) -> None:
    spotter, keywords = model
    current = [keywords]
    srv = WyomingServer(spotter, lambda: current[0], version="1")
    await srv.start("tcp://127.0.0.1:0")
    try:
        client = await Client.connect(srv)
        current[0] = dataclasses.replace(keywords, keywords=keywords.keywords[1:2])
        await client.send(Event("describe"))
        info = await client.read()
        assert info is not None
        assert [m["name"] for m in info.data["wake"][0]["models"]] == ["turn_on_the_lights"]
        await client.stream(*_mono16(utterances["command"]))
        assert await _detections_after_stop(client) == ["turn_on_the_lights"]
        await client.close()
    finally:
        await srv.close()
