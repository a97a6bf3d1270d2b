"""The Wyoming protocol (Home Assistant voice), wake-word side.

One module per protocol concept: `event` (framing), `audio` (audio-start/-chunk/-stop
and conversion to the model's 16 kHz mono), `info` (describe/info), `wake`
(detect/detection/not-detected) and `server` (the TCP/Unix server).
"""

from kwsd.wyoming.event import Event, EventReader, ProtocolError, write_event
from kwsd.wyoming.server import WyomingServer

__all__ = ["Event", "EventReader", "ProtocolError", "WyomingServer", "write_event"]
