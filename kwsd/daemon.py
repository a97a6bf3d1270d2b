"""`kwsd run`: assemble the service from the settings, run it, and shut it down cleanly.

Start-up does the blocking work (model resolution and loading, keyword compilation)
in worker threads. Then the daemon is a pipeline and a list of outputs:

    audio source → Pipeline (engine thread, detection gate) → Outputs
                                                               ├ health endpoint
                                                               ├ stdout JSON lines | MQTT
                                                               ├ Home Assistant discovery
                                                               └ Hermes hotword

Outputs (kwsd/outputs.py) are entered as one async context (started in order, closed
in reverse, a failing one contained); the Wyoming server, which serves its own
streams, is entered beside them. Capture, the pipeline, the service-manager
lifecycle and the config-file watcher run as tasks of one TaskGroup, so none can
outlive `run()`.

Shutdown (SIGTERM/SIGINT, or the end of a file or stdin input) stops capture first,
lets the pipeline drain what was already captured, then closes the outputs, which
deliver the detections and publish `offline`, and returns 0, all within about two
seconds. SIGHUP, or an edit of the config or keywords file, re-reads the
configuration and applies the keyword part; a bad edit is logged and the running
keywords stay. An edited file is read once it is finished (kwsd/config/watch.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import os
import signal
from collections.abc import Callable, Coroutine, Iterable, Iterator
from pathlib import Path
from typing import Any, Final, TextIO

import structlog

from kwsd import __version__
from kwsd.audio import BoundedAudioQueue, open_source
from kwsd.audio.base import AudioSource
from kwsd.backends.base import Backend
from kwsd.config import Settings
from kwsd.config.watch import (
    EMPTIED_SETTLE_SECONDS,
    FileKind,
    SettledFiles,
    Snapshot,
    WatchedFiles,
    file_edits,
    keywords_file_kind,
)
from kwsd.detection import Detection
from kwsd.errors import ExitCode, KwsdError, ModelMissingError
from kwsd.gate import DetectionGate
from kwsd.health import HealthServer, LinkState, audio_check, health_source, mqtt_check
from kwsd.heartbeat import Heartbeat
from kwsd.integrations.hermes import HermesHotword
from kwsd.integrations.homeassistant import HomeAssistantDiscovery
from kwsd.integrations.mute_topic import MuteWhileTopic
from kwsd.log import configure_logging
from kwsd.metrics import Metrics
from kwsd.mqtt import MqttLink, MqttOptions, StdoutPublisher
from kwsd.mqtt.commands import CommandChannel, RegistryCommands
from kwsd.mqtt.output import MqttOutput, fit_goodbye
from kwsd.mute import MuteState
from kwsd.outputs import Output, Outputs
from kwsd.pipeline import BlockObserver, Pipeline
from kwsd.registry import (
    NO_KEYWORDS_WARNING,
    STATE_FILE_NAME,
    ConfigKeywords,
    KeywordCompiler,
    KeywordRegistry,
    RegistryState,
    config_keywords,
)
from kwsd.service import Notifier, ServiceLifecycle, report_missing_model
from kwsd.spotter import KeywordSpotter
from kwsd.vad import VadOptions
from kwsd.wyoming.engine import DecodeOptions
from kwsd.wyoming.limits import ConnectionLimits
from kwsd.wyoming.server import WyomingServer
from kwsd.wyoming.zeroconf import ZeroconfAnnouncer

log = structlog.get_logger("kwsd.daemon")

# Budget for a signal-initiated shutdown: drain the pipeline (this), then the outputs
# close (the MQTT goodbye takes at most kwsd.mqtt.output.GOODBYE_TIMEOUT, 1 s).
DRAIN_TIMEOUT: Final = 0.8
# Settings a reload applies live; a change anywhere else needs a restart.
_LIVE_SETTINGS: Final = frozenset(
    {"keywords", "search.boost", "search.threshold", "search.refractory_seconds", "log"}
)

SettingsLoader = Callable[[], Settings]
BackendWrapper = Callable[[Backend], Backend]


class _EditStep(enum.Enum):
    """What became of one attempt to reload an edited file."""

    DONE = "applied, rejected or nothing to do"
    CHANGED = "the files changed while they were read"
    EMPTIED = "a keyword source lost all its keywords: wait longer"


class Daemon:
    """One running `kwsd run`. `await Daemon(settings).run()` returns the exit code.

    `reload_settings` re-reads the configuration for SIGHUP and file edits (the CLI
    passes one that re-applies its own flags); without it only the config file is
    re-read. `stdout` replaces sys.stdout for detection lines and `backend_wrapper`
    wraps the loaded backend (both for embedding and tests, e.g. a replay encoder).
    `block_observer` sees every audio block the engine processed, with its timing
    (benchmarks, diagnostics); it runs on the event loop and must return quickly.
    `extra_outputs` are the embedder's own outputs (kwsd.outputs.Output), run after
    the configured ones.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        reload_settings: SettingsLoader | None = None,
        stdout: TextIO | None = None,
        backend_wrapper: BackendWrapper | None = None,
        notifier: Notifier | None = None,
        install_signal_handlers: bool = True,
        block_observer: BlockObserver | None = None,
        extra_outputs: Iterable[Output] = (),
    ) -> None:
        self.settings = settings
        self._reload_settings = reload_settings or self._default_reload
        self._stdout = stdout
        self._backend_wrapper = backend_wrapper
        self._block_observer = block_observer
        self._extra_outputs = tuple(extra_outputs)
        self.notifier = notifier or Notifier.from_env()
        self._install_signals = install_signal_handlers
        self.heartbeat = Heartbeat()
        self.metrics = Metrics()
        self.mute = MuteState()
        self.registry: KeywordRegistry | None = None
        self.pipeline: Pipeline | None = None
        self.outputs = Outputs()  # built at start, from the settings
        self.spotter: KeywordSpotter | None = None
        self.wyoming: WyomingServer | None = None  # when wyoming.enabled, once started
        self.started = asyncio.Event()  # model loaded, tasks running
        self.reloads = 0  # reloads attempted (SIGHUP or file edits), for tests and logs
        self._stop = asyncio.Event()
        self._input_ended = asyncio.Event()  # the file or stdin ended (not a stop request)
        self._tasks: asyncio.TaskGroup | None = None  # while running
        self._reload_lock = asyncio.Lock()
        self._engine_version = -1  # keyword list version the engine was given last
        self._last_read: Snapshot | None = None  # the watched files as the last edit read them

    # ---------------------------------------------------------------- control

    def stop(self) -> None:
        """Begin a clean shutdown (safe to call more than once)."""
        if not self._stop.is_set():
            log.info("shutting down")
            self._stop.set()

    async def reload(self) -> bool:
        """Re-read the configuration and apply its keywords; False if it was rejected.

        This is SIGHUP's reload: an explicit request, applied at once (an edit that
        empties a keyword source is applied too, with a warning). File edits go through
        `_reload_after_edit`, which first waits for the files to be finished.
        """
        async with self._reload_lock:
            registry = self.registry
            if registry is None:
                self.reloads += 1
                return False
            with self._reload_notice():
                read = await self._read_config()
                return read is not None and await self._apply(registry, *read)

    # ---------------------------------------------------------------- running

    async def run(self) -> int:
        # Installed first, so a SIGTERM during a slow model load is still a clean stop.
        self._add_signal_handlers()
        try:
            return await self._run()
        finally:
            self._remove_signal_handlers()

    async def _run(self) -> int:
        settings = self.settings
        try:
            spotter = await asyncio.to_thread(
                KeywordSpotter.from_config, settings.model, settings.search, assets=settings.assets
            )
        except ModelMissingError as exc:
            return report_missing_model(exc, self.notifier)
        await asyncio.to_thread(_settle_heap)
        if self._backend_wrapper is not None:
            spotter = spotter.with_backend(self._backend_wrapper(spotter.backend))
        self.spotter = spotter
        backend = spotter.backend
        registry = KeywordRegistry(
            KeywordCompiler(spotter.tokenizer, backend.defaults, prepare=spotter.prepare),
            Path(settings.data_dir) / STATE_FILE_NAME,
            self.mute,
        )
        config = await asyncio.to_thread(config_keywords, settings.keywords, settings.search)
        await asyncio.to_thread(registry.load, config)
        self.registry = registry
        if self._stop.is_set():
            log.info("stopped while starting")
            return 0
        if not registry.keyword_set.keywords:
            log.warning(NO_KEYWORDS_WARNING)
        source = await asyncio.to_thread(open_source, settings.audio)
        vad = VadOptions.from_settings(settings.audio)
        stream = spotter.create_stream(registry.keyword_set, vad=vad)
        if vad is not None:
            log.info("voice-activity gate on: the encoder rests in silence", vad=vad.detector)
        pipeline = Pipeline(
            stream.entry,
            stream.search,
            heartbeat=self.heartbeat,
            gate=DetectionGate(self.mute, settings.search.refractory_seconds),
            metrics=self.metrics,
            observer=self._block_observer,
        )
        self.pipeline = pipeline
        self._engine_version = registry.version
        self.metrics.watch_heartbeat(self.heartbeat)
        self.metrics.set_build_info(backend=backend.name, model=spotter.label)
        self.outputs = Outputs(
            [*self._build_outputs(settings, spotter, registry), *self._extra_outputs]
        )
        wyoming = self.wyoming = self._build_wyoming(settings, spotter, registry)
        return await self._serve(source, pipeline, registry, wyoming)

    def _build_outputs(
        self, settings: Settings, model: KeywordSpotter, registry: KeywordRegistry
    ) -> list[Output]:
        """The outputs the settings ask for, in delivery order (see Outputs)."""
        outputs: list[Output] = []
        link: MqttLink | None = None
        if settings.mqtt.host:
            options = fit_goodbye(MqttOptions.from_settings(settings.mqtt))
            link = MqttLink(options, site=settings.site_id, model=model.label)
            CommandChannel(link, RegistryCommands(registry))
            if settings.mute.mute_while_topic:
                MuteWhileTopic(link, settings.mute.mute_while_topic, self.mute)
        if settings.health.enabled:
            outputs.append(self._health_server(settings, link))
        if link is None:
            outputs.append(
                StdoutPublisher(site=settings.site_id, model=model.label, stream=self._stdout)
            )
            return outputs
        outputs.append(
            MqttOutput(
                link,
                input_ended=self._input_ended,
                stop_requested=self._stop,
                metrics=self.metrics,
            )
        )
        if settings.homeassistant.discovery:
            outputs.append(
                HomeAssistantDiscovery(
                    link, settings.homeassistant, settings.site_id, __version__, mute=self.mute
                )
            )
        if settings.hermes.enabled:
            outputs.append(
                HermesHotword(link, settings.hermes.site_id, self.mute, model_version=__version__)
            )
        return outputs

    def _health_server(self, settings: Settings, link: MqttLink | None) -> HealthServer:
        checks = [audio_check(self.heartbeat)]
        if link is not None:
            checks.append(mqtt_check(lambda: LinkState(link.connected, link.status.last_error)))
        return HealthServer(
            health_source(*checks),
            self.metrics,
            host=settings.health.host,
            port=settings.health.port,
        )

    def _build_wyoming(
        self, settings: Settings, spotter: KeywordSpotter, registry: KeywordRegistry
    ) -> WyomingServer | None:
        if not settings.wyoming.enabled:
            return None
        return WyomingServer(
            spotter,
            lambda: registry.keyword_set,
            version=__version__,
            limits=ConnectionLimits.from_settings(settings.wyoming),
            announcer=ZeroconfAnnouncer.from_settings(settings.wyoming, version=__version__),
            refractory_seconds=settings.search.refractory_seconds,
            mute=self._wyoming_mute(settings),
            on_detection=self._on_wyoming_detection,
            decoding=DecodeOptions.from_settings(settings.wyoming, settings.log, spotter),
        )

    def _wyoming_mute(self, settings: Settings) -> MuteState | None:
        """The mute the Wyoming streams obey: the daemon's only with `mute.scope = "all"`.

        A pause is about this daemon's own microphone by default: the satellites that
        stream to the Wyoming server have their own mute, and a TV playing here says
        nothing about the kitchen's satellite.
        """
        return self.mute if settings.mute.scope == "all" else None

    async def _serve(
        self,
        source: AudioSource,
        pipeline: Pipeline,
        registry: KeywordRegistry,
        wyoming: WyomingServer | None,
    ) -> int:
        settings = self.settings
        audio = BoundedAudioQueue(settings.audio.max_queue_seconds)
        async with contextlib.AsyncExitStack() as services:
            await services.enter_async_context(self.outputs)
            if wyoming is not None:
                await wyoming.start(settings.wyoming.uri)
                services.push_async_callback(wyoming.close)
            registry.add_listener(self._keywords_changed)  # tells the outputs at once
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                background = [
                    tasks.create_task(
                        _contained(ServiceLifecycle(self.notifier, self.heartbeat).run()),
                        name="kwsd-lifecycle",
                    ),
                    tasks.create_task(_contained(self._watch_files()), name="kwsd-watch"),
                ]
                try:
                    code = await self._stream(tasks, source, pipeline, audio)
                finally:
                    self._tasks = None
                    for task in background:
                        task.cancel()
        log.info("kwsd stopped", exit_code=code)
        return code

    async def _stream(
        self,
        tasks: asyncio.TaskGroup,
        source: AudioSource,
        pipeline: Pipeline,
        audio: BoundedAudioQueue,
    ) -> int:
        """Capture and spot until stopped or the input ends; the exit code."""
        capture = tasks.create_task(self._capture(source, audio), name="kwsd-capture")
        engine = tasks.create_task(self._engine(pipeline, audio), name="kwsd-pipeline")
        self.started.set()
        log.info(
            "kwsd running",
            source=getattr(source, "name", self.settings.audio.source),
            keywords=self.registry.keyword_set.displays_for_log() if self.registry else [],
            site=self.settings.site_id,
        )
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({stop, engine, capture}, return_when=asyncio.FIRST_COMPLETED)
            if capture.done() and not engine.done() and not self._stop.is_set():
                # End of input: let the pipeline finish everything that was read.
                await asyncio.wait({stop, engine}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not self._stop.is_set():
            self._input_ended.set()  # the outputs deliver everything before closing
        code = capture.result() if capture.done() and not capture.cancelled() else ExitCode.OK
        await self._drain(capture, engine, audio)
        if code == ExitCode.OK and engine.done() and not engine.cancelled():
            code = engine.result()
        return int(code)

    async def _capture(self, source: AudioSource, audio: BoundedAudioQueue) -> int:
        """Run the audio source; its exit code (0 when the input simply ended)."""
        try:
            await source.run(audio)
        except KwsdError as error:
            log.error("audio input failed", error=str(error))
            return int(error.exit_code)
        except Exception as error:
            log.error("audio input crashed", error=repr(error))
            return int(ExitCode.FAILURE)
        finally:
            audio.close()
        return int(ExitCode.OK)

    async def _engine(self, pipeline: Pipeline, audio: BoundedAudioQueue) -> int:
        try:
            await pipeline.run(audio, self._on_detection)
        except Exception:
            log.exception("the engine failed; stopping")
            return int(ExitCode.FAILURE)
        return int(ExitCode.OK)

    async def _drain(
        self, capture: asyncio.Task[int], engine: asyncio.Task[int], audio: BoundedAudioQueue
    ) -> None:
        """Stop capturing, then give the pipeline a moment to finish what it has."""
        capture.cancel()
        await asyncio.wait({capture})
        audio.close()
        if engine.done():
            return
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await asyncio.shield(engine)
        except TimeoutError:
            log.warning("pipeline did not drain in time; unprocessed audio dropped")
            engine.cancel()
            await asyncio.wait({engine})

    # ------------------------------------------------------------- outputs

    def _on_detection(self, det: Detection) -> None:
        log.info(
            "detection",
            keyword=det.keyword,
            phrase=det.phrase,
            start=det.start,
            end=det.end,
            score=det.score,
            tokens=list(det.tokens),
        )
        self.metrics.record_detection(det.keyword)
        self.outputs.on_detection(det)

    def _on_wyoming_detection(self, det: Detection) -> None:
        log.info("detection", keyword=det.keyword, start=det.start, score=det.score, via="wyoming")
        self.metrics.record_detection(det.keyword)

    def _keywords_changed(self, state: RegistryState) -> None:
        # Pause/resume notify too; only a new list goes to the engine.
        if self.pipeline is not None and state.version != self._engine_version:
            self._engine_version = state.version
            self.pipeline.set_keywords(state.keyword_set)
        self.metrics.set_keywords(len(state.keyword_set))
        self.outputs.on_keywords(state)

    # --------------------------------------------------------------- reload

    def _default_reload(self) -> Settings:
        from kwsd.config import load_settings

        return load_settings(self.settings.config_path)

    @contextlib.contextmanager
    def _reload_notice(self) -> Iterator[None]:
        """RELOADING=1 to the service manager for a reload, then READY=1 (even if rejected)."""
        self.notifier.reloading()
        try:
            yield
        finally:
            self.notifier.ready("listening")

    async def _read_config(self) -> tuple[Settings, ConfigKeywords] | None:
        """The configuration and its keywords as the files hold them now; None if invalid.

        Call with the reload lock held.
        """
        self.reloads += 1
        log.info("reloading configuration")

        def read() -> tuple[Settings, ConfigKeywords]:
            new = self._reload_settings()
            return new, config_keywords(new.keywords, new.search)

        try:
            return await asyncio.to_thread(read)
        except KwsdError as exc:
            log.error(
                "configuration reload rejected; the running configuration stays",
                error=str(exc),
            )
            return None

    async def _apply(
        self, registry: KeywordRegistry, new: Settings, config: ConfigKeywords
    ) -> bool:
        """Apply a configuration that was read; False if its keywords were refused."""
        emptied = config.emptied_since(registry.configured)
        if not await registry.reload(config):
            return False
        if emptied:
            log.warning(
                "a keyword source is now empty; nothing from it will be detected",
                sources=emptied,
                active=registry.keyword_set.displays_for_log(),
            )
        old, self.settings = self.settings, new
        if self.pipeline is not None:
            self.pipeline.gate.refractory_seconds = new.search.refractory_seconds
        if new.log != old.log:
            configure_logging(new.log.level, new.log.format)
        changed = _changed_keys(old.masked_dump(), new.masked_dump())
        needs_restart = [k for k in changed if not _is_live(k)]
        if needs_restart:
            log.warning(
                "changed settings take effect after a restart (`kwsd service restart`)",
                settings=needs_restart,
            )
        return True

    async def _reload_after_edit(self, files: WatchedFiles) -> None:
        """Reload for a file edit, once the files are finished (kwsd/config/watch.py).

        Settle, read, and check that the files did not change during the read. An edit
        that leaves a keyword source that had keywords with none waits until the files
        have been stable for EMPTIED_SETTLE_SECONDS: a truncated file caught before it
        was written again must not swap in an empty list. If it stays, it is applied,
        with a warning.
        """
        settle = SettledFiles(files)
        snapshot = await settle.wait()
        if snapshot == self._last_read:
            return  # a late event for content that was already read
        hold: tuple[Snapshot, float] | None = None
        while True:
            held = hold is not None and hold[0] == snapshot
            step = await self._read_edit(settle, snapshot, held=held)
            if step is _EditStep.DONE:
                return
            if step is _EditStep.EMPTIED:
                hold = (snapshot, EMPTIED_SETTLE_SECONDS)
            snapshot = await settle.wait(hold=hold)

    async def _read_edit(
        self, settle: SettledFiles, snapshot: Snapshot, *, held: bool
    ) -> _EditStep:
        """One attempt of `_reload_after_edit`; `held`: the emptying edit has waited."""
        async with self._reload_lock:
            registry = self.registry
            if registry is None:
                return _EditStep.DONE
            with self._reload_notice():
                read = await self._read_config()
                if await settle.changed_since(snapshot):
                    return _EditStep.CHANGED  # written while it was read: settle again
                self._last_read = snapshot
                if read is None:
                    return _EditStep.DONE
                emptied = read[1].emptied_since(registry.configured)
                if emptied and not held:
                    log.warning(
                        "an edit left a keyword source with no keywords; applying it only "
                        "if the files stay like this",
                        sources=emptied,
                        wait_seconds=EMPTIED_SETTLE_SECONDS,
                    )
                    return _EditStep.EMPTIED
                await self._apply(registry, *read)
                return _EditStep.DONE

    def _watched_files(self) -> WatchedFiles:
        settings = self.settings
        if not settings.keywords.watch:
            return {}
        files: dict[Path, FileKind] = {}
        if settings.config_path is not None:
            files[Path(os.path.realpath(settings.config_path))] = "toml"
        if settings.keywords.file is not None:
            keywords = settings.keywords.file
            files[Path(os.path.realpath(keywords))] = keywords_file_kind(keywords)
        return files

    async def _watch_files(self) -> None:
        """Reload when the config or keywords file changes. Watching is a convenience:
        if it fails, SIGHUP still reloads, so a failure is logged, never fatal."""
        try:
            async for files in file_edits(self._watched_files, self._stop):
                log.info("configuration file changed", files=sorted(map(str, files)))
                await self._reload_after_edit(files)
        except Exception as exc:
            log.warning(
                "cannot watch the configuration files; reload with SIGHUP "
                "(`kill -HUP <pid>`) after editing them",
                error=str(exc),
            )

    # -------------------------------------------------------------- signals

    def _add_signal_handlers(self) -> None:
        if not self._install_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)

    def _remove_signal_handlers(self) -> None:
        if not self._install_signals:
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    def _on_sighup(self) -> None:
        tasks = self._tasks
        if tasks is None:
            log.info("SIGHUP received while starting or stopping: nothing to reload")
            return
        log.info("SIGHUP received")
        tasks.create_task(self.reload(), name="kwsd-reload")


def _settle_heap() -> None:
    """Move everything start-up created out of the garbage collector's way.

    Python's full collections walk every tracked object, and they run in whichever
    thread allocates at the time, holding the GIL. Compiling a long keyword list
    allocates a lot, and the full collections it set off (0.1-0.3 s each, mostly
    spent on the modules and model loaded at start-up) paused the engine thread and
    the event loop alike. Those objects live as long as the process, so they are
    frozen (`gc.freeze`, after a collection so that no garbage is frozen with them).
    """
    gc.collect()
    gc.freeze()


async def _contained(work: Coroutine[Any, Any, None]) -> None:
    """Run a background concern; if it fails, log it and let spotting go on."""
    try:
        await work
    except Exception:
        log.exception("a background task failed; kwsd keeps running without it")


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys: list[str] = []
        for key in sorted(set(old) | set(new)):
            keys += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return keys
    return [] if old == new else [prefix.rstrip(".")]


def _is_live(key: str) -> bool:
    return any(key == live or key.startswith(live + ".") for live in _LIVE_SETTINGS)


__all__ = ["Daemon"]
