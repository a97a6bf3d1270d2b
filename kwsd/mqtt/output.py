"""The daemon's MQTT output: detections and the keyword state on the link, and its lifetime.

Detections go to `<base>/detection` (QoS `mqtt.qos`, not retained) and the keyword
state is retained on `<base>/keywords`; both through the link's outbox, so a broker
outage only queues them. The output owns the link's `run()` task and decides how
long closing may take:

- the daemon was asked to stop (a signal): deliver what the link can within the
  goodbye budget, publish `offline`, disconnect, so `kwsd run` stops in about 2 s;
- the input ended (a file or stdin): first wait for the broker to take every
  detection, bounded, because a short file can end before the first connection is
  even up; a stop request during that wait cuts it short.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any, Final

import structlog

from kwsd.detection import Detection
from kwsd.metrics import Metrics
from kwsd.mqtt.link import MqttLink
from kwsd.mqtt.options import MqttOptions
from kwsd.mqtt.payloads import KeywordsPayload
from kwsd.registry import RegistryState

log = structlog.get_logger("kwsd.mqtt")

GOODBYE_TIMEOUT: Final = 1.0  # closing after a stop request, `offline` included
END_OF_INPUT_DELIVERY_TIMEOUT: Final = 10.0  # waiting for the broker when the input ended
METRICS_POLL_SECONDS: Final = 1.0


def fit_goodbye(options: MqttOptions) -> MqttOptions:
    """`options` whose shutdown waits fit the goodbye budget twice (drain, then offline)."""
    return dataclasses.replace(
        options,
        shutdown_timeout_seconds=min(options.shutdown_timeout_seconds, GOODBYE_TIMEOUT / 2),
    )


class MqttOutput:
    """An Output (kwsd/outputs.py) that publishes on `link` and runs it.

    `input_ended` and `stop_requested` are the daemon's: when the input has ended by
    the time of `close`, delivery is awaited first, until `stop_requested` is set at
    the latest. Any other close (a stop request, a failure) only says goodbye. With
    `metrics`, the link's connection state and queue length are exported.
    """

    def __init__(
        self,
        link: MqttLink,
        *,
        input_ended: asyncio.Event | None = None,
        stop_requested: asyncio.Event | None = None,
        metrics: Metrics | None = None,
        delivery_timeout: float = END_OF_INPUT_DELIVERY_TIMEOUT,
    ) -> None:
        self.link = link
        self.metrics = metrics
        self.delivery_timeout = delivery_timeout
        self._input_ended = input_ended or asyncio.Event()
        self._stop_requested = stop_requested or asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.link.run(), name="kwsd-mqtt"))
        if self.metrics is not None:
            export = asyncio.create_task(self._export(self.metrics), name="kwsd-mqtt-metrics")
            self._tasks.append(export)
        log.info(
            "detections go to MQTT",
            broker=self.link.options.address,
            base_topic=self.link.topics.base,
        )

    def on_detection(self, det: Detection) -> None:
        self.link.publish_detection(det)

    def on_keywords(self, state: RegistryState) -> None:
        self.link.publish_keywords(KeywordsPayload.from_state(state))

    async def close(self) -> None:
        if not self._tasks:
            return
        run, *others = self._tasks
        self._tasks = []
        for task in others:
            await _cancel(task)
        try:
            ended = self._input_ended.is_set() and not self._stop_requested.is_set()
            if ended and not run.done():
                await self._deliver()
        finally:
            self.link.stop()
            try:
                async with asyncio.timeout(GOODBYE_TIMEOUT):
                    await asyncio.shield(run)
            except TimeoutError:
                log.warning("MQTT goodbye took too long; closing anyway")
            await _cancel(run)

    async def _deliver(self) -> None:
        """Wait for the broker to take everything, bounded, or until a stop request."""
        link = self.link

        async def delivered() -> None:
            await link.wait_connected()
            await link.flush()

        flush = asyncio.ensure_future(delivered())
        stop = asyncio.ensure_future(self._stop_requested.wait())
        done, _ = await asyncio.wait(
            {flush, stop}, timeout=self.delivery_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        for future in (flush, stop):
            await _cancel(future)
        if flush not in done:  # the link reports what it could not deliver when it stops
            log.info(
                "gave up waiting for the MQTT broker to take every detection",
                waited_s=self.delivery_timeout,
            )

    async def _export(self, metrics: Metrics) -> None:
        while True:
            status = self.link.status
            metrics.set_mqtt_connected(status.connected)
            metrics.set_outbox(status.queued)
            metrics.set_mqtt_totals(
                outbox_full=status.dropped,
                outbox_expired=status.expired,
                commands_dropped=status.commands_dropped,
                incoming_dropped=status.incoming_dropped,
                connections=status.connects,
            )
            await asyncio.sleep(METRICS_POLL_SECONDS)


async def _cancel(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await future
