"""The Wyoming protocol (Home Assistant voice), wake-word side.

One module per protocol concept: `event` (framing), `audio` (audio-start/-chunk/-stop
and conversion to the model's 16 kHz mono), `info` (describe/info and the wake word
ids), `wake` (detect/detection/not-detected and name matching), `server` (sessions),
`listener` (sockets and the accept loop), `limits` (connection cap, timeouts, log
throttling) and `zeroconf` (the `_wyoming._tcp` announcement).
"""

from kwsd.wyoming.event import Event, EventReader, ProtocolError, write_event
from kwsd.wyoming.server import WyomingServer

__all__ = ["Event", "EventReader", "ProtocolError", "WyomingServer", "write_event"]
