"""The Wyoming wake-word server: one asyncio task per connection, one stream per task.

Home Assistant opens a connection per pipeline run and streams microphone audio into
it; several satellites may do so at once. All connections share the one
`KeywordSpotter` (its model, and the keyword graph of equal keyword lists; ONNX
Runtime sessions are safe to run from several threads) while each audio stream is a
`KeywordStream` of its own, so one client's audio never leaks into another's results.
Decoding runs in worker threads so the event loop keeps serving the others, and a
client that breaks the protocol gets an `error` event and loses only its own
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from kwsd.backends.base import FloatArray
from kwsd.detection import Detection
from kwsd.engine import KeywordStream
from kwsd.errors import ConfigError
from kwsd.gate import DetectionGate, Verdict
from kwsd.keywords import Keyword, KeywordSet
from kwsd.mute import MuteState
from kwsd.spotter import KeywordSpotter
from kwsd.wyoming.audio import AUDIO_CHUNK, AUDIO_START, AUDIO_STOP, AudioFormat, PcmConverter
from kwsd.wyoming.event import (
    MAX_DATA_BYTES,
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    Event,
    EventReader,
    ProtocolError,
    write_event,
)
from kwsd.wyoming.info import DESCRIBE, WakeModel, info_event
from kwsd.wyoming.wake import (
    DETECT,
    PING,
    PONG,
    detection_event,
    error_event,
    not_detected_event,
    parse_detect,
    select,
)

log = structlog.get_logger("kwsd.wyoming")

DEFAULT_URI: Final = "tcp://0.0.0.0:10400"
_TCP_URI: Final = re.compile(r"tcp://(?P<host>\[[^\]]+\]|[^:/]+):(?P<port>\d{1,5})")


DetectionHook = Callable[[Detection], None]


def keyword_keys(keyword: Keyword) -> tuple[str, ...]:
    """Names a `detect` may use for a keyword: its display name or its phrase."""
    return (keyword.display, keyword.phrase)


def parse_uri(uri: str) -> tuple[str, int] | Path:
    """`tcp://HOST:PORT` → (host, port); `unix:///path` → Path; else a ConfigError."""
    if uri.startswith("unix://"):
        path = uri.removeprefix("unix://")
        if not path:
            raise ConfigError(
                f"Wyoming uri {uri!r} names no socket path, e.g. unix:///run/kwsd.sock"
            )
        return Path(path)
    match = _TCP_URI.fullmatch(uri)
    if match is None or not 0 <= int(match["port"]) <= 65535:
        raise ConfigError(
            f'Wyoming uri {uri!r} is not usable: write "tcp://0.0.0.0:10400" (all interfaces, '
            'the Home Assistant default port) or "unix:///run/kwsd/wyoming.sock"'
        )
    return match["host"].strip("[]"), int(match["port"])


class WyomingServer:
    """Serves `describe`, `detect` and audio streams over TCP or a Unix socket.

    `keywords` is called at every `describe` and `audio-start`, so keyword changes
    (MQTT commands, a reloaded file) reach new streams without a restart.
    """

    def __init__(
        self,
        spotter: KeywordSpotter,
        keywords: Callable[[], KeywordSet],
        *,
        version: str,
        refractory_seconds: float = 1.0,
        mute: MuteState | None = None,
        on_detection: DetectionHook | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        max_data_bytes: int = MAX_DATA_BYTES,
    ) -> None:
        self.spotter = spotter
        self.keywords = keywords
        self.version = version
        self.refractory_seconds = refractory_seconds
        self.mute = mute
        self.on_detection = on_detection
        self.max_payload_bytes = max_payload_bytes
        self.max_data_bytes = max_data_bytes
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.address: str | None = None
        self.connections = 0  # served so far (metrics)

    # -------------------------------------------------------------- lifecycle

    async def start(self, uri: str = DEFAULT_URI) -> str:
        """Listen on `uri`; returns the bound address (the real port for port 0)."""
        where = parse_uri(uri)
        try:
            if isinstance(where, Path):
                if where.is_socket():
                    where.unlink()  # a stale socket from a previous run
                self._server = await asyncio.start_unix_server(
                    self._accept, path=str(where), limit=MAX_HEADER_BYTES
                )
                self.address = f"unix://{where}"
            else:
                host, port = where
                self._server = await asyncio.start_server(
                    self._accept, host, port, limit=MAX_HEADER_BYTES
                )
                bound = self._server.sockets[0].getsockname()
                shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
                self.address = f"tcp://{shown}:{bound[1]}"
        except OSError as exc:
            hint = (
                "check that the directory exists and kwsd may write to it"
                if isinstance(where, Path)
                else "is another wake-word server (e.g. openWakeWord) already using that "
                "port? Set wyoming.uri to a free one"
            )
            raise ConfigError(
                f"cannot listen on {uri} for Wyoming: {exc.strerror or exc}; {hint}"
            ) from None
        log.info("Wyoming server listening", uri=self.address)
        return self.address

    async def serve_forever(self) -> None:
        if self._server is None:
            raise RuntimeError("call start() first")
        await self._server.serve_forever()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        if self.address and self.address.startswith("unix://"):
            with contextlib.suppress(OSError):
                os.unlink(self.address.removeprefix("unix://"))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        self.connections += 1
        peer = writer.get_extra_info("peername") or "unix socket"
        session = _Session(self, reader, writer, str(peer))
        try:
            await session.run()
        except asyncio.CancelledError:
            # close() cancels sessions; Python 3.11's stream callback would report a
            # cancelled handler task as an error, so end it normally.
            pass
        finally:
            if task is not None:
                self._sessions.discard(task)


@dataclasses.dataclass
class _Stream:
    """One audio-start..audio-stop: its own keyword stream, converter and detection gate."""

    detector: KeywordStream
    converter: PcmConverter
    gate: DetectionGate  # the server's shared mute, this stream's refractory history
    start_ms: int  # the client's timestamp of audio-start (0 when it sent none)
    detections: int = 0


class _Session:
    def __init__(
        self,
        server: WyomingServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> None:
        self.server = server
        self.events = EventReader(
            reader, max_data=server.max_data_bytes, max_payload=server.max_payload_bytes
        )
        self.writer = writer
        self.peer = peer
        self.names: tuple[str, ...] | None = None
        self.stream: _Stream | None = None
        self.log = log.bind(peer=peer)

    async def run(self) -> None:
        self.log.debug("Wyoming client connected")
        try:
            while (event := await self.events.read()) is not None:
                await self._handle(event)
        except ProtocolError as exc:
            self.log.warning("Wyoming client broke the protocol; closing", error=str(exc))
            await self._send_quietly(error_event(str(exc), "protocol-error"))
        except (ConnectionError, asyncio.IncompleteReadError):
            self.log.debug("Wyoming client went away")
        except Exception as exc:
            self.log.exception("Wyoming connection failed")
            await self._send_quietly(error_event(f"internal error: {exc}", "internal-error"))
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
            self.log.debug("Wyoming client disconnected")

    async def _send_quietly(self, event: Event) -> None:
        with contextlib.suppress(Exception):
            await write_event(self.writer, event)

    async def _handle(self, event: Event) -> None:
        if event.type == DESCRIBE:
            models = [WakeModel(k.display, k.phrase) for k in self.server.keywords().keywords]
            await write_event(self.writer, info_event(models, version=self.server.version))
        elif event.type == DETECT:
            self.names = parse_detect(event.data)
            self._keyword_set()  # an unknown name is an error now, not at audio-start
        elif event.type == AUDIO_START:
            self.stream = self._new_stream(AudioFormat.from_data(event.data), event.data)
        elif event.type == AUDIO_CHUNK:
            await self._chunk(event)
        elif event.type == AUDIO_STOP:
            await self._stop()
        elif event.type == PING:
            await write_event(self.writer, Event(PONG, {"text": event.data.get("text")}))
        else:
            self.log.debug("Wyoming event ignored", type=event.type)

    def _keyword_set(self) -> KeywordSet:
        current = self.server.keywords()
        chosen, unknown = select(
            current.keywords, self.names, [keyword_keys(k) for k in current.keywords]
        )
        if unknown:
            available = ", ".join(current.displays()) or "none"
            if not chosen:
                raise ProtocolError(
                    f"unknown wake word(s) {', '.join(unknown)}; this kwsd spots: {available}"
                )
            self.log.warning("Wyoming detect names unknown wake words", unknown=unknown)
        if not chosen:
            raise ProtocolError("kwsd has no active keywords; add some before streaming audio")
        return dataclasses.replace(current, keywords=tuple(chosen))

    def _new_stream(self, fmt: AudioFormat, data: dict[str, object]) -> _Stream:
        stamp = data.get("timestamp")
        start_ms = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else 0
        return _Stream(
            detector=self.server.spotter.create_stream(self._keyword_set()),
            converter=PcmConverter(fmt),
            gate=DetectionGate(self.server.mute, self.server.refractory_seconds),
            start_ms=start_ms,
        )

    async def _chunk(self, event: Event) -> None:
        fmt = AudioFormat.from_data(event.data)
        stream = self.stream
        if stream is None:  # audio-chunk without audio-start: start implicitly
            stream = self.stream = self._new_stream(fmt, {})
        elif fmt != stream.converter.format:
            # The format changed mid-stream: finish the old resampler, carry on.
            await self._decode(stream, stream.converter.flush())
            stream.converter = PcmConverter(fmt)
        samples = stream.converter.process(event.payload or b"")
        await self._decode(stream, samples)

    async def _stop(self) -> None:
        stream, self.stream = self.stream, None
        if stream is None:
            await write_event(self.writer, not_detected_event())
            return
        await self._decode(stream, stream.converter.flush(), final=True)
        if stream.detections == 0:
            await write_event(self.writer, not_detected_event())

    async def _decode(self, stream: _Stream, samples: FloatArray, *, final: bool = False) -> None:
        detector = stream.detector

        def work() -> list[Detection]:
            found = detector.accept(samples) if len(samples) else []
            return found + detector.finish() if final else found

        if not len(samples) and not final:
            return
        for det in await asyncio.to_thread(work):
            verdict = stream.gate.check(det)
            if verdict is Verdict.MUTED:
                self.log.info("Wyoming detection muted", keyword=det.keyword)
                continue
            if verdict is Verdict.REPEAT:
                continue
            stream.detections += 1
            stamp = stream.start_ms + round(det.end * 1000)
            self.log.info("Wyoming detection", keyword=det.keyword, score=round(det.score, 3))
            await write_event(self.writer, detection_event(det.keyword, stamp))
            if self.server.on_detection is not None:
                self.server.on_detection(det)
