"""Without a broker, detections are JSON lines on stdout; a stalled reader blocks nothing."""

from __future__ import annotations

import asyncio
import io
import json
import os
import threading

from kwsd.detection import Detection
from kwsd.mqtt import DetectionPayload, StdoutPublisher

DET = Detection("LIGHT_UP", "LIGHT UP", ("▁", "L", "IGHT", "▁UP"), 3.04, 3.2, 0.83, 80)


async def test_stdout_publisher_writes_the_mqtt_fields_as_json_lines() -> None:
    stream = io.StringIO()
    publisher = StdoutPublisher(site="kitchen", model="m", stream=stream)
    task = asyncio.create_task(publisher.run())
    sent = [publisher.publish_detection(DET) for _ in range(3)]
    await publisher.flush()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line) for line in lines] == [p.to_dict() for p in sent]
    assert set(json.loads(lines[0])) == set(DetectionPayload.__dataclass_fields__)


async def test_stdout_publisher_never_blocks_the_loop_on_a_stalled_reader() -> None:
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(write_fd, "w", encoding="utf-8")
    publisher = StdoutPublisher(site="kitchen", model="m", stream=stream, max_queued=10)
    task = asyncio.create_task(publisher.run())
    last = None
    for n in range(2000):  # ~500 kB: far more than the pipe buffer holds
        last = publisher.publish_detection(DET)
        if n % 20 == 0:
            await asyncio.sleep(0)  # the loop keeps running while the writer is stuck
    assert publisher.dropped > 0
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(_read_all(read_fd)))
    reader.start()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)  # writes what is left, then stops
    stream.close()
    await asyncio.to_thread(reader.join)
    lines = received[0].decode().splitlines()
    assert len(lines) == publisher.written == 2000 - publisher.dropped
    assert last is not None and json.loads(lines[-1])["id"] == last.id  # newest kept


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)
