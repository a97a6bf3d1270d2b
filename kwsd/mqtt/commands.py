"""MQTT commands: parsed from `<base>/cmd/...`, applied by a handler, answered with a reply.

Three layers, top to bottom:

- `CommandChannel` sits on an MqttLink: it subscribes to the command topics, ignores
  empty messages, refuses retained commands, parses, hands the Command to its handler
  and publishes the CommandReply on `<base>/cmd/result` (and the MQTT 5 response
  topic).
- `parse_command` only checks the *shape* of a payload (size, encoding, JSON types).
- `RegistryCommands`, the daemon's handler, turns a Command into a call on the keyword
  registry (kwsd/registry.py) and its typed result into a CommandResult. Whether a
  keyword is valid for the loaded model (unknown BPE piece, too short, ...) is the
  registry's call: it owns the vocabulary and the active list, and refuses instead of
  raising, so one bad command never disturbs the running set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog

from kwsd.errors import KwsdError
from kwsd.keywords.spec import KEYWORD_FIELDS, KeywordSpec, KeywordSpecError
from kwsd.mqtt.messages import InboundMessage
from kwsd.mqtt.payloads import CommandReply
from kwsd.mqtt.topics import CommandName, topic_problem
from kwsd.registry import ChangeResult, KeywordChange, KeywordRegistry, PauseChange

if TYPE_CHECKING:
    # The link's options import this module's size limit; the channel only needs the type.
    from kwsd.mqtt.link import MqttLink

log = structlog.get_logger("kwsd.mqtt")

DEFAULT_MAX_COMMAND_BYTES: Final = 64 * 1024
_VERBS: Final[dict[str, CommandName]] = {
    "keywords/set": "set",
    "keywords/add": "add",
    "keywords/remove": "remove",
    "pause": "pause",
    "resume": "resume",
}
_SPEC_FIELDS: Final = ", ".join(KEYWORD_FIELDS)
_EXAMPLE: Final = '["LIGHT UP", {"phrase": "GOOD NIGHT", "threshold": 0.3}]'


class CommandError(KwsdError):
    """A command payload that cannot be understood; the message goes back to the sender."""

    def __init__(self, message: str, *, command_id: str | None = None) -> None:
        super().__init__(message)
        self.command_id = command_id


@dataclass(frozen=True, slots=True)
class Command:
    """A well-formed command.

    For `set` and `add` every entry is a KeywordSpec (a bare string became its phrase).
    For `remove` an entry is either a KeywordSpec or a string naming a keyword by its
    phrase or display name. `pause`/`resume` carry no entries, maybe a `reason`.
    """

    name: CommandName
    entries: tuple[KeywordSpec | str, ...] = ()
    id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The handler's answer; `keywords_version` is the version in force afterwards."""

    ok: bool
    error: str | None = None
    keywords_version: int | str | None = None
    warnings: tuple[str, ...] = ()


class CommandHandler(Protocol):
    """What a CommandChannel hands commands to (the daemon's is RegistryCommands).

    Should not raise for a bad keyword: return CommandResult(ok=False, error=...) and
    keep the previous list (a raised KwsdError becomes such a reply; anything else is
    an internal error). Blocking work (compiling keywords) belongs in a thread.
    """

    async def handle(self, command: Command) -> CommandResult: ...


class RegistryCommands:
    """MQTT commands as calls on the keyword registry; its results as replies."""

    def __init__(self, registry: KeywordRegistry) -> None:
        self.registry = registry

    async def handle(self, command: Command) -> CommandResult:
        registry = self.registry
        specs = tuple(e for e in command.entries if isinstance(e, KeywordSpec))
        match command.name:
            case "pause":
                return _pause_result(registry.pause(command.reason))
            case "resume":
                return _pause_result(registry.resume(command.reason))
            case "set":
                return _change_result(await registry.set(specs))
            case "add":
                return _change_result(await registry.add(specs))
            case "remove":
                return _change_result(await registry.remove(command.entries))


