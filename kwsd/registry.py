"""The keyword registry: which keywords are active, where they came from, and their version.

Two sources feed it. The configuration (inline `[keywords]` entries plus the keywords
file) is reloaded on SIGHUP and on file edits; MQTT commands (`cmd/keywords/set|add|
remove`, `cmd/pause|resume`) change the list at runtime. Every update is compiled
against the model's vocabulary *before* it replaces anything, so a bad update is refused
with the compiler's message and the previous list keeps running.

Precedence (documented for users in the README):

- A list set over MQTT is written atomically to `<data_dir>/keywords-state.json`
  together with a digest of the configured keywords (and search.boost/threshold) it
  replaced. After a restart that list is used again, as long as the configured keywords
  are unchanged.
- Editing the configured keywords (config.toml or the keywords file) is a newer,
  deliberate decision: the configured list becomes active and the saved MQTT list is
  deleted, so it cannot come back when the edit is later reverted.
- Pause is runtime state only: a restarted daemon listens again (a crash must never
  leave the microphone silently deaf).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import structlog
from pydantic import ValidationError

from kwsd.backends.base import ModelDefaults
from kwsd.errors import KeywordError, KwsdError
from kwsd.integrations.mute import MuteState
from kwsd.keywords import (
    KeywordSet,
    KeywordSpec,
    Tokenizer,
    compile_keywords,
    load_keyword_file,
    pieces_to_phrase,
)
from kwsd.mqtt.commands import Command, CommandResult
from kwsd.mqtt.payloads import KeywordsPayload, spec_to_dict

if TYPE_CHECKING:
    from kwsd.config import KeywordsSettings, SearchSettings

log = structlog.get_logger("kwsd.registry")

STATE_FILE_NAME: Final = "keywords-state.json"
_STATE_FORMAT: Final = 1
Origin = Literal["config", "mqtt"]


@dataclass(frozen=True, slots=True)
class ConfigKeywords:
    """The configured keyword list and the compile options that go with it."""

    specs: tuple[KeywordSpec, ...]
    boost: float | None = None
    threshold: float | None = None
    file: Path | None = None

    @property
    def digest(self) -> str:
        """Changes exactly when what the configuration asks for changes."""
        data = {
            "keywords": [spec_to_dict(s) for s in self.specs],
            "boost": self.boost,
            "threshold": self.threshold,
        }
        text = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_keywords(keywords: KeywordsSettings, search: SearchSettings) -> ConfigKeywords:
    """The configured keywords: the `[keywords]` entries, then the file's; search defaults.

    Blocking (reads the keywords file). Raises KeywordError naming the file on a bad one.
    """
    specs: list[KeywordSpec] = list(keywords.items)
    if keywords.file is not None:
        if not keywords.file.is_file():
            raise KeywordError(
                f"keywords file {keywords.file} (keywords.file) does not exist; create it or "
                "remove the setting"
            )
        specs.extend(load_keyword_file(keywords.file))
    return ConfigKeywords(
        specs=tuple(specs),
        boost=search.boost,
        threshold=search.threshold,
        file=keywords.file,
    )


class KeywordCompiler:
    """Compiles keyword entries for one loaded model (its vocabulary and defaults)."""

    def __init__(self, tokenizer: Tokenizer, defaults: ModelDefaults) -> None:
        self.tokenizer = tokenizer
        self.defaults = defaults

    def compile(
        self,
        specs: Sequence[KeywordSpec],
        *,
        boost: float | None,
        threshold: float | None,
        version: int,
    ) -> KeywordSet:
        return compile_keywords(
            specs,
            self.tokenizer,
            self.defaults,
            boost=boost,
            threshold=threshold,
            version=version,
        )


@dataclass(frozen=True, slots=True)
class SavedState:
    """What `keywords-state.json` holds."""

    version: int
    config_digest: str
    keywords: tuple[KeywordSpec, ...]


def read_state(path: Path) -> SavedState | None:
    """The saved MQTT keyword list, or None if there is none (or it is unreadable)."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.error("cannot read saved keyword list; ignoring it", path=str(path), error=str(exc))
        return None
    try:
        data = json.loads(text)
        if data.get("format") != _STATE_FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        return SavedState(
            version=int(data["version"]),
            config_digest=str(data["config_digest"]),
            keywords=tuple(KeywordSpec.model_validate(k) for k in data["keywords"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError, ValidationError) as exc:
        log.error(
            "saved keyword list is corrupt; ignoring it (delete it to silence this)",
            path=str(path),
            error=str(exc).splitlines()[0],
        )
        return None


def write_state(path: Path, state: SavedState) -> None:
    """Atomically replace `path`: a crash mid-write leaves the old file, never half a file."""
    data = {
        "format": _STATE_FORMAT,
        "version": state.version,
        "config_digest": state.config_digest,
        "keywords": [spec_to_dict(s) for s in state.keywords],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True, slots=True)
class RegistryState:
    """A snapshot handed to listeners after every change."""

    keyword_set: KeywordSet
    specs: tuple[KeywordSpec, ...]
    version: int
    paused: bool
    origin: Origin

    def payload(self) -> KeywordsPayload:
        return KeywordsPayload(
            version=self.version,
            keywords=self.specs,
            paused=self.paused,
            warnings=self.keyword_set.warnings,
        )


Listener = Callable[[RegistryState], None]


def _name_key(text: str) -> str:
    return " ".join(text.upper().split())


def _identity(spec: KeywordSpec) -> str:
    """Two entries for the same keyword (for `add` replacing and `remove` matching)."""
    if spec.display:
        return "display:" + _name_key(spec.display)
    if spec.phrase:
        return "phrase:" + _name_key(spec.phrase)
    return "pieces:" + " ".join(spec.pieces or ())


def _matches(spec: KeywordSpec, name: str) -> bool:
    key = _name_key(name)
    pieces = spec.pieces or ()
    names = [spec.display, spec.phrase, " ".join(pieces) or None, pieces_to_phrase(pieces) or None]
    return any(n is not None and _name_key(n) == key for n in names)


def _label(spec: KeywordSpec) -> str:
    return spec.display or spec.phrase or " ".join(spec.pieces or ())


class KeywordRegistry:
    """The active keyword list; implements the MQTT `CommandHandler` protocol.

    Methods are called on the event loop; compiling and file I/O run in worker threads.
    Updates are serialised, and each one either fully applies (new KeywordSet, version+1,
    listeners told) or changes nothing.
    """

    def __init__(
        self, compiler: KeywordCompiler, state_path: Path, mute: MuteState | None = None
    ) -> None:
        self.compiler = compiler
        self.state_path = state_path
        # Pause/resume commands land here; other mute causes (Hermes, a media player
        # topic) share it, and the retained keyword state shows the pause switch.
        self.mute = mute if mute is not None else MuteState()
        self.mute.add_listener(lambda _mute: self._notify())
        self._config = ConfigKeywords(())
        self._set = KeywordSet()
        self._specs: tuple[KeywordSpec, ...] = ()
        self._version = 0
        self._origin: Origin = "config"
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ reading

    @property
    def keyword_set(self) -> KeywordSet:
        return self._set

    @property
    def version(self) -> int:
        return self._version

    @property
    def paused(self) -> bool:
        """Paused by a command (what `keywords.paused` reports); see `mute` for all causes."""
        return self.mute.paused

    @property
    def origin(self) -> Origin:
        return self._origin

    @property
    def state(self) -> RegistryState:
        return RegistryState(self._set, self._specs, self._version, self.paused, self._origin)

    def add_listener(self, listener: Listener) -> None:
        """Called (on the loop) after every accepted change, and once right away."""
        self._listeners.append(listener)
        listener(self.state)

    # ------------------------------------------------------------------ start-up

    def load(self, config: ConfigKeywords) -> RegistryState:
        """The initial list (blocking: call in a thread before the loop serves commands).

        Raises KeywordError when the configured keywords are invalid and no saved list
        applies: with no previous good state, refusing to start is the honest answer.
        """
        self._config = config
        saved = read_state(self.state_path)
        if saved is not None and saved.config_digest == config.digest:
            try:
                ks = self._compile(saved.keywords, saved.version)
            except KwsdError as exc:
                log.error(
                    "saved MQTT keyword list no longer compiles; using the configured list",
                    path=str(self.state_path),
                    error=str(exc),
                )
            else:
                self._install(ks, saved.keywords, saved.version, "mqtt")
                log.info(
                    "keywords restored from the list set over MQTT",
                    path=str(self.state_path),
                    keywords=ks.displays(),
                    version=saved.version,
                )
                return self.state
        version = (saved.version + 1) if saved is not None else 1
        ks = self._compile(config.specs, version)
        if saved is not None:
            log.info(
                "configured keywords changed since a list was set over MQTT; the "
                "configuration wins and the saved MQTT list is dropped",
                path=str(self.state_path),
            )
            self._drop_state()
        self._install(ks, config.specs, version, "config")
        log.info("keywords loaded", source="config", keywords=ks.displays(), version=version)
        return self.state

    # ------------------------------------------------------------------ reload

    async def reload(self, config: ConfigKeywords) -> bool:
        """Apply a re-read configuration; False (old list kept, error logged) if invalid."""
        async with self._lock:
            if config.digest == self._config.digest:
                log.info("configured keywords unchanged", source=self._origin)
                self._config = config
                return True
            version = self._version + 1
            try:
                ks = await asyncio.to_thread(self._compile, config.specs, version, config)
            except KwsdError as exc:
                log.error(
                    "new keyword configuration rejected; the previous keywords stay active",
                    error=str(exc),
                    active=self._set.displays(),
                )
                return False
            self._config = config
            if self._origin == "mqtt":
                log.info("configured keywords changed: they replace the list set over MQTT")
            await asyncio.to_thread(self._drop_state)
            self._install(ks, config.specs, version, "config")
            log.info("keywords reloaded", source="config", keywords=ks.displays(), version=version)
            self._notify()
            return True

    # ------------------------------------------------------------------ commands

    async def handle(self, command: Command) -> CommandResult:
        if command.name == "pause":
            self.mute.pause(command.reason)
            return CommandResult(ok=True, keywords_version=self._version)
        if command.name == "resume":
            self.mute.resume(command.reason)
            return CommandResult(ok=True, keywords_version=self._version)
        async with self._lock:
            try:
                specs = self._apply(command)
            except KeywordError as exc:
                return CommandResult(ok=False, error=str(exc), keywords_version=self._version)
            version = self._version + 1
            try:
                ks = await asyncio.to_thread(self._compile, specs, version)
            except KwsdError as exc:
                return CommandResult(
                    ok=False,
                    error=f"{exc}. Nothing was changed.",
                    keywords_version=self._version,
                )
            warnings = list(ks.warnings)
            if not ks.keywords:
                warnings.append("the keyword list is now empty: nothing will be detected")
            try:
                await asyncio.to_thread(
                    write_state, self.state_path, SavedState(version, self._config.digest, specs)
                )
            except OSError as exc:
                log.error("cannot save the keyword list", path=str(self.state_path), error=str(exc))
                warnings.append(
                    f"applied but not saved ({self.state_path}: {exc.strerror or exc}); "
                    "it will be lost on restart"
                )
            self._install(ks, specs, version, "mqtt")
            log.info(
                "keywords changed over MQTT",
                command=command.name,
                keywords=ks.displays(),
                version=version,
            )
            self._notify()
            return CommandResult(ok=True, keywords_version=version, warnings=tuple(warnings))

    # ------------------------------------------------------------------ internals

    def _apply(self, command: Command) -> tuple[KeywordSpec, ...]:
        """The list a set/add/remove command asks for (not yet validated)."""
        if command.name == "set":
            return tuple(e for e in command.entries if isinstance(e, KeywordSpec))
        current = list(self._specs)
        if command.name == "add":
            for entry in command.entries:
                if not isinstance(entry, KeywordSpec):
                    continue
                same = [i for i, s in enumerate(current) if _identity(s) == _identity(entry)]
                if same:
                    current[same[0]] = entry
                else:
                    current.append(entry)
            return tuple(current)
        for entry in command.entries:
            name = entry if isinstance(entry, str) else _label(entry)
            keep = [s for s in current if not _matches(s, name)]
            if len(keep) == len(current):
                active = ", ".join(_label(s).upper() for s in current) or "none"
                raise KeywordError(
                    f"no active keyword named {name!r} (active: {active}); nothing was removed"
                )
            current = keep
        return tuple(current)

    def _compile(
        self, specs: Sequence[KeywordSpec], version: int, config: ConfigKeywords | None = None
    ) -> KeywordSet:
        options = config if config is not None else self._config
        return self.compiler.compile(
            specs, boost=options.boost, threshold=options.threshold, version=version
        )

    def _install(
        self, ks: KeywordSet, specs: Sequence[KeywordSpec], version: int, origin: Origin
    ) -> None:
        self._set = dataclasses.replace(ks, version=version)
        self._specs = tuple(specs)
        self._version = version
        self._origin = origin
        for warning in ks.warnings:
            log.warning("keyword warning", warning=warning)

    def _drop_state(self) -> None:
        try:
            self.state_path.unlink(missing_ok=True)
        except OSError as exc:
            log.error(
                "cannot delete the saved MQTT keyword list",
                path=str(self.state_path),
                error=str(exc),
            )

    def _notify(self) -> None:
        state = self.state
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                log.exception("keyword listener failed")
