"""The topic tree under the base topic, and the rules a topic must follow.

Everything kwsd publishes or listens to hangs off one base topic (`kwsd/<site_id>`), so
a user can see, retain-clear or ACL the whole daemon with one `kwsd/<site_id>/#`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from kwsd.errors import ConfigError

CommandName = Literal["set", "add", "remove", "pause", "resume"]
KEYWORD_COMMANDS: Final = ("set", "add", "remove")
STATE_COMMANDS: Final = ("pause", "resume")
_MAX_TOPIC_BYTES: Final = 65535  # MQTT's UTF-8 string length limit


def topic_problem(topic: str, *, allow_wildcards: bool = False) -> str | None:
    """Why `topic` cannot be used, or None when it is fine.

    Checked before anything is queued: paho raises on an invalid topic at publish time,
    and a message that can never be sent must not sit at the head of the outbox.
    """
    if not topic:
        return "a topic cannot be empty"
    if "\0" in topic:
        return "a topic cannot contain a NUL character"
    if len(topic.encode("utf-8", "surrogatepass")) > _MAX_TOPIC_BYTES:
        return "a topic cannot be longer than 65535 bytes"
    if allow_wildcards:
        levels = topic.split("/")
        for index, level in enumerate(levels):
            if "#" in level and (level != "#" or index != len(levels) - 1):
                return "`#` must be a whole level and the last one"
            if "+" in level and level != "+":
                return "`+` must be a whole level"
    elif "+" in topic or "#" in topic:
        return "a topic to publish to cannot contain the wildcards `+` or `#`"
    return None


def base_topic_problem(base: str) -> str | None:
    """Why `base` cannot be the base topic, or None; `mqtt.base_topic` is validated with it."""
    problem = topic_problem(base)
    if problem is None and (base.startswith("/") or base.endswith("/") or "//" in base):
        problem = "a base topic must not start or end with `/` nor contain `//` (an empty level)"
    if problem is None and base.startswith("$"):
        problem = "a base topic must not start with `$`: such topics are reserved for the broker"
    return problem


def validate_base_topic(base: str) -> str:
    """The base topic, checked, or a ConfigError that says how to fix it."""
    problem = base_topic_problem(base)
    if problem is not None:
        raise ConfigError(
            f'mqtt.base_topic {base!r} is not usable: {problem} (example: "kwsd/kitchen")'
        )
    return base


@dataclass(frozen=True, slots=True)
class Topics:
    """Every topic the link uses, derived once from the base topic."""

    base: str

    @classmethod
    def for_base(cls, base: str) -> Topics:
        return cls(validate_base_topic(base))

    @property
    def detection(self) -> str:
        return f"{self.base}/detection"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def keywords(self) -> str:
        return f"{self.base}/keywords"

    @property
    def command_result(self) -> str:
        return f"{self.base}/cmd/result"

    @property
    def command_filters(self) -> tuple[str, ...]:
        """Filters for the command topics.

        `cmd/keywords/+` rather than exact topics so a typo such as `cmd/keywords/del`
        gets an error reply instead of silence; `cmd/#` is avoided because it would
        also deliver our own `cmd/result` back to us.
        """
        return (
            f"{self.base}/cmd/keywords/+",
            *(f"{self.base}/cmd/{name}" for name in STATE_COMMANDS),
        )

    def command_verb(self, topic: str) -> str | None:
        """The command part of a topic under `<base>/cmd/` (e.g. `keywords/set`), else None."""
        prefix = f"{self.base}/cmd/"
        if not topic.startswith(prefix):
            return None
        return topic[len(prefix) :]

    def is_command_topic(self, topic: str) -> bool:
        verb = self.command_verb(topic)
        return verb is not None and verb != "result"
