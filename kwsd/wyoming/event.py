"""Wyoming framing: one JSON header line, then optional data bytes, then a binary payload.

Header: `{"type": str, "data": {...}?, "data_length": int?, "payload_length": int?,
"version": str?}` followed by `\n`. `data_length` bytes of UTF-8 JSON (merged into
`data`) and `payload_length` bytes of payload follow. Every length is checked against
a cap before anything is read, so a client that lies about a length (or sends 4 GB)
costs one error event and its own connection, never the server's memory.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, Final

PROTOCOL_VERSION: Final = "1.5.2"
MAX_HEADER_BYTES: Final = 64 * 1024
MAX_DATA_BYTES: Final = 1024 * 1024
# 1 s of 48 kHz 32-bit 8-channel audio is 1.5 MB; real chunks are a few KiB.
MAX_PAYLOAD_BYTES: Final = 4 * 1024 * 1024


class ProtocolError(Exception):
    """A frame that breaks the protocol; the connection that sent it is closed."""


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    payload: bytes | None = None

    def to_bytes(self) -> bytes:
        """Header line (data sent as separate data bytes, as current peers do) + payload."""
        header: dict[str, Any] = {"type": self.type, "version": PROTOCOL_VERSION}
        data = b""
        if self.data:
            data = json.dumps(self.data, ensure_ascii=False, separators=(",", ":")).encode()
            header["data_length"] = len(data)
        if self.payload:
            header["payload_length"] = len(self.payload)
        line = json.dumps(header, separators=(",", ":")).encode() + b"\n"
        return line + data + (self.payload or b"")

    @classmethod
    def from_bytes(cls, raw: bytes, **limits: int) -> Event:
        """Parse exactly one complete frame (tests and offline tools)."""
        newline = raw.find(b"\n")
        if newline < 0:
            raise ProtocolError("frame has no header line (missing newline)")
        header = parse_header(raw[: newline + 1], **limits)
        rest = raw[newline + 1 :]
        need = header.data_length + header.payload_length
        if len(rest) != need:
            raise ProtocolError(f"frame announces {need} bytes after the header, has {len(rest)}")
        return header.complete(rest[: header.data_length], rest[header.data_length :] or None)


@dataclass(frozen=True, slots=True)
class Header:
    type: str
    data: dict[str, Any]
    data_length: int
    payload_length: int

    def complete(self, data_bytes: bytes, payload: bytes | None) -> Event:
        data = dict(self.data)
        if data_bytes:
            extra = _json_object(data_bytes, "data")
            data.update(extra)
        return Event(self.type, data, payload if self.payload_length else None)


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _length(header: dict[str, Any], key: str, cap: int) -> int:
    value = header.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"`{key}` must be a non-negative integer, got {value!r}")
    if value > cap:
        raise ProtocolError(f"`{key}` of {value} bytes is over the {cap}-byte limit")
    return value


def parse_header(
    line: bytes, *, max_data: int = MAX_DATA_BYTES, max_payload: int = MAX_PAYLOAD_BYTES
) -> Header:
    header = _json_object(line, "header line")
    kind = header.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError("header has no `type` string")
    data = header.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError("`data` must be a JSON object")
    return Header(
        type=kind,
        data=data,
        data_length=_length(header, "data_length", max_data),
        payload_length=_length(header, "payload_length", max_payload),
    )


class IdleTimeout(Exception):  # noqa: N818 - a condition, not a failure of kwsd
    """The peer sent nothing for the idle timeout; its connection is closed."""


class _EndOfStream(Exception):  # noqa: N818
    """The peer closed after blank keep-alive bytes: a clean end, not a broken message."""


class EventReader:
    """Reads events from a stream, enforcing the caps; None at a clean end of stream.

    Two clocks bound how long a connection can hold on to the server without doing
    anything useful: `idle_timeout` is the longest wait for the first byte of the next
    message, and `message_timeout` is the time a message may take from its first byte
    to its last. A peer that trickles one byte a second (slowloris) therefore loses its
    connection after `message_timeout`, however patient it is. None disables a clock.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        *,
        max_data: int = MAX_DATA_BYTES,
        max_payload: int = MAX_PAYLOAD_BYTES,
        message_timeout: float | None = 30.0,
        idle_timeout: float | None = None,
    ) -> None:
        self._reader = reader
        self._message_timeout = message_timeout
        self._idle_timeout = idle_timeout
        self._max_data = max_data
        self._max_payload = max_payload

    async def read(self) -> Event | None:
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    first = await self._reader.read(1)
            except TimeoutError:
                raise IdleTimeout(
                    f"no message for {self._idle_timeout:g} s; closing the idle connection"
                ) from None
            if not first:
                return None
            try:
                async with asyncio.timeout(self._message_timeout):
                    event = await self._rest_of_message(first)
            except _EndOfStream:
                return None
            except TimeoutError:
                raise ProtocolError(
                    f"a message must arrive complete within {self._message_timeout:g} s of "
                    "its first byte; this one did not (a stalled or very slow sender)"
                ) from None
            if event is not None:
                return event
            # else a blank keep-alive line: wait for the next message

    async def _rest_of_message(self, first: bytes) -> Event | None:
        """The message that `first` begins, or None for a blank line."""
        line = first
        if first != b"\n":
            try:
                line += await self._reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                if not (first + exc.partial).strip():
                    raise _EndOfStream from None
                raise ProtocolError("connection closed in the middle of a header line") from None
            except asyncio.LimitOverrunError:
                raise ProtocolError(
                    f"header line is longer than {MAX_HEADER_BYTES} bytes (or has no newline)"
                ) from None
        if not line.strip():
            return None
        header = parse_header(line, max_data=self._max_data, max_payload=self._max_payload)
        try:
            data = await self._reader.readexactly(header.data_length)
            payload = await self._reader.readexactly(header.payload_length)
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError(
                f"connection closed after {len(exc.partial)} of {exc.expected} announced bytes"
            ) from None
        return header.complete(data, payload or None)


async def write_event(writer: asyncio.StreamWriter, event: Event) -> None:
    writer.write(event.to_bytes())
    await writer.drain()
