"""Tie the service manager's view of kwsd to the audio pipeline's real progress.

systemd's watchdog restarts a service whose pings stop. Pinging from a timer alone
would prove only that the event loop runs; a wedged audio device or a stuck encoder
thread would go unnoticed. So pings are sent only while the `Heartbeat` is fresh: when
the pipeline stops processing chunks, the pings stop and systemd restarts kwsd.
"""

from __future__ import annotations

import asyncio

import structlog

from kwsd.heartbeat import Heartbeat
from kwsd.service.notify import Notifier

log = structlog.get_logger(__name__)


class Watchdog:
    """Sends WATCHDOG=1 every half interval, but only while the heartbeat is fresh."""

    def __init__(
        self,
        notifier: Notifier,
        heartbeat: Heartbeat,
        interval: float | None = None,
        *,
        stall_after: float | None = None,
        running_status: str = "listening",
    ) -> None:
        self.notifier = notifier
        self.heartbeat = heartbeat
        self.interval = notifier.watchdog_interval if interval is None else interval
        # A beat within one watchdog interval counts as alive; pings stop after that and
        # systemd acts one interval after the last ping.
        self.stall_after = stall_after if stall_after is not None else self.interval
        self.running_status = running_status
        self.stalled = False

    def tick(self) -> bool:
        """One decision: ping if the pipeline is alive; returns whether a ping was sent."""
        if self.stall_after is None:
            return False
        if self.heartbeat.fresh(self.stall_after):
            if self.stalled:
                self.stalled = False
                log.info("audio pipeline recovered; watchdog pings resume")
                self.notifier.status(self.running_status)
            return self.notifier.watchdog()
        if not self.stalled:
            self.stalled = True
            age = self.heartbeat.age()
            since = "never" if age is None else f"{age:.1f} s ago"
            log.error(
                "audio pipeline stalled; withholding watchdog pings so the service "
                "manager restarts kwsd",
                last_chunk=since,
            )
            self.notifier.status(f"stalled: last audio chunk processed {since}")
        return False

    async def run(self) -> None:
        """Ping until cancelled; returns at once when systemd set no watchdog."""
        if self.interval is None or not self.notifier.enabled:
            return
        period = self.interval / 2
        while True:
            self.tick()
            await asyncio.sleep(period)


class ServiceLifecycle:
    """READY=1 once audio flows, watchdog pings while it keeps flowing, STOPPING=1 at the end.

    Run `ServiceLifecycle(notifier, heartbeat).run()` as a task next to the pipeline and
    cancel it on shutdown. The first heartbeat means the model is loaded and a chunk of
    real audio went through encoder and search, which is what "ready" means for kwsd.
    """

    def __init__(
        self,
        notifier: Notifier,
        heartbeat: Heartbeat,
        *,
        ready_status: str = "listening",
    ) -> None:
        self.notifier = notifier
        self.heartbeat = heartbeat
        self.ready_status = ready_status
        self.ready = False

    async def run(self) -> None:
        try:
            if self.notifier.enabled:
                self.notifier.status("loading model and opening audio")
            await self.heartbeat.wait_started()
            self.notifier.ready(self.ready_status)
            self.ready = True
            log.info("service ready", watchdog_s=self.notifier.watchdog_interval)
            watchdog = Watchdog(self.notifier, self.heartbeat, running_status=self.ready_status)
            await watchdog.run()
            await asyncio.Future()  # no watchdog configured: stay until cancelled
        except asyncio.CancelledError:
            self.notifier.stopping()
            raise
