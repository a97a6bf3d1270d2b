"""Wyoming framing, audio conversion and name matching, without a socket."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from kwsd.audio.convert import resample
from kwsd.wyoming.audio import AudioFormat, PcmConverter
from kwsd.wyoming.event import Event, EventReader, ProtocolError
from kwsd.wyoming.wake import normalise_name, parse_detect, select


def test_event_round_trip_with_data_and_payload() -> None:
    event = Event("audio-chunk", {"rate": 16000, "width": 2, "channels": 1}, b"\x01\x02" * 5)
    raw = event.to_bytes()
    header = json.loads(raw.split(b"\n", 1)[0])
    assert header["type"] == "audio-chunk"
    assert header["data_length"] == len(json.dumps(event.data, separators=(",", ":")))
    assert header["payload_length"] == 10
    assert Event.from_bytes(raw) == event


def test_event_without_data_or_payload_has_no_lengths() -> None:
    raw = Event("describe").to_bytes()
    header = json.loads(raw)
    assert "data_length" not in header and "payload_length" not in header
    assert Event.from_bytes(raw) == Event("describe")


def test_inline_data_in_header_is_merged_with_data_bytes() -> None:
    extra = b'{"b": 2}'
    raw = json.dumps({"type": "x", "data": {"a": 1}, "data_length": len(extra)}).encode()
    event = Event.from_bytes(raw + b"\n" + extra)
    assert event.data == {"a": 1, "b": 2}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json\n", "not valid UTF-8 JSON"),
        (b"[1, 2]\n", "must be a JSON object"),
        (b'{"data": {}}\n', "no `type`"),
        (b'{"type": "x", "payload_length": -1}\n', "non-negative"),
        (b'{"type": "x", "payload_length": true}\n', "non-negative"),
        (b'{"type": "x", "payload_length": 99999999999}\n', "over the"),
        (b'{"type": "x", "data": [1]}\n', "`data` must be a JSON object"),
    ],
)
def test_bad_headers_are_protocol_errors(line: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Event.from_bytes(line)


def test_from_bytes_rejects_a_frame_whose_lengths_lie() -> None:
    raw = Event("audio-chunk", {}, b"abcd").to_bytes()
    with pytest.raises(ProtocolError, match="announces 4 bytes"):
        Event.from_bytes(raw[:-1])


async def _read_all(data: bytes, max_payload: int = 4096) -> list[Event]:
    reader = asyncio.StreamReader(limit=1024)
    reader.feed_data(data)
    reader.feed_eof()
    events = EventReader(reader, max_payload=max_payload)
    out = []
    while (event := await events.read()) is not None:
        out.append(event)
    return out


async def test_reader_reads_consecutive_events_and_skips_blank_lines() -> None:
    first = Event("audio-chunk", {"rate": 16000}, b"\x00" * 7)
    second = Event("audio-stop")
    assert await _read_all(first.to_bytes() + b"\n\n" + second.to_bytes()) == [first, second]


async def test_reader_reports_truncated_payload() -> None:
    raw = Event("audio-chunk", {"rate": 1}, b"\x00" * 100).to_bytes()
    with pytest.raises(ProtocolError, match="connection closed after"):
        await _read_all(raw[:-10])


async def test_reader_caps_payload_before_reading_it() -> None:
    raw = b'{"type": "audio-chunk", "payload_length": 2000}\n'
    with pytest.raises(ProtocolError, match="over the 1000-byte limit"):
        await _read_all(raw, max_payload=1000)


async def test_reader_rejects_overlong_header_line() -> None:
    with pytest.raises(ProtocolError, match="header line is longer"):
        await _read_all(b"{" + b" " * 5000)


def test_audio_format_validation() -> None:
    assert AudioFormat.from_data({"rate": 48000, "width": 4, "channels": 2}).frame_bytes == 8
    for bad in (
        {"rate": 16000, "width": 3, "channels": 1},
        {"rate": 16000, "width": 2},
        {"rate": 0, "width": 2, "channels": 1},
        {"rate": 16000, "width": 2, "channels": 0},
        {"rate": "16000", "width": 2, "channels": 1},
    ):
        with pytest.raises(ProtocolError):
            AudioFormat.from_data(bad)


def _tone(rate: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_stereo_48k_int32_becomes_16k_mono_matching_whole_signal_resampling() -> None:
    tone = _tone(48000)
    stereo = np.stack([tone, tone], axis=1)
    pcm = (stereo * 2**31).astype("<i4").tobytes()
    converter = PcmConverter(AudioFormat(48000, 4, 2))
    # Split at odd byte offsets: partial frames must wait for the next chunk.
    pieces = [pcm[i : i + 1001] for i in range(0, len(pcm), 1001)]
    out = np.concatenate([converter.process(p) for p in pieces] + [converter.flush()])
    expected = resample(tone, 48000)
    assert len(out) == len(expected) == 8000
    assert np.max(np.abs(out - expected)) < 1e-4


def test_8bit_unsigned_and_16k_passthrough() -> None:
    tone = _tone(16000, 0.1)
    u8 = np.round(tone * 127 + 128).astype(np.uint8).tobytes()
    out = PcmConverter(AudioFormat(16000, 1, 1)).process(u8)
    assert np.max(np.abs(out - tone)) < 1 / 100
    i16 = (tone * 32767).astype("<i2").tobytes()
    out16 = PcmConverter(AudioFormat(16000, 2, 1)).process(i16)
    assert np.max(np.abs(out16 - tone)) < 1e-4


def test_detect_names_parsing_and_matching() -> None:
    assert parse_detect({}) is None
    assert parse_detect({"names": []}) is None
    assert parse_detect({"names": ["a"]}) == ("a",)
    with pytest.raises(ProtocolError):
        parse_detect({"names": "HEY COMPUTER"})
    assert normalise_name(" Hey-Computer ") == normalise_name("HEY_COMPUTER") == "hey_computer"
    items = ["A", "B"]
    keys = [("HEY COMPUTER", "HEY COMPUTER"), ("LIGHTS_OFF", "LIGHTS OFF")]
    # No names: everything, answering with each item's first key (its advertised name).
    assert select(items, None, keys) == ([("A", "HEY COMPUTER"), ("B", "LIGHTS_OFF")], [])
    # Names: the matches answer with the name exactly as the client wrote it.
    assert select(items, ["lights off", "nope"], keys) == ([("B", "lights off")], ["nope"])
    assert select(items, ["Hey-Computer", "hey computer"], keys) == (
        [("A", "Hey-Computer")],
        [],
    )


async def test_reader_gives_up_on_announced_bytes_that_never_arrive() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b'{"type": "audio-chunk", "payload_length": 100}\n' + b"\x00" * 10)
    events = EventReader(reader, message_timeout=0.05)  # the peer stays connected, silent
    with pytest.raises(ProtocolError, match=r"complete within 0\.05 s"):
        await events.read()
