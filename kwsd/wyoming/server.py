"""The Wyoming wake-word server: one asyncio task per connection, one stream per task.

Home Assistant opens a connection per pipeline run and streams microphone audio into
it; several satellites may do so at once. All connections share the one
`KeywordSpotter` (its model, and the keyword graph of equal keyword lists) while each
connection has a stream of its own, so one client's audio never leaks into another's
results. The event loop only reads, converts and buffers audio; decoding runs in the
`DecodeEngine`'s worker thread, which encodes the chunks of all connections together
(`kwsd.wyoming.engine`). The keyword selection of a `detect` is computed once per
keyword list, so a new `audio-start` rebuilds nothing. A client that breaks the
protocol gets an `error` event and loses only its own connection. A `detect` naming
no active keyword is not a broken protocol: the client gets an `error` event listing
what kwsd spots, keeps its connection, and its streams end in `not-detected`. How many
connections, for how long and at what cost is in `limits`; accepting them is in
`listener`.
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
from kwsd.errors import ConfigError
from kwsd.gate import DetectionGate, Verdict
from kwsd.keywords import KeywordSet
from kwsd.mute import MuteState
from kwsd.spotter import KeywordSpotter
from kwsd.wyoming.audio import AUDIO_CHUNK, AUDIO_START, AUDIO_STOP, AudioFormat, PcmConverter
from kwsd.wyoming.engine import DecodeEngine, DecodeOptions, DecodingError, EngineStream
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
from kwsd.wyoming.info import DESCRIBE, WakeModel, info_event, wake_models
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

# Encoder chunks (320 ms each) a connection may hand over ahead of its decoding.
MAX_BACKLOG_CHUNKS: Final = 4


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
        decoding: DecodeOptions | None = None,
    ) -> None:
        self.spotter = spotter
        self.decoding = decoding or DecodeOptions()
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
        self.engine: DecodeEngine | None = None  # started by start()
        # The selections of the current keyword list, by the names a `detect` asked for.
        self._selections: tuple[KeywordSet | None, dict[tuple[str, ...] | None, _Selection]] = (
            None,
            {},
        )

    def selection(self, names: tuple[str, ...] | None) -> _Selection:
        """What a `detect` for `names` spots of the current keywords (None: all of them).

        Computed once per keyword list and names: every `audio-start` of every
        connection with the same request gets the same `KeywordSet` object, so its
        stream keeps its keyword graph.
        """
        current = self.keywords()
        cached_for, selections = self._selections
        if cached_for is not current:
            selections = {}
            self._selections = (current, selections)
        found = selections.get(names)
        if found is None:
            models = wake_models(current.keywords)
            chosen, unknown = select(current.keywords, names, [m.keys for m in models])
            found = selections[names] = _Selection(
                keywords=dataclasses.replace(current, keywords=tuple(k for k, _ in chosen)),
                unknown=tuple(unknown),
                replies={(k.display, k.phrase): name for k, name in chosen},
                models=tuple(models),
            )
        return found

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
        if self.engine is None:
            self.engine = await DecodeEngine.start(self.spotter, self.decoding)
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
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.close()
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
        assert self.engine is not None  # start() starts it before accepting
        await _Session(self, self.engine, reader, writer, peer).run()


def _report_accept_loop_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error(
            "Wyoming server stopped accepting connections",
            error=repr(task.exception()),
            fix="restart kwsd and report this",
        )


@dataclasses.dataclass(frozen=True)
class _Selection:
    """The keywords a `detect` selects, the names it asked for that match none, and the
    `name` each selected keyword's detections answer with."""

    keywords: KeywordSet
    unknown: tuple[str, ...]
    replies: dict[tuple[str, str], str]  # (display, phrase) → name
    models: tuple[WakeModel, ...]  # every active keyword, as `describe` lists them


@dataclasses.dataclass
class _Stream:
    """One audio-start..audio-stop: its converter and detection gate (the audio goes to
    the connection's engine stream)."""

    converter: PcmConverter
    gate: DetectionGate  # the server's shared mute, this stream's refractory history
    start_ms: int  # the client's timestamp of audio-start (0 when it sent none)
    replies: dict[tuple[str, str], str]  # (display, phrase) → the name detections carry
    detections: int = 0


