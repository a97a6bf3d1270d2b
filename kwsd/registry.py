"""The keyword registry: which keywords are active, where they came from, and their version.

Two sources feed it. The configuration (inline `[keywords]` entries plus the keywords
file) is reloaded on SIGHUP and on file edits; runtime changes (`set`, `add`, `remove`,
`pause`, `resume`) change the list while kwsd runs. Every update is compiled against
the model's vocabulary *before* it replaces anything, so a bad update is refused with
the compiler's message and the previous list keeps running.

The registry knows nothing about MQTT: its operations return typed results
(KeywordChange, Refusal, PauseChange), and kwsd/mqtt/commands.py turns MQTT commands
into these calls and the results into replies. MQTT commands are the daemon's only
runtime caller, so a list changed at runtime is called "the MQTT list" below.

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
from typing import TYPE_CHECKING, Any, Final, Literal

import structlog

from kwsd.backends.base import ModelDefaults
from kwsd.errors import KeywordError, KwsdError
from kwsd.keywords import (
    KeywordSet,
    KeywordSpec,
    Tokenizer,
    check_keyword_count,
    compile_keywords,
    load_keyword_file,
    pieces_to_phrase,
)
from kwsd.keywords.compile import LOGGED_NAMES, shorten
from kwsd.mute import MuteState

if TYPE_CHECKING:
    from kwsd.config import KeywordsSettings, SearchSettings

log = structlog.get_logger("kwsd.registry")

STATE_FILE_NAME: Final = "keywords-state.json"
NO_KEYWORDS_WARNING: Final = (
    "no keywords configured: nothing will be detected until some are set in [keywords] "
    "(config.toml), with --keywords, or over MQTT (cmd/keywords/set)"
)
_STATE_FORMAT: Final = 1
Origin = Literal["config", "mqtt"]


def canonical_spec(spec: KeywordSpec) -> dict[str, Any]:
    """A keyword entry as plain JSON data: every field that differs from its default.

    The form for the config digest and the state file is the spec's own
    (`KeywordSpec.to_dict`), not the MQTT payload code's, on purpose: if what MQTT
    publishes changed, a digest built from it would change too, and every saved keyword
    list would be dropped at the next start as if the configuration had been edited (a
    test pins the digest). `to_dict` is generic over the dataclass fields, so a new
    KeywordSpec field takes part in the digest without anyone remembering to add it.
    """
    return spec.to_dict()


@dataclass(frozen=True, slots=True)
class ConfigKeywords:
    """The configured keyword list and the compile options that go with it.

    `from_file` of the `specs` (the last ones) came from `file`; the others are inline.
    """

    specs: tuple[KeywordSpec, ...]
    boost: float | None = None
    threshold: float | None = None
    file: Path | None = None
    from_file: int = 0
    # Computed once, where the list is built (a worker thread): for a long list it
    # takes a noticeable time, and the registry compares digests on the event loop.
    digest: str = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", self._digest())

    def _digest(self) -> str:
        """Changes exactly when what the configuration asks for changes."""
        data = {
            "keywords": [canonical_spec(s) for s in self.specs],
            "boost": self.boost,
            "threshold": self.threshold,
        }
        text = json.dumps(data, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def emptied_since(self, previous: ConfigKeywords) -> list[str]:
        """The sources that had keywords in `previous` and have none now, named for a log.

        An edit that empties a source is either deliberate or a file caught half-written
        (truncated, not yet filled), so the watcher holds it back for a while.
        """
        inline = len(self.specs) - self.from_file
        emptied: list[str] = []
        if len(previous.specs) - previous.from_file > 0 and inline == 0:
            emptied.append("the [keywords] phrases and entries")
        if previous.from_file > 0 and self.from_file == 0:
            emptied.append(f"keywords file {previous.file}")
        return emptied


def config_keywords(keywords: KeywordsSettings, search: SearchSettings) -> ConfigKeywords:
    """The configured keywords: the `[keywords]` entries, then the file's; search defaults.

    Blocking (reads the keywords file). Raises KeywordError naming the file on a bad one.
    """
    specs: list[KeywordSpec] = list(keywords.items)
    from_file: list[KeywordSpec] = []
    if keywords.file is not None:
        if not keywords.file.is_file():
            raise KeywordError(
                f"keywords file {keywords.file} (keywords.file) does not exist; create it or "
                "remove the setting"
            )
        from_file = load_keyword_file(keywords.file)
    check_keyword_count(len(specs) + len(from_file), "the configured keyword list")
    return ConfigKeywords(
        specs=(*specs, *from_file),
        boost=search.boost,
        threshold=search.threshold,
        file=keywords.file,
        from_file=len(from_file),
    )


class KeywordCompiler:
    """Compiles keyword entries for one loaded model (its vocabulary and defaults).

    `prepare`, if given, is called with every compiled list, in the same worker
    thread: the daemon passes its spotter's `KeywordSpotter.prepare` (graph cache), so
    a new list's search graph is built there too. The engine thread then only swaps
    a finished list in, and a long list never stalls the audio.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        defaults: ModelDefaults,
        *,
        prepare: Callable[[KeywordSet], object] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.prepare = prepare

    def compile(
        self,
        specs: Sequence[KeywordSpec],
        *,
        boost: float | None,
        threshold: float | None,
        version: int,
    ) -> KeywordSet:
        keyword_set = compile_keywords(
            specs,
            self.tokenizer,
            self.defaults,
            boost=boost,
            threshold=threshold,
            version=version,
        )
        if self.prepare is not None:
            self.prepare(keyword_set)
        return keyword_set


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
            keywords=tuple(KeywordSpec.from_mapping(k) for k in data["keywords"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
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
        "keywords": [canonical_spec(s) for s in state.keywords],
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


@dataclass(frozen=True, slots=True)
class KeywordChange:
    """A runtime change that was applied: the new list is active as `version`.

    `added` and `removed` are display names that appeared or disappeared; an `add`
    that only re-tunes an active keyword (its threshold, say) lists it in neither.
    """

    version: int
    keywords: tuple[str, ...]  # the active display names, in order
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """A runtime change that was refused; `version` (the previous list) stays active."""

    error: str
    version: int


@dataclass(frozen=True, slots=True)
class PauseChange:
    """The pause state after `pause`/`resume` (which never change the list or its version).

    `muted` can stay true after a resume: other reasons (Hermes, a media topic) mute
    too, and a resume only ends pauses.
    """

    paused: bool
    muted: bool
    version: int


ChangeResult = KeywordChange | Refusal
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


def _missing_from(names: Sequence[str], other: Sequence[str]) -> tuple[str, ...]:
    """`names` that are not in `other`, in order (a set: lists can be long)."""
    known = set(other)
    return tuple(n for n in names if n not in known)


def _label(spec: KeywordSpec) -> str:
    return spec.display or spec.phrase or " ".join(spec.pieces or ())


def _added(
    current: tuple[KeywordSpec, ...], specs: Sequence[KeywordSpec]
) -> tuple[KeywordSpec, ...]:
    result = list(current)
    for entry in specs:
        same = [i for i, s in enumerate(result) if _identity(s) == _identity(entry)]
        if same:
            result[same[0]] = entry
        else:
            result.append(entry)
    return tuple(result)


def _removed(
    current: tuple[KeywordSpec, ...], names: Sequence[KeywordSpec | str]
) -> tuple[KeywordSpec, ...]:
    result = list(current)
    for entry in names:
        name = entry if isinstance(entry, str) else _label(entry)
        keep = [s for s in result if not _matches(s, name)]
        if len(keep) == len(result):
            active = ", ".join(_label(s).upper() for s in result) or "none"
            raise KeywordError(
                f"no active keyword named {name!r} (active: {active}); nothing was removed"
            )
        result = keep
    return tuple(result)


class KeywordRegistry:
    """The active keyword list, its version, where it came from, and the pause switch.

    Methods are called on the event loop; compiling and file I/O run in worker threads.
    Updates are serialised, and each one either fully applies (new KeywordSet, version+1,
    listeners told) or changes nothing and says why.
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
    def configured(self) -> ConfigKeywords:
        """The configured keywords last accepted (whether or not an MQTT list is active)."""
        return self._config

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
                    keywords=ks.displays_for_log(),
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
        log.info(
            "keywords loaded", source="config", keywords=ks.displays_for_log(), version=version
        )
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
                    active=self._set.displays_for_log(),
                )
                return False
            self._config = config
            if self._origin == "mqtt":
                log.info("configured keywords changed: they replace the list set over MQTT")
            await asyncio.to_thread(self._drop_state)
            self._install(ks, config.specs, version, "config")
            log.info(
                "keywords reloaded",
                source="config",
                keywords=ks.displays_for_log(),
                version=version,
            )
            self._notify()
            return True

    # ------------------------------------------------------------------ runtime

    async def set(self, specs: Sequence[KeywordSpec]) -> ChangeResult:
        """Replace the whole list (an empty list is allowed, with a warning)."""
        return await self._change("set", lambda _current: tuple(specs))

    async def add(self, specs: Sequence[KeywordSpec]) -> ChangeResult:
        """Add keywords; an entry for a keyword already active replaces that entry."""
        return await self._change("add", lambda current: _added(current, specs))

    async def remove(self, names: Sequence[KeywordSpec | str]) -> ChangeResult:
        """Remove keywords named by display name, phrase or pieces (or by an entry).

        Refused as a whole when one name matches nothing, so a typo never half-applies.
        """
        return await self._change("remove", lambda current: _removed(current, names))

    def pause(self, reason: str | None = None) -> PauseChange:
        """Stop publishing detections (audio keeps flowing) until `resume`."""
        self.mute.pause(reason)
        return self._pause_change()

    def resume(self, reason: str | None = None) -> PauseChange:
        """End the pause for `reason`; without one, end every pause."""
        self.mute.resume(reason)
        return self._pause_change()

    def _pause_change(self) -> PauseChange:
        return PauseChange(paused=self.paused, muted=self.mute.muted, version=self._version)

    async def _change(
        self, operation: str, edit: Callable[[tuple[KeywordSpec, ...]], tuple[KeywordSpec, ...]]
    ) -> ChangeResult:
        async with self._lock:
            try:
                specs = edit(self._specs)
            except KeywordError as exc:
                return Refusal(error=str(exc), version=self._version)
            version = self._version + 1
            try:
                ks = await asyncio.to_thread(self._compile, specs, version)
            except KwsdError as exc:
                return Refusal(error=f"{exc}. Nothing was changed.", version=self._version)
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
            before = self._set.displays()
            self._install(ks, specs, version, "mqtt")
            after = ks.displays()
            log.info(
                "keywords changed at runtime",
                operation=operation,
                keywords=shorten(after),
                version=version,
            )
            self._notify()
            return KeywordChange(
                version=version,
                keywords=tuple(after),
                added=_missing_from(after, before),
                removed=_missing_from(before, after),
                warnings=tuple(warnings),
            )

    # ------------------------------------------------------------------ internals

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
        for warning in ks.warnings[:LOGGED_NAMES]:
            log.warning("keyword warning", warning=warning)
        if len(ks.warnings) > LOGGED_NAMES:
            log.warning(
                "more keyword warnings not shown; `kwsd keywords check` lists them all",
                count=len(ks.warnings) - LOGGED_NAMES,
            )

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
