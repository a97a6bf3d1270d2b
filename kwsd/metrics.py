"""Prometheus metrics for one daemon instance.

Each `Metrics` owns its own `CollectorRegistry` instead of the process-global default,
so two daemons in one process (tests, an embedded use) never clash over metric names.
Metric objects are thread-safe: the engine's worker thread records chunk timings while
the event loop updates MQTT state.
"""

from __future__ import annotations

import math
import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder

from kwsd import __version__
from kwsd.heartbeat import Heartbeat

# Encoder + search time for one 320 ms chunk: ~0.5 ms (CoreML/ANE) to tens of ms on a
# small ARM board; above 320 ms the daemon falls behind real time.
CHUNK_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.32,
)
# How quickly the real-time factor gauge follows new chunks (about the last 10 chunks).
RTF_SMOOTHING = 0.1


class Metrics:
    """The daemon's metrics; call the `record_*`/`set_*` methods, scrape with `render`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        reg = self.registry
        self.detections = Counter(
            "kwsd_detections", "Keyword detections.", ["keyword"], registry=reg
        )
        self.audio_dropped_seconds = Counter(
            "kwsd_audio_dropped_seconds",
            "Audio discarded because processing fell behind (seconds of audio).",
            registry=reg,
        )
        self.chunk_seconds = Histogram(
            "kwsd_chunk_seconds",
            "Encoder plus search time per 320 ms chunk.",
            buckets=CHUNK_BUCKETS,
            registry=reg,
        )
        self.mqtt_connected = Gauge(
            "kwsd_mqtt_connected", "1 while connected to the MQTT broker.", registry=reg
        )
        self.realtime_factor = Gauge(
            "kwsd_realtime_factor",
            "Processing time divided by audio time, smoothed; below 1 keeps up.",
            registry=reg,
        )
        self.outbox_messages = Gauge(
            "kwsd_outbox_messages",
            "MQTT messages queued while the broker is unreachable.",
            registry=reg,
        )
        self.outbox_dropped = Counter(
            "kwsd_outbox_dropped",
            "MQTT events (detections, command replies) dropped undelivered: reason=full, the "
            "outbox was full; reason=expired, older than mqtt.outbox_max_age_seconds.",
            ["reason"],
            registry=reg,
        )
        self.mqtt_incoming_dropped = Counter(
            "kwsd_mqtt_incoming_dropped",
            "Received MQTT messages dropped because too many were waiting for their handler "
            "(kind=command: a command that got no reply).",
            ["kind"],
            registry=reg,
        )
        self.mqtt_connections = Counter(
            "kwsd_mqtt_connections", "Successful connections to the MQTT broker.", registry=reg
        )
        for reason in ("full", "expired"):
            self.outbox_dropped.labels(reason=reason)
        for kind in ("command", "other"):
            self.mqtt_incoming_dropped.labels(kind=kind)
        self._followed: dict[Counter, int] = {}  # totals last passed to set_mqtt_totals
        self.keywords = Gauge("kwsd_keywords", "Keywords currently active.", registry=reg)
        self.audio_age_seconds = Gauge(
            "kwsd_audio_age_seconds",
            "Seconds since the last audio chunk went through the pipeline (NaN before the first).",
            registry=reg,
        )
        self.audio_age_seconds.set(math.nan)  # until `watch_heartbeat`
        self.build = Info("kwsd_build", "kwsd version and runtime.", registry=reg)
        self.build.info({"version": __version__})
        self._rtf_lock = threading.Lock()
        self._rtf: float | None = None

    def set_build_info(self, **labels: str) -> None:
        """E.g. backend="onnx", model="gigaspeech-3.3M"; the version is always included."""
        self.build.info({"version": __version__, **labels})

    def watch_heartbeat(self, heartbeat: Heartbeat) -> None:
        """Report the heartbeat's age at scrape time, for alerts on a silent pipeline."""

        def age() -> float:
            value = heartbeat.age()
            return math.nan if value is None else value

        self.audio_age_seconds.set_function(age)

    def record_detection(self, keyword: str) -> None:
        self.detections.labels(keyword=keyword).inc()

    def record_dropped(self, seconds: float) -> None:
        if seconds > 0:
            self.audio_dropped_seconds.inc(seconds)

    def record_chunk(self, compute_seconds: float, audio_seconds: float = 0.32) -> None:
        """One chunk's encoder+search time; also moves the smoothed real-time factor."""
        self.chunk_seconds.observe(compute_seconds)
        if audio_seconds <= 0:
            return
        ratio = compute_seconds / audio_seconds
        with self._rtf_lock:
            previous = self._rtf
            self._rtf = ratio if previous is None else previous + RTF_SMOOTHING * (ratio - previous)
            value = self._rtf
        self.realtime_factor.set(value)

    def set_mqtt_connected(self, connected: bool) -> None:
        self.mqtt_connected.set(1 if connected else 0)

    def set_outbox(self, messages: int) -> None:
        self.outbox_messages.set(messages)

    def set_mqtt_totals(
        self,
        *,
        outbox_full: int,
        outbox_expired: int,
        commands_dropped: int,
        incoming_dropped: int,
        connections: int,
    ) -> None:
        """The MQTT link's running totals (it counts them itself); the counters follow."""
        for counter, total in (
            (self.outbox_dropped.labels(reason="full"), outbox_full),
            (self.outbox_dropped.labels(reason="expired"), outbox_expired),
            (self.mqtt_incoming_dropped.labels(kind="command"), commands_dropped),
            (self.mqtt_incoming_dropped.labels(kind="other"), incoming_dropped),
            (self.mqtt_connections, connections),
        ):
            increase = total - self._followed.get(counter, 0)
            if increase > 0:
                counter.inc(increase)
                self._followed[counter] = total

    def set_keywords(self, count: int) -> None:
        self.keywords.set(count)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """Exposition text and its content type, honouring an OpenMetrics Accept header."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