def _pause_result(change: PauseChange) -> CommandResult:
    return CommandResult(ok=True, keywords_version=change.version)


def _change_result(result: ChangeResult) -> CommandResult:
    if isinstance(result, KeywordChange):
        return CommandResult(ok=True, keywords_version=result.version, warnings=result.warnings)
    return CommandResult(ok=False, error=result.error, keywords_version=result.version)


class CommandChannel:
    """Serves `<base>/cmd/...` on `link`, handing each command to `handler`.

    Commands are handled one at a time in arrival order (the link's dispatcher), and
    every command gets exactly one reply, also when it cannot be parsed, the handler
    refuses it, or the handler crashes. Without a handler every command is refused.

    An empty message is not a command: it is how MQTT clears a retained message
    (`mosquitto_pub -r -n -t ...`), and whoever sends one wants nothing to happen. A
    command that carries the retain flag is refused, because the broker would apply
    it again at every reconnect; the refusal says how to clear it.
    """

    def __init__(self, link: MqttLink, handler: CommandHandler | None = None) -> None:
        self.link = link
        self.handler = handler
        for topic_filter in link.topics.command_filters:
            link.subscribe(topic_filter, self._on_command)

    async def _on_command(self, message: InboundMessage) -> None:
        topics = self.link.topics
        verb = topics.command_verb(message.topic) or message.topic
        if not message.payload.strip():
            log.info(
                "ignoring an empty MQTT message on a command topic: an empty payload is "
                "not a command (it clears a retained message)",
                topic=message.topic,
            )
            return
        command_id: str | None = None
        try:
            if message.retain:
                raise CommandError(
                    "retained commands are refused: the broker would apply this one again "
                    "at every reconnect. Publish commands without the retain flag, and clear "
                    f"this one with `mosquitto_pub -r -n -t '{message.topic}'`"
                )
            command = parse_command(
                verb, message.payload, max_bytes=self.link.options.max_command_bytes
            )
            command_id = command.id
            result = await self._handle(command)
        except CommandError as exc:
            command_id = exc.command_id
            result = CommandResult(ok=False, error=str(exc))
        reply = CommandReply(
            command=verb,
            ok=result.ok,
            error=result.error,
            keywords_version=(
                result.keywords_version
                if result.keywords_version is not None
                else self.link.keywords_version
            ),
            id=command_id,
            warnings=result.warnings,
        )
        if reply.ok:
            log.info(
                "MQTT command done", command=verb, id=command_id, version=reply.keywords_version
            )
        else:
            log.warning("MQTT command refused", command=verb, id=command_id, error=reply.error)
        self._reply(reply, message)

    async def _handle(self, command: Command) -> CommandResult:
        if self.handler is None:
            return CommandResult(ok=False, error="this kwsd instance does not accept commands")
        try:
            return await self.handler.handle(command)
        except KwsdError as exc:
            return CommandResult(ok=False, error=str(exc))
        except Exception as exc:
            log.exception("MQTT command handler crashed", command=command.name)
            return CommandResult(
                ok=False,
                error=f"internal error ({type(exc).__name__}: {exc}); nothing was changed",
            )

    def _reply(self, reply: CommandReply, request: InboundMessage) -> None:
        data = reply.to_json()
        link = self.link
        link.publish(link.topics.command_result, data)
        target = request.response_topic
        if target is None:
            return
        if topic_problem(target) is not None or link.topics.is_command_topic(target):
            log.warning("MQTT command: unusable response topic ignored", response_topic=target)
            return
        link.publish(target, data, correlation_data=request.correlation_data)


def command_name(verb: str) -> CommandName:
    """`keywords/set` → `set`; a CommandError naming the valid verbs otherwise."""
    try:
        return _VERBS[verb]
    except KeyError:
        valid = ", ".join(f"cmd/{v}" for v in _VERBS)
        raise CommandError(f"unknown command `cmd/{verb}`: use one of {valid}") from None


