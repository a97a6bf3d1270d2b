"""What the daemon needs from wherever detections go (MQTT or stdout)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from kwsd.detection import Detection
from kwsd.mqtt.payloads import DetectionPayload


class DetectionPublisher(Protocol):
    """Non-blocking sink for detections; `run()` is the task that delivers them."""

    def publish_detection(
        self, det: Detection, *, when: datetime | None = None
    ) -> DetectionPayload: ...

    async def run(self) -> None: ...
