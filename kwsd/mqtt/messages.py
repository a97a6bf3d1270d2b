"""Messages as the link queues and receives them, free of any MQTT library type."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A message waiting to be published.

    `correlation_data` is sent as the MQTT 5 property of that name (ignored on 3.1.1);
    replies to a request that named a response topic carry it back.
    """

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message received on a subscribed topic.

    `response_topic`/`correlation_data` are the MQTT 5 request/response properties
    (always None on MQTT 3.1.1).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None
