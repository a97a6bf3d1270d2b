"""The daemon's one MQTT connection: publishes, delivers subscriptions, survives outages.

Spotting must never wait for the network, so every publish is a non-blocking put into
the Outbox and a single task (`run`) owns the connection: it connects, (re)subscribes,
re-publishes the retained state, drains the outbox, and on any failure reconnects with
backoff while the outbox keeps filling. Incoming messages are handled one at a time by
a dispatcher that outlives connections, so a command reply is never lost to a reconnect.

Nothing is dropped without a count and a log line: events pushed out of a full outbox,
events older than `outbox_max_age_seconds`, received messages beyond the inbox bound,
and whatever is still queued when the link stops. The dispatcher reads the next
message only while the outbox has room for its reply, so a flood of commands is
answered at the pace the broker takes the replies, instead of the replies pushing
each other (and detections) out of the outbox.

Reconnecting: for the first minute of an outage the link retries every 1-2 s
(`PROMPT_RECONNECT_*`), so a broker restart costs seconds, not the tens of seconds an
exponential schedule reaches by then; a longer outage backs off up to
`reconnect_max_seconds`.

The link is transport only. What the messages mean lives on top of it: commands in
kwsd/mqtt/commands.py, the detection output in kwsd/mqtt/output.py, and the Home
Assistant, Hermes and mute-topic integrations in kwsd/integrations/.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from kwsd.backoff import Backoff
from kwsd.detection import Detection
from kwsd.mqtt.diagnose import explain_connect_error, explain_connection_lost
from kwsd.mqtt.inbox import Inbox
from kwsd.mqtt.messages import InboundMessage, OutMessage
from kwsd.mqtt.options import MqttOptions
from kwsd.mqtt.outbox import Outbox, Ticket
from kwsd.mqtt.payloads import DetectionPayload, KeywordsPayload
from kwsd.mqtt.topics import Topics, topic_problem

log = structlog.get_logger("kwsd.mqtt")
# paho's own socket errors duplicate the one-line reports below; keep them apart.
_PAHO_LOG = logging.getLogger("kwsd.mqtt.paho")

MessageCallback = Callable[[InboundMessage], Awaitable[None]]

ONLINE: Final = b"online"
OFFLINE: Final = b"offline"
_WINDOW: Final = 8  # publishes awaiting their PUBACK at once (aiomqtt warns above 10)
# For this long after the connection is lost, retry at least this often (see the module
# docstring); measured from the loss, so an outage under a minute costs at most ~2 s
# after the broker is back.
PROMPT_RECONNECT_WINDOW: Final = 60.0
PROMPT_RECONNECT_CEILING: Final = 2.0
_ROOM_RECHECK: Final = 0.1  # while waiting for outbox room: how often to re-check the link


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """A snapshot for the health check and metrics."""

    broker: str
    connected: bool
    last_error: str | None
    queued: int  # events not yet acknowledged by the broker
    dropped: int  # events dropped because the outbox was full
    delivered: int
    connects: int  # successful connections since start
    failures: int = 0  # failed connection attempts and lost connections since start
    expired: int = 0  # events dropped because they waited longer than the maximum age
    commands_dropped: int = 0  # commands dropped unanswered: the inbox was full
    incoming_dropped: int = 0  # other received messages dropped: the inbox was full


class _PahoLog(logging.Logger):
    """paho's logger for one client; remembers its last error for the diagnosis."""

    def __init__(self) -> None:
        super().__init__(_PAHO_LOG.name)
        self.parent = _PAHO_LOG  # records still reach the normal logging tree
        self.last_error: str | None = None

    def handle(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.last_error = record.getMessage()
        super().handle(record)


class _SessionEndedError(Exception):
    """A connection attempt failed or an established connection was lost."""

    def __init__(self, message: str, *, lost: bool = False) -> None:
        super().__init__(message)
        self.lost = lost  # a routine outage (warning), not a refused connection (error)


class MqttLink:
    """Publishes detections and state to MQTT and delivers subscribed messages.

    Call the publish methods and `subscribe` from the event loop thread; they never
    block and work whether or not the broker is reachable. Run `run()` as a task;
    cancel it (or call `stop()`) to shut down, which delivers what it can, publishes
    `offline` and disconnects cleanly.
    """

    def __init__(self, options: MqttOptions, *, site: str, model: str) -> None:
        self.options = options
        self.topics = Topics.for_base(options.base_topic)
        self.site = site
        self.model = model
        # Built now so a bad CA/cert file is a ConfigError at start, not a retry loop.
        self._ssl = options.tls.ssl_context() if options.tls.enabled else None
        if options.tls.enabled and options.tls.insecure:
            log.warning(
                "MQTT TLS certificate checks are off (mqtt.tls.insecure = true): the broker "
                "is not authenticated",
                broker=options.address,
            )
        self.client_id = options.client_id or _default_client_id(site)
        self._outbox = Outbox(options.outbox_size, max_age=options.outbox_max_age_seconds)
        self._subscriptions: dict[str, list[MessageCallback]] = {}
        self._inbox = Inbox(options.inbox_messages, options.inbox_bytes)
        self._commands_dropped = 0
        self._expired_reported = 0
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._running = False
        self._background: set[asyncio.Task[None]] = set()
        self._last_error: str | None = None
        self._connects = 0
        self._failures = 0
        self._keywords_version: int | str | None = None
        self._last_detection: tuple[Detection, DetectionPayload] | None = None
        # First state topic, so it is the first message after every (re)connect.
        self._outbox.set_state(OutMessage(self.topics.status, ONLINE, 1, True))

    # ----------------------------------------------------------------- state

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def status(self) -> LinkStatus:
        return LinkStatus(
            broker=self.options.address,
            connected=self.connected,
            last_error=self._last_error,
            queued=len(self._outbox),
            dropped=self._outbox.dropped,
            delivered=self._outbox.delivered,
            connects=self._connects,
            failures=self._failures,
            expired=self._outbox.expired,
            commands_dropped=self._commands_dropped,
            incoming_dropped=self._inbox.dropped - self._commands_dropped,
        )

    @property
    def keywords_version(self) -> int | str | None:
        """The version of the keyword list last published (None before the first)."""
        return self._keywords_version

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def flush(self) -> None:
        """Wait until the broker has acknowledged everything published so far."""
        await self._outbox.drained()

    # ------------------------------------------------------------- publishing

    def publish_detection(
        self, det: Detection, *, when: datetime | None = None
    ) -> DetectionPayload:
        payload = DetectionPayload.from_detection(det, site=self.site, model=self.model, when=when)
        self._last_detection = (det, payload)
        self._put(OutMessage(self.topics.detection, payload.to_json(), self.options.qos, False))
        return payload

    def detection_payload(self, det: Detection) -> DetectionPayload:
        """The payload just published for `det`, or a new one if it was not published.

        Outputs on this link (the detection topic, the Home Assistant event) each get
        the detection on their own; asking here gives them one `id` and `time`, so a
        consumer can tell that the HA event and the detection message are one event.
        The daemon hands a detection to every output in one go, the MQTT output first,
        so remembering the last one is enough.
        """
        last = self._last_detection
        if last is not None and last[0] is det:
            return last[1]
        return DetectionPayload.from_detection(det, site=self.site, model=self.model)

    def publish_keywords(self, state: KeywordsPayload) -> None:
        """Make `state` the retained keyword list (re-sent on every reconnect)."""
        self._keywords_version = state.version
        self._outbox.set_state(OutMessage(self.topics.keywords, state.to_json(), 1, True))

    def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int | None = None,
        retain: bool = False,
        correlation_data: bytes | None = None,
    ) -> None:
        """Publish through the link's connection and outbox.

        A retained message is treated as state: only its latest payload is kept and it
        is re-published after every reconnect (discovery configs, availability). Other
        messages are events, queued in order with the detections. `correlation_data`
        goes out as the MQTT 5 property (a reply to a request that carried it).
        """
        problem = topic_problem(topic)
        if problem is not None:
            raise ValueError(f"cannot publish to {topic!r}: {problem}")
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        message = OutMessage(
            topic, data, self.options.qos if qos is None else qos, retain, correlation_data
        )
        if retain:
            self._outbox.set_state(message)
        else:
            self._put(message)

    def subscribe(self, topic_filter: str, callback: MessageCallback) -> None:
        """Call `callback` for every message on `topic_filter`, across reconnects.

        Callbacks run one at a time, in arrival order; an exception in one is logged
        and does not affect the others or the connection.
        """
        problem = topic_problem(topic_filter, allow_wildcards=True)
        if problem is not None:
            raise ValueError(f"cannot subscribe to {topic_filter!r}: {problem}")
        callbacks = self._subscriptions.setdefault(topic_filter, [])
        callbacks.append(callback)
        client = self._client
        if len(callbacks) == 1 and client is not None and self.connected:
            self._spawn(self._subscribe(client, [topic_filter]))

    def _put(self, message: OutMessage) -> None:
        full = self._outbox.put(message)
        self._report_expired()
        if full:
            dropped = self._outbox.dropped
            if dropped == 1 or dropped % 100 == 0:
                log.warning(
                    "MQTT outbox full: dropped the oldest queued message",
                    broker=self.options.address,
                    outbox_size=self._outbox.maxsize,
                    dropped_total=dropped,
                )

    def _expire(self) -> None:
        self._outbox.expire()
        self._report_expired()

    def _report_expired(self) -> None:
        """Log the events that expired since the last report (the outbox expires them as
        it goes: when one is queued or taken)."""
        count = self._outbox.expired - self._expired_reported
        self._expired_reported = self._outbox.expired
        if count:
            log.warning(
                f"MQTT: dropped {count} queued message(s) older than "
                f"{self.options.outbox_max_age_seconds:g} s instead of delivering them late "
                "(mqtt.outbox_max_age_seconds)",
                broker=self.options.address,
                expired_total=self._outbox.expired,
            )

    # -------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        """Ask `run()` to deliver what it can, publish `offline` and return."""
        self._stopping.set()

    async def run(self) -> None:
        if self._running:
            raise RuntimeError("MqttLink.run() is already running")
        self._running = True
        self._stopping.clear()
        self._outbox.set_state(OutMessage(self.topics.status, ONLINE, 1, True))
        dispatcher = asyncio.create_task(self._dispatch(), name="kwsd-mqtt-dispatch")
        backoff = Backoff(self.options.reconnect_min_seconds, self.options.reconnect_max_seconds)
        loop = asyncio.get_running_loop()
        outage_since = loop.time()
        try:
            while not self._stopping.is_set():
                connects = self._connects
                try:
                    await self._session(backoff)
                except _SessionEndedError as ended:
                    self._record_failure(ended, backoff)
                if self._connects != connects:
                    outage_since = loop.time()  # was connected: the outage starts now
                if self._stopping.is_set():
                    break
                self._expire()
                early = loop.time() - outage_since < PROMPT_RECONNECT_WINDOW
                delay = backoff.next_delay(cap=PROMPT_RECONNECT_CEILING if early else None)
                log.debug("MQTT reconnect scheduled", delay_s=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
        finally:
            self._running = False
            self._connected.clear()
            dispatcher.cancel()
            for task in (dispatcher, *self._background):
                task.cancel()
            await asyncio.gather(dispatcher, *self._background, return_exceptions=True)
            self._report_undelivered()

    def _report_undelivered(self) -> None:
        """Say how much is lost when the link stops with events still queued."""
        queued = self._outbox.queued()
        if not queued:
            return
        detections = sum(1 for m in queued if m.topic == self.topics.detection)
        log.warning(
            f"MQTT: stopping with {detections} detection(s) ({len(queued)} message(s) in all) "
            "not delivered to the broker",
            broker=self.options.address,
            connected=self.connected,
            last_error=self._last_error,
        )

    def _record_failure(self, ended: _SessionEndedError, backoff: Backoff) -> None:
        self._failures += 1
        message = str(ended)
        repeated = message == self._last_error
        self._last_error = message
        fields = {"queued": len(self._outbox), "attempt": backoff.attempt + 1}
        if repeated:
            log.debug(message, **fields)
        elif ended.lost:
            log.warning(message, **fields)
        else:
            log.error(message, **fields)

    def _new_client(self, paho_log: logging.Logger) -> aiomqtt.Client:
        opts = self.options
        v5 = opts.protocol == "5"
        return aiomqtt.Client(
            opts.host,
            opts.port,
            username=opts.username,
            password=opts.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self.topics.status, OFFLINE, qos=1, retain=True),
            clean_session=None if v5 else True,
            keepalive=opts.keepalive,
            timeout=opts.timeout_seconds,
            tls_context=self._ssl,
            logger=paho_log,
        )

    async def _session(self, backoff: Backoff) -> None:
        """One connection, from CONNECT until it is lost or we are told to stop."""
        paho_log = _PahoLog()
        client = self._new_client(paho_log)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            # aiomqtt reports a connection that died before CONNACK (e.g. a TLS alert
            # "certificate required" after the handshake) only as a timeout; paho
            # logged the real cause.
            await _abandon(client, self.options.timeout_seconds)
            seen = paho_log.last_error
            cause: BaseException = exc
            if seen and "timed out" in str(exc):
                cause = aiomqtt.MqttError(seen)
            raise _SessionEndedError(explain_connect_error(cause, self.options)) from exc
        graceful = False
        tasks: list[asyncio.Future[Any]] = []
        failure: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        try:
            self._outbox.rewind()  # re-send state and anything unacknowledged
            await self._subscribe(client, list(self._subscriptions))
            self._client = client
            self._connects += 1
            self._last_error = None
            self._connected.set()
            backoff.reset()
            log.info(
                "MQTT connected",
                broker=self.options.address,
                client_id=self.client_id,
                protocol=self.options.protocol,
                base_topic=self.topics.base,
                queued=len(self._outbox),
            )
            reader = asyncio.create_task(self._read(client), name="kwsd-mqtt-read")
            writer = asyncio.create_task(self._write(client, failure), name="kwsd-mqtt-write")
            stop = asyncio.create_task(self._stopping.wait(), name="kwsd-mqtt-stop")
            tasks = [reader, writer, stop]
            done, _ = await asyncio.wait([*tasks, failure], return_when=asyncio.FIRST_COMPLETED)
            if stop in done:
                await self._goodbye(client, failure, draining=True)
                graceful = True
                return
            cause = failure.result() if failure.done() else _task_error(reader, writer)
            lost = explain_connection_lost(cause, self.options)
            raise _SessionEndedError(lost, lost=True) from cause
        except asyncio.CancelledError:
            await self._goodbye(client, failure, draining=bool(tasks))
            graceful = True
            raise
        except aiomqtt.MqttError as exc:  # subscribing failed
            raise _SessionEndedError(explain_connection_lost(exc, self.options), lost=True) from exc
        finally:
            self._connected.clear()
            self._client = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._outbox.rewind()
            await self._close(client, graceful=graceful)

    async def _goodbye(
        self, client: aiomqtt.Client, failure: asyncio.Future[BaseException], *, draining: bool
    ) -> None:
        """Deliver what is queued (bounded wait), then announce `offline` ourselves.

        A clean DISCONNECT suppresses the last will, so `offline` must be published
        explicitly or the retained status would stay `online` forever.
        """
        timeout = self.options.shutdown_timeout_seconds
        if draining and not failure.done():
            drained: asyncio.Future[Any] = asyncio.ensure_future(self._outbox.drained())
            waited: list[asyncio.Future[Any]] = [drained, failure]
            await asyncio.wait(waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()  # what is left is reported when the link stops
        if failure.done():
            return  # the connection is gone: the broker publishes the will instead
        try:
            async with asyncio.timeout(timeout):
                await client.publish(self.topics.status, OFFLINE, qos=1, retain=True)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            log.warning("MQTT shutdown: could not publish offline status", error=str(exc))
        log.info("MQTT disconnecting", broker=self.options.address)

    async def _close(self, client: aiomqtt.Client, *, graceful: bool) -> None:
        try:
            async with asyncio.timeout(self.options.shutdown_timeout_seconds):
                await client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            if graceful:
                log.debug("MQTT disconnect was not clean", error=str(exc))

    async def _subscribe(self, client: aiomqtt.Client, filters: list[str]) -> None:
        """Subscribe at QoS 0; on MQTT 5 with Retain As Published.

        QoS 0 because QoS 1 would only cost: kwsd's sessions are clean, so the broker
        never redelivers to it across a reconnect anyway, and at QoS 1 the broker holds
        what kwsd has not acknowledged in a small window and a bounded queue (mosquitto:
        20 in flight, `max_queued_messages` 1000), then drops. A flood of commands
        faster than kwsd reads would be dropped there, without a trace in kwsd. At QoS 0
        the broker writes to the socket, and TCP flow control slows it down instead.

        Retain As Published keeps the retain flag a message was published with even when
        it arrives live, so a retained command is refused however it arrives (on 3.1.1
        only the broker's replay of a retained message is marked).
        """
        if not filters:
            return
        if self.options.protocol == "5":
            options = SubscribeOptions(qos=0, retainAsPublished=True)
            granted = await client.subscribe([(f, options) for f in filters])
        else:
            granted = await client.subscribe([(f, 0) for f in filters])
        for topic_filter, code in zip(filters, granted, strict=False):
            refused = code.is_failure if hasattr(code, "is_failure") else code == 0x80
            if refused:
                self._last_error = (
                    f"MQTT broker {self.options.address} refused the subscription to "
                    f"{topic_filter!r} ({code}): check the broker's ACL for this user"
                )
                log.error(self._last_error)

    # ----------------------------------------------------------------- output

    async def _write(self, client: aiomqtt.Client, failure: asyncio.Future[BaseException]) -> None:
        window = asyncio.Semaphore(_WINDOW)
        pending: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            pending.discard(task)
            window.release()

        try:
            while True:
                await window.acquire()
                ticket = await self._outbox.take()
                self._report_expired()
                task = asyncio.create_task(self._deliver(client, ticket, failure))
                pending.add(task)
                task.add_done_callback(finished)
        finally:
            for task in list(pending):
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _deliver(
        self, client: aiomqtt.Client, ticket: Ticket, failure: asyncio.Future[BaseException]
    ) -> None:
        message = ticket.message
        try:
            await client.publish(
                message.topic,
                message.payload,
                qos=message.qos,
                retain=message.retain,
                properties=self._properties(message),
            )
        except (ValueError, TypeError) as exc:  # the message itself is unsendable
            log.error("MQTT message dropped", topic=message.topic, error=str(exc))
            self._outbox.discard(ticket)
            return
        except aiomqtt.MqttError as exc:
            if not failure.done():
                failure.set_result(exc)
            return
        self._outbox.ack(ticket)

    def _properties(self, message: OutMessage) -> Properties | None:
        if self.options.protocol != "5" or message.correlation_data is None:
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.CorrelationData = message.correlation_data
        return properties

    # ------------------------------------------------------------------ input

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            props = message.properties
            response_topic = getattr(props, "ResponseTopic", None) if props else None
            correlation = getattr(props, "CorrelationData", None) if props else None
            inbound = InboundMessage(
                topic=message.topic.value,
                payload=bytes(message.payload)
                if isinstance(message.payload, bytes | bytearray)
                else str(message.payload).encode(),
                qos=message.qos,
                retain=bool(message.retain),
                response_topic=str(response_topic) if response_topic else None,
                correlation_data=bytes(correlation) if correlation is not None else None,
            )
            if not self._inbox.offer(inbound):
                self._report_inbox_drop(inbound)

    def _report_inbox_drop(self, message: InboundMessage) -> None:
        command = self.topics.is_command_topic(message.topic)
        if command:
            self._commands_dropped += 1
        dropped = self._inbox.dropped
        if dropped == 1 or dropped % 100 == 0:
            log.warning(
                "MQTT: too many received messages waiting; dropped one"
                + (" command, which gets no reply" if command else ""),
                topic=message.topic,
                waiting=len(self._inbox),
                dropped_total=dropped,
                commands_dropped_total=self._commands_dropped,
            )

    async def _room_for_replies(self) -> None:
        """While connected, wait until the outbox is at most half full.

        Handlers publish (a command always replies), so taking the next message while
        the outbox is filling up would make the replies push each other, and queued
        detections, out of it. While disconnected nothing waits: the outbox cannot
        drain then, and the backlog is bounded by the inbox.
        """
        while self.connected and not self._outbox.has_room:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_ROOM_RECHECK):
                    await self._outbox.room()

    async def _dispatch(self) -> None:
        while True:
            await self._room_for_replies()
            message = await self._inbox.get()
            topic = aiomqtt.Topic(message.topic)
            for topic_filter, callbacks in list(self._subscriptions.items()):
                if not topic.matches(topic_filter):
                    continue
                for callback in list(callbacks):
                    try:
                        await callback(message)
                    except Exception:
                        log.exception("MQTT message handler failed", topic=message.topic)
            # Handlers that never wait (pause, resume) would otherwise run a whole
            # backlog in one go, holding up the event loop: the pipeline's detections,
            # the writer, the health endpoint and the reader.
            await asyncio.sleep(0)

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except aiomqtt.MqttError as exc:  # the next reconnect subscribes again
                log.warning("MQTT subscribe failed", error=str(exc))

        task = asyncio.create_task(guarded())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _task_error(*tasks: asyncio.Future[Any]) -> BaseException:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            error = task.exception()
            assert error is not None
            return error
    return ConnectionError("the connection closed")


async def _abandon(client: aiomqtt.Client, give_up_after: float) -> None:
    """Close what a failed connection attempt left open.

    After a CONNACK timeout aiomqtt keeps paho's socket, and the event loop keeps
    watching it; over a long outage that would leak one descriptor per attempt. The
    client's own exit sends DISCONNECT and closes that socket (or, when the socket is
    already gone, just resets the client).
    """
    with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
        async with asyncio.timeout(give_up_after):
            await client.__aexit__(None, None, None)


def _default_client_id(site: str) -> str:
    # Short (MQTT 3.1.1 only guarantees 23 characters) yet recognisable in broker logs.
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", site).strip("-")[:8] or "site"
    return f"kwsd-{slug}-{secrets.token_hex(4)}"
