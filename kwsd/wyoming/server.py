"""The Wyoming wake-word server: one asyncio task per connection, one stream per task.

Home Assistant opens a connection per pipeline run and streams microphone audio into
it; several satellites may do so at once. All connections share the one
`KeywordSpotter` (its model, and the keyword graph of equal keyword lists; ONNX
Runtime sessions are safe to run from several threads) while each audio stream is a
`KeywordStream` of its own, so one client's audio never leaks into another's results.
Decoding runs in worker threads so the event loop keeps serving the others, and a
client that breaks the protocol gets an `error` event and loses only its own
connection. A `detect` naming no active keyword is not a broken protocol: the client gets
an `error` event listing what kwsd spots, keeps its connection, and its streams end in
`not-detected`. How many connections, for how long and at what cost is in `limits`;
accepting them is in `listener`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Final

import structlog

from kwsd.backends.base import FloatArray
from kwsd.detection import Detection
from kwsd.engine import KeywordStream
from kwsd.errors import ConfigError
from kwsd.gate import DetectionGate, Verdict
from kwsd.keywords import KeywordSet
from kwsd.mute import MuteState
from kwsd.spotter import KeywordSpotter
from kwsd.wyoming.audio import AUDIO_CHUNK, AUDIO_START, AUDIO_STOP, AudioFormat, PcmConverter
from kwsd.wyoming.event import (
    MAX_DATA_BYTES,
    MAX_HEADER_BYTES,
    MAX_PAYLOAD_BYTES,
    Event,
    EventReader,
    IdleTimeout,
    ProtocolError,
    write_event,
)
from kwsd.wyoming.info import DESCRIBE, info_event, wake_models
from kwsd.wyoming.limits import ConnectionLimits, Refusals, connection_capacity
from kwsd.wyoming.listener import Acceptor, bind_tcp, bind_unix, resolve
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
from kwsd.wyoming.zeroconf import ZeroconfAnnouncer

log = structlog.get_logger("kwsd.wyoming")

DEFAULT_URI: Final = "tcp://0.0.0.0:10400"
_TCP_URI: Final = re.compile(r"tcp://(?P<host>\[[^\]]+\]|[^:/]+):(?P<port>\d{1,5})")


DetectionHook = Callable[[Detection], None]


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
        limits: ConnectionLimits | None = None,
        announcer: ZeroconfAnnouncer | None = None,
    ) -> None:
        self.spotter = spotter
        self.keywords = keywords
        self.version = version
        self.refractory_seconds = refractory_seconds
        self.mute = mute
        self.on_detection = on_detection
        self.max_payload_bytes = max_payload_bytes
        self.max_data_bytes = max_data_bytes
        self.limits = limits or ConnectionLimits()
        self.announcer = announcer  # started once listening on TCP, closed first
        self.capacity = self.limits.max_connections  # lowered at start() if fds are short
        self.refusals: Refusals | None = None
        self._acceptor: Acceptor | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self.address: str | None = None
        self.bound: tuple[str, int] | None = None  # TCP host and port, once listening
        self.connections = 0  # served so far (metrics)

    # -------------------------------------------------------------- lifecycle

    async def start(self, uri: str = DEFAULT_URI) -> str:
        """Listen on `uri`; returns the bound address (the real port for port 0)."""
        where = parse_uri(uri)
        try:
            if isinstance(where, Path):
                sockets = [bind_unix(where)]
                self.address = f"unix://{where}"
            else:
                sockets = bind_tcp(await resolve(*where))
                host, port = sockets[0].getsockname()[:2]
                self.bound = (host, port)
                shown = f"[{host}]" if ":" in host else host
                self.address = f"tcp://{shown}:{port}"
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
        self.capacity = connection_capacity(self.limits.max_connections)
        self.refusals = Refusals(
            error_event(
                f"kwsd serves at most {self.capacity} Wyoming connections at once; try again later",
                "too-many-connections",
            ).to_bytes()
        )
        self._acceptor = Acceptor(sockets, self._on_connection)
        self._accepting = asyncio.create_task(self._acceptor.run(), name="kwsd-wyoming-accept")
        self._accepting.add_done_callback(_report_accept_loop_end)
        log.info("Wyoming server listening", uri=self.address, max_connections=self.capacity)
        if self.announcer is not None and self.bound is not None:
            self.announcer.start(self.bound)
        return self.address

    async def serve_forever(self) -> None:
        if self._accepting is None:
            raise RuntimeError("call start() first")
        await asyncio.shield(self._accepting)

    async def close(self) -> None:
        if self.announcer is not None:
            await self.announcer.close()
        accepting, self._accepting = self._accepting, None
        if accepting is not None:
            accepting.cancel()
            await asyncio.gather(accepting, return_exceptions=True)
        if self._acceptor is not None:
            self._acceptor.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self.refusals is not None:
            await self.refusals.close()
        if self.address and self.address.startswith("unix://"):
            with contextlib.suppress(OSError):
                os.unlink(self.address.removeprefix("unix://"))

    @property
    def active_connections(self) -> int:
        return len(self._sessions)

    def _on_connection(self, conn: socket.socket, peer: str) -> None:
        """Called by the accept loop for each new socket: serve it, or refuse it."""
        refusals = self.refusals
        assert refusals is not None  # set by start(), which starts the accept loop
        if self.active_connections >= self.capacity:
            refusals.refuse(conn, peer, serving=self.active_connections)
            return
        refusals.warning.resolved("Wyoming accepts new connections again")
        task = asyncio.create_task(self._serve(conn, peer), name=f"kwsd-wyoming {peer}")
        self._sessions.add(task)
        task.add_done_callback(self._sessions.discard)

    async def _serve(self, conn: socket.socket, peer: str) -> None:
        self.connections += 1
        try:
            reader, writer = await asyncio.open_connection(sock=conn, limit=MAX_HEADER_BYTES)
        except OSError:
            conn.close()
            return
        await _Session(self, reader, writer, peer).run()


def _report_accept_loop_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "Wyoming server stopped accepting connections",
            error=repr(task.exception()),
            fix="restart kwsd and report this",
        )


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
            reader,
            max_data=server.max_data_bytes,
            max_payload=server.max_payload_bytes,
            message_timeout=server.limits.message_timeout,
            idle_timeout=server.limits.idle_timeout,
        )
        self.writer = writer
        self.peer = peer
        self.names: tuple[str, ...] | None = None
        self.stream: _Stream | None = None
        # (display, phrase) of each selected keyword → the `name` its detections carry.
        self.replies: dict[tuple[str, str], str] = {}
        self.silent = False  # in a stream that spots nothing (no requested keyword exists)
        self.reported: str | None = None  # the last selection problem sent as an error
        self.log = log.bind(peer=peer)

    async def run(self) -> None:
        self.log.debug("Wyoming client connected")
        try:
            while (event := await self.events.read()) is not None:
                await self._handle(event)
        except ProtocolError as exc:
            self.log.warning("Wyoming client broke the protocol; closing", error=str(exc))
            await self._send_quietly(error_event(str(exc), "protocol-error"))
        except IdleTimeout as exc:
            self.log.info("Wyoming client idle; closing", error=str(exc))
            await self._send_quietly(error_event(str(exc), "idle-timeout"))
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
        # Bounded: a peer that reads nothing must not hold the session open.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await write_event(self.writer, event)

    async def _handle(self, event: Event) -> None:
        if event.type == DESCRIBE:
            models = wake_models(self.server.keywords().keywords)
            await write_event(self.writer, info_event(models, version=self.server.version))
        elif event.type == DETECT:
            self.names = parse_detect(event.data)
            self.reported = None
            await self._can_spot()  # an unknown name is reported now, not at audio-start
        elif event.type == AUDIO_START:
            fmt = AudioFormat.from_data(event.data)
            self.stream = None
            self.silent = not await self._can_spot()
            if not self.silent:
                self.stream = self._new_stream(fmt, event.data)
        elif event.type == AUDIO_CHUNK:
            await self._chunk(event)
        elif event.type == AUDIO_STOP:
            await self._stop()
        elif event.type == PING:
            await write_event(self.writer, Event(PONG, {"text": event.data.get("text")}))
        else:
            self.log.debug("Wyoming event ignored", type=event.type)

    def _keyword_set(self) -> KeywordSet:
        """The active keywords the last `detect` asked for (all without one); may be empty."""
        return self._select()[0]

    def _select(self) -> tuple[KeywordSet, list[str]]:
        """`_keyword_set()` and the requested names that match no keyword; remembers the
        name each selected keyword's detections answer with."""
        current = self.server.keywords()
        models = wake_models(current.keywords)
        chosen, unknown = select(current.keywords, self.names, [m.keys for m in models])
        self.replies = {(k.display, k.phrase): name for k, name in chosen}
        return dataclasses.replace(current, keywords=tuple(k for k, _name in chosen)), unknown

    async def _can_spot(self) -> bool:
        """Whether the selection holds a keyword; if not, tell the client (once per
        `detect`) with an `error` event that names what kwsd spots. The connection stays
        open: a streamed stream then ends in `not-detected`."""
        selected, unknown = self._select()
        asked = ", ".join(repr(n) for n in unknown)
        models = wake_models(self.server.keywords().keywords)
        spots = ", ".join(m.listing for m in models)
        if selected.keywords:
            if unknown and self.reported != asked:
                # Some names are fine: spot those, and only tell the log about the rest.
                self.reported = asked
                self.log.warning("Wyoming detect names unknown wake words", unknown=unknown)
            return True
        if not models:
            code = "no-keywords"
            text = "kwsd has no active keywords; add some (config, keywords file or MQTT)"
        else:
            code = "unknown-wake-word"
            text = f"unknown wake word {asked}; kwsd spots: {spots}"
        if text != self.reported:
            self.reported = text
            self.log.warning("Wyoming client asks for no active keyword", error=text)
            await write_event(self.writer, error_event(text, code))
        return False

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
        if self.silent:
            return
        stream = self.stream
        if stream is None:  # audio-chunk without audio-start: start implicitly
            if not await self._can_spot():
                self.silent = True
                return
            stream = self.stream = self._new_stream(fmt, {})
        elif fmt != stream.converter.format:
            # The format changed mid-stream: finish the old resampler, carry on.
            await self._decode(stream, stream.converter.flush())
            stream.converter = PcmConverter(fmt)
        samples = stream.converter.process(event.payload or b"")
        await self._decode(stream, samples)

    async def _stop(self) -> None:
        stream, self.stream = self.stream, None
        self.silent = False
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
            name = self.replies.get((det.keyword, det.phrase), det.keyword)
            await write_event(self.writer, detection_event(name, stamp))
            if self.server.on_detection is not None:
                self.server.on_detection(det)
