"""MQTT output and command channel of the daemon (and the stdout fallback).

Topics under the base topic `kwsd/<site_id>`:

- `detection`      JSON DetectionPayload per match; QoS `mqtt.qos` (1), not retained.
- `status`         `online` / `offline`, retained; `offline` is also the last will.
- `keywords`       JSON KeywordsPayload (version, paused, keywords), retained.
- `cmd/keywords/set|add|remove`, `cmd/pause`, `cmd/resume`: commands (Command).
- `cmd/result`     JSON CommandReply for every command, also sent to the MQTT 5
                   response topic with the request's correlation data.

Wiring: `link = MqttLink(MqttOptions.from_settings(settings.mqtt), site=..., model=...)`;
`CommandChannel(link, RegistryCommands(registry))` serves the commands; the daemon
output `MqttOutput(link)` runs the link and publishes detections and the keyword
state. Integrations use `link.subscribe(filter, callback)` and `link.publish(topic,
payload, retain=...)`. Without a broker, `StdoutPublisher` prints the same detection
JSON, one per line.

The names below load on first use: `kwsd.mqtt.topics` is part of the configuration
schema, which every command reads, and must not bring the MQTT client library along.
"""

from __future__ import annotations

from kwsd.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from kwsd.mqtt.commands import (
        Command,
        CommandChannel,
        CommandError,
        CommandHandler,
        CommandResult,
        RegistryCommands,
        parse_command,
    )
    from kwsd.mqtt.link import LinkStatus, MessageCallback, MqttLink
    from kwsd.mqtt.messages import InboundMessage, OutMessage
    from kwsd.mqtt.options import MqttOptions, TlsOptions
    from kwsd.mqtt.outbox import Outbox
    from kwsd.mqtt.output import MqttOutput
    from kwsd.mqtt.payloads import CommandReply, DetectionPayload, KeywordsPayload
    from kwsd.mqtt.stdout import StdoutPublisher
    from kwsd.mqtt.topics import Topics

_LAZY = {
    "Command": "commands",
    "CommandChannel": "commands",
    "CommandError": "commands",
    "CommandHandler": "commands",
    "CommandResult": "commands",
    "RegistryCommands": "commands",
    "parse_command": "commands",
    "LinkStatus": "link",
    "MessageCallback": "link",
    "MqttLink": "link",
    "InboundMessage": "messages",
    "OutMessage": "messages",
    "MqttOptions": "options",
    "TlsOptions": "options",
    "Outbox": "outbox",
    "MqttOutput": "output",
    "CommandReply": "payloads",
    "DetectionPayload": "payloads",
    "KeywordsPayload": "payloads",
    "StdoutPublisher": "stdout",
    "Topics": "topics",
}

__all__ = [
    "Command",
    "CommandChannel",
    "CommandError",
    "CommandHandler",
    "CommandReply",
    "CommandResult",
    "DetectionPayload",
    "InboundMessage",
    "KeywordsPayload",
    "LinkStatus",
    "MessageCallback",
    "MqttLink",
    "MqttOptions",
    "MqttOutput",
    "OutMessage",
    "Outbox",
    "RegistryCommands",
    "StdoutPublisher",
    "TlsOptions",
    "Topics",
    "parse_command",
]


__getattr__, __dir__ = lazy_exports(__name__, {k: f"kwsd.mqtt.{v}" for k, v in _LAZY.items()})