class _Session:
    def __init__(
        self,
        server: WyomingServer,
        engine: DecodeEngine,
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
        self.engine = engine
        self.decoder: EngineStream | None = None  # opened at the first audio-start
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
            if self.decoder is not None:
                self.decoder.close()
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
            models = self.server.selection(None).models
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
            if self.decoder is not None:
                # The pong follows the answers to all audio sent before the ping.
                await self.decoder.settle()
            await write_event(self.writer, Event(PONG, {"text": event.data.get("text")}))
        else:
            self.log.debug("Wyoming event ignored", type=event.type)

    async def _can_spot(self) -> bool:
        """Whether the selection holds a keyword; if not, tell the client (once per
        `detect`) with an `error` event that names what kwsd spots. The connection stays
        open: a streamed stream then ends in `not-detected`."""
        selection = self.server.selection(self.names)
        asked = ", ".join(repr(n) for n in selection.unknown)
        if selection.keywords.keywords:
            if selection.unknown and self.reported != asked:
                # Some names are fine: spot those, and only tell the log about the rest.
                self.reported = asked
                self.log.warning(
                    "Wyoming detect names unknown wake words", unknown=list(selection.unknown)
                )
            return True
        if not selection.models:
            code = "no-keywords"
            text = "kwsd has no active keywords; add some (config, keywords file or MQTT)"
        else:
            code = "unknown-wake-word"
            spots = ", ".join(m.listing for m in selection.models)
            text = f"unknown wake word {asked}; kwsd spots: {spots}"
        if text != self.reported:
            self.reported = text
            self.log.warning("Wyoming client asks for no active keyword", error=text)
            await write_event(self.writer, error_event(text, code))
        return False

    def _new_stream(self, fmt: AudioFormat, data: dict[str, object]) -> _Stream:
        stamp = data.get("timestamp")
        start_ms = stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else 0
        selection = self.server.selection(self.names)
        stream = _Stream(
            converter=PcmConverter(fmt),
            gate=DetectionGate(self.server.mute, self.server.refractory_seconds),
            start_ms=start_ms,
            replies=selection.replies,
        )
        if self.decoder is None:
            self.decoder = self.engine.open(self.peer)
        self.decoder.restart(selection.keywords, lambda found: self._report(stream, found))
        return stream

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
            await self._feed(stream.converter.flush())
            stream.converter = PcmConverter(fmt)
        await self._feed(stream.converter.process(event.payload or b""))

    async def _feed(self, samples: FloatArray) -> None:
        assert self.decoder is not None  # opened with the stream
        self.decoder.feed(samples)
        if self.decoder.backlog > MAX_BACKLOG_CHUNKS:
            # Read no more from a client that is ahead of its decoding (it sends faster
            # than real time, or the machine is short of CPU): its audio waits in its
            # socket, not in kwsd's memory.
            await self.decoder.settle()

    async def _stop(self) -> None:
        stream, self.stream = self.stream, None
        self.silent = False
        if stream is None:
            await write_event(self.writer, not_detected_event())
            return
        await self._feed(stream.converter.flush())
        assert self.decoder is not None
        try:
            await self.decoder.finish()  # its detections have been reported when this returns
        except DecodingError as exc:
            # Only this utterance is lost (a decode process died, a model call failed);
            # the connection stays, and its next utterance decodes afresh.
            self.log.error("Wyoming stream could not be decoded", error=str(exc))
            await write_event(self.writer, error_event(str(exc), "decoding-failed"))
            return
        if stream.detections == 0:
            await write_event(self.writer, not_detected_event())
        else:
            await self.writer.drain()

    def _report(self, stream: _Stream, found: list[Detection]) -> None:
        """On the loop, from the engine: gate each detection and answer the client."""
        for det in found:
            verdict = stream.gate.check(det)
            if verdict is Verdict.MUTED:
                self.log.info("Wyoming detection muted", keyword=det.keyword)
                continue
            if verdict is Verdict.REPEAT:
                continue
            stream.detections += 1
            stamp = stream.start_ms + round(det.end * 1000)
            self.log.info("Wyoming detection", keyword=det.keyword, score=round(det.score, 3))
            name = stream.replies.get((det.keyword, det.phrase), det.keyword)
            if not self.writer.is_closing():
                # Written without waiting: a detection is a few dozen bytes, and the
                # session's next write waits for the socket (`drain`).
                self.writer.write(detection_event(name, stamp).to_bytes())
            if self.server.on_detection is not None:
                try:
                    self.server.on_detection(det)
                except Exception:  # an observer's bug must not cost the client its answer
                    self.log.exception("Wyoming detection observer failed")