def parse_command(
    verb: str, payload: bytes, *, max_bytes: int = DEFAULT_MAX_COMMAND_BYTES
) -> Command:
    """Parse the payload of `<base>/cmd/<verb>`, or raise CommandError saying what is wrong."""
    name = command_name(verb)
    if len(payload) > max_bytes:
        raise CommandError(
            f"payload of {len(payload)} bytes is over the {max_bytes}-byte limit for commands"
        )
    text = _decode(payload)
    if name in ("pause", "resume"):
        return _parse_state_command(name, text)
    return _parse_keyword_command(name, text)


def _decode(payload: bytes) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CommandError(
            f"payload is not UTF-8 text (byte 0x{payload[exc.start]:02x} at offset "
            f"{exc.start}): send JSON such as {_EXAMPLE}"
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _load_json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise CommandError("payload JSON is nested too deeply") from None
    except ValueError as exc:
        raise CommandError(
            f"payload is not valid JSON ({exc}): send JSON such as {_EXAMPLE}"
        ) from None


def _command_id(envelope: dict[str, Any]) -> str | None:
    ident = envelope.get("id")
    if ident is None:
        return None
    if isinstance(ident, bool) or not isinstance(ident, str | int):
        raise CommandError("`id` must be a string or an integer")
    text = str(ident)
    if len(text) > 200:
        raise CommandError("`id` is longer than 200 characters")
    return text


def _parse_state_command(name: CommandName, text: str) -> Command:
    example = '`{}` or a JSON object like {"reason": "tv on", "id": "42"}'
    if not text.strip():
        raise CommandError(
            f"an empty payload is not a command (it clears a retained message): send {example}"
        )
    value = _load_json(text)
    if not isinstance(value, dict):
        raise CommandError(f"`{name}` takes {example}")
    ident = _command_id(value)
    unknown = sorted(set(value) - {"id", "reason"})
    if unknown:
        raise CommandError(f"unknown field(s) {unknown} for `{name}`", command_id=ident)
    reason = value.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise CommandError("`reason` must be a string", command_id=ident)
    return Command(name=name, id=ident, reason=reason)


def _parse_keyword_command(name: CommandName, text: str) -> Command:
    if not text.strip():
        raise CommandError(f"empty payload: `{name}` needs a JSON list such as {_EXAMPLE}")
    value = _load_json(text)
    ident: str | None = None
    if isinstance(value, dict) and "keywords" in value:
        ident = _command_id(value)
        unknown = sorted(set(value) - {"id", "keywords"})
        if unknown:
            raise CommandError(f"unknown field(s) {unknown} beside `keywords`", command_id=ident)
        value = value["keywords"]
    if isinstance(value, str | dict):
        value = [value]  # one keyword on its own is clearly meant as a list of one
    if not isinstance(value, list):
        raise CommandError(
            f"`{name}` needs a JSON list of keywords such as {_EXAMPLE}, got {_json_type(value)}",
            command_id=ident,
        )
    if not value and name != "set":
        raise CommandError(f"`{name}` needs at least one keyword", command_id=ident)
    entries = tuple(_entry(name, index, item, ident) for index, item in enumerate(value, 1))
    return Command(name=name, entries=entries, id=ident)


def _entry(name: CommandName, index: int, item: Any, ident: str | None) -> KeywordSpec | str:
    try:
        if isinstance(item, str):
            if name == "remove":
                if not item.strip():
                    raise CommandError("an empty name")
                return item.strip()
            return KeywordSpec(phrase=item)
        if isinstance(item, dict):
            return KeywordSpec.from_mapping(item)
    except (KeywordSpecError, CommandError) as exc:
        raise CommandError(f"keyword {index}: {exc}", command_id=ident) from None
    raise CommandError(
        f"keyword {index}: expected a phrase string or a keyword object "
        f"({_SPEC_FIELDS}), got {_json_type(item)}",
        command_id=ident,
    )


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "a list"
        case _:
            return "an object"
