"""Detections as JSON lines on stdout: the default when no broker is configured.

Same fields as the MQTT detection payload, so a script can switch between
`kwsd run | jq` and an MQTT subscription without changing its parsing. Writes happen
in a worker thread: a stalled pipe reader must not freeze the event loop. As a daemon
Output (kwsd/outputs.py), `start` runs the writer and `close` writes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections import deque
from datetime import datetime
from typing import Final, TextIO

import structlog

from kwsd.detection import Detection
from kwsd.mqtt.payloads import DetectionPayload
from kwsd.registry import RegistryState

log = structlog.get_logger("kwsd.stdout")
_DEFAULT_MAX_QUEUED: Final = 1000


class StdoutPublisher:
    def __init__(
        self,
        *,
        site: str,
        model: str,
        stream: TextIO | None = None,
        max_queued: int = _DEFAULT_MAX_QUEUED,
    ) -> None:
        self.site = site
        self.model = model
        self._stream = stream
        self._lines: deque[str] = deque()
        self._max_queued = max_queued
        self._ready = asyncio.Event()
        self._writing: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0

    @property
    def stream(self) -> TextIO:
        # Looked up late so pytest's capsys / a redirected sys.stdout is honoured.
        return self._stream if self._stream is not None else sys.stdout

    def publish_detection(
        self, det: Detection, *, when: datetime | None = None
    ) -> DetectionPayload:
        payload = DetectionPayload.from_detection(det, site=self.site, model=self.model, when=when)
        if len(self._lines) >= self._max_queued:
            self._lines.popleft()
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning(
                    "stdout is not being read: dropped the oldest detection", dropped=self.dropped
                )
        self._lines.append(payload.to_json().decode("utf-8") + "\n")
        self._ready.set()
        return payload

    # ------------------------------------------------------------ Output

    async def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="kwsd-stdout")
        log.info("no MQTT broker configured (mqtt.host): detections go to stdout")

    def on_detection(self, det: Detection) -> None:
        self.publish_detection(det)

    def on_keywords(self, state: RegistryState) -> None:
        """The keyword list is not printed: stdout carries detections only."""

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()  # run() writes the lines still queued before it ends
            await asyncio.gather(task, return_exceptions=True)

    # ------------------------------------------------------------ writing

    async def run(self) -> None:
        """Write queued lines until cancelled; on cancellation write what is left."""
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                await self._write_pending()
        finally:
            if self._writing is not None:  # let the batch in progress finish first (order)
                with contextlib.suppress(Exception):
                    await self._writing
            if self._lines:
                await asyncio.to_thread(self._write, self._take())

    async def flush(self) -> None:
        await self._write_pending()

    async def _write_pending(self) -> None:
        while self._lines:
            self._writing = asyncio.ensure_future(asyncio.to_thread(self._write, self._take()))
            await asyncio.shield(self._writing)
            self._writing = None

    def _take(self) -> list[str]:
        lines = list(self._lines)
        self._lines.clear()
        return lines

    def _write(self, lines: list[str]) -> None:
        stream = self.stream
        try:
            stream.write("".join(lines))
            stream.flush()
        except (BrokenPipeError, ValueError) as exc:  # reader went away / stream closed
            log.warning("cannot write detections to stdout", error=str(exc))
            return
        self.written += len(lines)
