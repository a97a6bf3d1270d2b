"""`kwsd run`: assemble the service from the settings, run it, and shut it down cleanly.

Start-up does the blocking work (model resolution and loading, keyword compilation)
in worker threads, then starts one task per concern: audio capture, the engine
pipeline, the detection publisher (MQTT or stdout), the service-manager lifecycle,
the health endpoint, the config-file watcher and a metrics poller.

Shutdown (SIGTERM/SIGINT, or the end of a file or stdin input) stops capture first,
lets the pipeline drain what was already captured, delivers the detections, publishes
`offline`, and returns 0, all within about two seconds. SIGHUP, or an edit of the
config or keywords file, re-reads the configuration and applies the keyword part; a
bad edit is logged and the running keywords stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final, TextIO

import structlog
from watchfiles import awatch

from kwsd import __version__
from kwsd.audio import BoundedAudioQueue, open_source
from kwsd.audio.base import AudioSource
from kwsd.backends.base import Backend
from kwsd.config import Settings
from kwsd.detection import Detection
from kwsd.engine import Frontend
from kwsd.errors import KwsdError, ModelMissingError
from kwsd.health import HealthServer, LinkState, audio_check, health_source, mqtt_check
from kwsd.integrations.hermes import HermesHotword
from kwsd.integrations.homeassistant import HomeAssistantDiscovery
from kwsd.integrations.mute import MuteState, MuteWhileTopic
from kwsd.log import configure_logging
from kwsd.metrics import Metrics
from kwsd.model.loaded import LoadedModel, load_model
from kwsd.mqtt import MqttLink, MqttOptions, StdoutPublisher
from kwsd.pipeline import Pipeline
from kwsd.registry import (
    STATE_FILE_NAME,
    KeywordCompiler,
    KeywordRegistry,
    RegistryState,
    config_keywords,
)
from kwsd.search import KeywordSearch, SearchOptions
from kwsd.service import Heartbeat, Notifier, ServiceLifecycle, report_missing_model
from kwsd.wyoming.limits import ConnectionLimits
from kwsd.wyoming.server import WyomingServer
from kwsd.wyoming.zeroconf import ZeroconfAnnouncer

log = structlog.get_logger("kwsd.daemon")

# Budget for a signal-initiated shutdown: drain the pipeline, then MQTT goodbye.
DRAIN_TIMEOUT: Final = 0.8
MQTT_GOODBYE_TIMEOUT: Final = 1.0
METRICS_POLL_SECONDS: Final = 1.0
END_OF_INPUT_FLUSH_TIMEOUT: Final = 10.0
WATCH_DEBOUNCE_MS: Final = 200
# Settings a reload applies live; a change anywhere else needs a restart.
_LIVE_SETTINGS: Final = frozenset(
    {"keywords", "search.boost", "search.threshold", "search.refractory_seconds", "log"}
)

SettingsLoader = Callable[[], Settings]
BackendWrapper = Callable[[Backend], Backend]


def search_options(settings: Settings) -> SearchOptions:
    return SearchOptions(
        beam=settings.search.beam,
        num_trailing_blanks=settings.search.num_trailing_blanks,
        auto_reset_seconds=settings.search.auto_reset_seconds,
    )


class Daemon:
    """One running `kwsd run`. `await Daemon(settings).run()` returns the exit code.

    `reload_settings` re-reads the configuration for SIGHUP and file edits (the CLI
    passes one that re-applies its own flags); without it only the config file is
    re-read. `stdout` replaces sys.stdout for detection lines and `backend_wrapper`
    wraps the loaded backend (both for embedding and tests, e.g. a replay encoder).
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
    ) -> None:
        self.settings = settings
        self._reload_settings = reload_settings or self._default_reload
        self._stdout = stdout
        self._backend_wrapper = backend_wrapper
        self.notifier = notifier or Notifier.from_env()
        self._install_signals = install_signal_handlers
        self.heartbeat = Heartbeat()
        self.metrics = Metrics()
        self.mute = MuteState()
        self.registry: KeywordRegistry | None = None
        self.pipeline: Pipeline | None = None
        self.link: MqttLink | None = None
        self.stdout_publisher: StdoutPublisher | None = None
        self.health: HealthServer | None = None
        self.discovery: HomeAssistantDiscovery | None = None
        self.hermes: HermesHotword | None = None
        self.wyoming: WyomingServer | None = None
        self.model: LoadedModel | None = None
        self.started = asyncio.Event()  # model loaded, tasks running
        self.reloads = 0  # reloads attempted (SIGHUP or file edits), for tests and logs
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._reload_lock = asyncio.Lock()
        self._engine_version = -1  # keyword list version the engine was given last
        self._outputs_version = -1  # keyword list version announced to integrations last

    # ---------------------------------------------------------------- control

    def stop(self) -> None:
        """Begin a clean shutdown (safe to call more than once)."""
        if not self._stop.is_set():
            log.info("shutting down")
            self._stop.set()

    async def reload(self) -> bool:
        """Re-read the configuration and apply its keywords; False if it was rejected."""
        async with self._reload_lock:
            self.reloads += 1
            registry = self.registry
            if registry is None:
                return False
            self.notifier.reloading()
            try:
                return await self._reload(registry)
            finally:
                self.notifier.ready("listening")

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
            model = await asyncio.to_thread(load_model, settings)
        except ModelMissingError as exc:
            return report_missing_model(exc, self.notifier)
        self.model = model
        backend = model.backend
        if self._backend_wrapper is not None:
            backend = self._backend_wrapper(backend)
        registry = KeywordRegistry(
            KeywordCompiler(model.tokenizer, backend.defaults),
            Path(settings.data_dir) / STATE_FILE_NAME,
            self.mute,
        )
        config = await asyncio.to_thread(config_keywords, settings)
        await asyncio.to_thread(registry.load, config)
        self.registry = registry
        if self._stop.is_set():
            log.info("stopped while starting")
            return 0
        if not registry.keyword_set.keywords:
            log.warning(
                "no keywords configured: nothing will be detected until some are set in "
                "[keywords] (config.toml), with --keywords, or over MQTT "
                "(cmd/keywords/set)"
            )
        source = await asyncio.to_thread(open_source, settings.audio)
        search = KeywordSearch(backend, registry.keyword_set, search_options(settings))
        pipeline = Pipeline(
            Frontend(backend),
            search,
            heartbeat=self.heartbeat,
            metrics=self.metrics,
            refractory_seconds=settings.search.refractory_seconds,
        )
        self.pipeline = pipeline
        self._engine_version = registry.version
        self.metrics.watch_heartbeat(self.heartbeat)
        self.metrics.set_build_info(backend=backend.name, model=model.label)
        self._build_outputs(settings, model, backend)
        self.mute.add_listener(lambda mute: setattr(pipeline, "muted", mute.muted))
        registry.add_listener(self._keywords_changed)
        return await self._serve(source, pipeline)

    def _build_outputs(self, settings: Settings, model: LoadedModel, backend: Backend) -> None:
        if settings.mqtt.host:
            options = MqttOptions.from_settings(settings.mqtt)
            # Leave room in the 2 s stop budget for draining the pipeline first.
            options = dataclasses.replace(
                options,
                shutdown_timeout_seconds=min(
                    options.shutdown_timeout_seconds, MQTT_GOODBYE_TIMEOUT / 2
                ),
            )
            self.link = MqttLink(
                options, site=settings.site_id, model=model.label, handler=self.registry
            )
            if settings.mute.mute_while_topic:
                MuteWhileTopic(self.link, settings.mute.mute_while_topic, self.mute)
            if settings.homeassistant.discovery:
                self.discovery = HomeAssistantDiscovery(
                    self.link, settings.homeassistant, settings.site_id, __version__, mute=self.mute
                )
            if settings.hermes.enabled:
                self.hermes = HermesHotword(
                    self.link, settings.hermes.site_id, self.mute, model_version=model.label
                )
            log.info("detections go to MQTT", broker=options.address, base_topic=options.base_topic)
        else:
            self.stdout_publisher = StdoutPublisher(
                site=settings.site_id, model=model.label, stream=self._stdout
            )
            log.info("no MQTT broker configured (mqtt.host): detections go to stdout")
        if settings.wyoming.enabled:
            registry = self.registry
            assert registry is not None
            self.wyoming = WyomingServer.for_backend(
                backend,
                lambda: registry.keyword_set,
                search_options(settings),
                version=__version__,
                refractory_seconds=settings.search.refractory_seconds,
                mute=self.mute,
                on_detection=self._on_wyoming_detection,
                limits=ConnectionLimits.from_settings(settings.wyoming),
                announcer=ZeroconfAnnouncer.from_settings(settings.wyoming, version=__version__),
            )
        if settings.health.enabled:
            checks = [audio_check(self.heartbeat)]
            link = self.link
            if link is not None:
                checks.append(mqtt_check(lambda: LinkState(link.connected, link.status.last_error)))
            self.health = HealthServer(
                health_source(*checks),
                self.metrics,
                host=settings.health.host,
                port=settings.health.port,
            )

    async def _serve(self, source: AudioSource, pipeline: Pipeline) -> int:
        settings = self.settings
        audio = BoundedAudioQueue(settings.audio.max_queue_seconds)
        if self.health is not None:
            await self.health.start()
        if self.wyoming is not None:
            await self.wyoming.start(settings.wyoming.uri)
        capture = self._spawn(self._capture(source, audio), "kwsd-capture")
        engine = self._spawn(pipeline.run(audio, self._on_detection), "kwsd-pipeline")
        link_task = self._spawn(self.link.run(), "kwsd-mqtt") if self.link else None
        stdout_task = (
            self._spawn(self.stdout_publisher.run(), "kwsd-stdout")
            if self.stdout_publisher
            else None
        )
        background = [
            self._spawn(ServiceLifecycle(self.notifier, self.heartbeat).run(), "kwsd-lifecycle"),
            self._spawn(self._poll_metrics(), "kwsd-metrics"),
            self._spawn(self._watch_files(), "kwsd-watch"),
        ]
        self.started.set()
        log.info(
            "kwsd running",
            source=getattr(source, "name", settings.audio.source),
            keywords=self.registry.keyword_set.displays() if self.registry else [],
            site=settings.site_id,
        )
        code = 0
        try:
            stop = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({stop, engine, capture}, return_when=asyncio.FIRST_COMPLETED)
            if capture.done() and not engine.done() and not self._stop.is_set():
                # End of input: let the pipeline finish everything that was read.
                await asyncio.wait({stop, engine}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            end_of_input = not self._stop.is_set()
            code = self._capture_result(capture)
            await self._drain(capture, engine, audio)
            if stdout_task is not None:
                await _cancel(stdout_task)  # writes the lines still queued
            if link_task is not None and self.link is not None:
                if end_of_input:
                    await self._deliver_mqtt(self.link)
                self.link.stop()
                try:
                    async with asyncio.timeout(MQTT_GOODBYE_TIMEOUT):
                        await asyncio.shield(link_task)
                except TimeoutError:
                    log.warning("MQTT goodbye took too long; closing anyway")
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self.health is not None:
                await self.health.close()
            if self.wyoming is not None:
                await self.wyoming.close()
        log.info("kwsd stopped", exit_code=code)
        return code

    async def _deliver_mqtt(self, link: MqttLink) -> None:
        """At the end of a file or stdin, wait (bounded, or until a signal) for the broker
        to take every detection: a short file may end before the first connection."""

        async def delivered() -> None:
            await link.wait_connected()
            await link.flush()

        flush = asyncio.ensure_future(delivered())
        stop = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait(
            {flush, stop}, timeout=END_OF_INPUT_FLUSH_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        for future in (flush, stop):
            await _cancel(future)
        if flush not in done:
            log.warning("exiting with detections not delivered to MQTT", queued=link.status.queued)

    async def _capture(self, source: AudioSource, audio: BoundedAudioQueue) -> None:
        try:
            await source.run(audio)
        finally:
            audio.close()

    def _capture_result(self, capture: asyncio.Task[None]) -> int:
        if not capture.done() or capture.cancelled():
            return 0
        error = capture.exception()
        if error is None:
            return 0
        if isinstance(error, KwsdError):
            log.error("audio input failed", error=str(error))
            return int(error.exit_code)
        log.error("audio input crashed", error=repr(error))
        return 1

    async def _drain(
        self, capture: asyncio.Task[None], engine: asyncio.Task[None], audio: BoundedAudioQueue
    ) -> None:
        """Stop capturing, then give the pipeline a moment to finish what it has."""
        await _cancel(capture)
        audio.close()
        if engine.done():
            return
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await asyncio.shield(engine)
        except TimeoutError:
            log.warning("pipeline did not drain in time; unprocessed audio dropped")
            await _cancel(engine)

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
        if self.link is not None:
            payload = self.link.publish_detection(det)
            if self.discovery is not None:
                self.discovery.on_detection(det, payload)
            if self.hermes is not None:
                self.hermes.on_detection(det)
        if self.stdout_publisher is not None:
            self.stdout_publisher.publish_detection(det)

    def _on_wyoming_detection(self, det: Detection) -> None:
        log.info("detection", keyword=det.keyword, start=det.start, score=det.score, via="wyoming")
        self.metrics.record_detection(det.keyword)

    def _keywords_changed(self, state: RegistryState) -> None:
        # Pause/resume notify too; only a new list goes to the engine and integrations.
        if self.pipeline is not None and state.version != self._engine_version:
            self._engine_version = state.version
            self.pipeline.set_keywords(state.keyword_set)
        if self.link is not None:
            self.link.publish_keywords(state.payload())
        if state.version == self._outputs_version:
            return
        self._outputs_version = state.version
        self.metrics.set_keywords(len(state.keyword_set))
        if self.discovery is not None:
            self.discovery.publish(state.keyword_set)
        if self.hermes is not None:
            self.hermes.set_keywords(state.keyword_set)

    async def _poll_metrics(self) -> None:
        while True:
            if self.link is not None:
                status = self.link.status
                self.metrics.set_mqtt_connected(status.connected)
                self.metrics.set_outbox(status.queued)
            await asyncio.sleep(METRICS_POLL_SECONDS)

    # --------------------------------------------------------------- reload

    def _default_reload(self) -> Settings:
        from kwsd.config import load_settings

        return load_settings(self.settings.config_path)

    async def _reload(self, registry: KeywordRegistry) -> bool:
        log.info("reloading configuration")
        try:
            new = await asyncio.to_thread(self._reload_settings)
            config = await asyncio.to_thread(config_keywords, new)
        except KwsdError as exc:
            log.error(
                "configuration reload rejected; the running configuration stays",
                error=str(exc),
            )
            return False
        ok = await registry.reload(config)
        if not ok:
            return False
        old, self.settings = self.settings, new
        if self.pipeline is not None:
            self.pipeline.refractory.seconds = new.search.refractory_seconds
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

    def _watched_files(self) -> set[Path]:
        settings = self.settings
        if not settings.keywords.watch:
            return set()
        files = {settings.config_path, settings.keywords.file}
        return {Path(os.path.realpath(p)) for p in files if p is not None}

    async def _watch_files(self) -> None:
        """Reload when the config or keywords file changes (editors replace files, so the
        directories are watched and filtered by name). Watching is a convenience: if it
        fails, SIGHUP still reloads, so a failure is logged, never fatal."""
        try:
            await self._watch_loop()
        except Exception as exc:
            log.warning(
                "cannot watch the configuration files; reload with SIGHUP "
                "(`kill -HUP <pid>`) after editing them",
                error=str(exc),
            )

    async def _watch_loop(self) -> None:
        while True:
            files = self._watched_files()
            parents = {p.parent for p in files if p.parent.is_dir()}
            if not parents:
                return

            def relevant(_change: object, path: str, files: set[Path] = files) -> bool:
                return Path(os.path.realpath(path)) in files

            async for _changes in awatch(
                *parents,
                watch_filter=relevant,
                debounce=WATCH_DEBOUNCE_MS,
                step=50,
                recursive=False,
                stop_event=self._stop,
            ):
                log.info("configuration file changed", files=sorted(map(str, files)))
                await self.reload()
                if self._watched_files() != files:
                    break  # the keywords file moved: watch the new one
            else:
                return

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
        log.info("SIGHUP received")
        self._spawn(self.reload(), "kwsd-reload")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task


async def _cancel(task: asyncio.Future[Any]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys: list[str] = []
        for key in sorted(set(old) | set(new)):
            keys += _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return keys
    return [] if old == new else [prefix.rstrip(".")]


def _is_live(key: str) -> bool:
    return any(key == live or key.startswith(live + ".") for live in _LIVE_SETTINGS)


async def run_daemon(settings: Settings, **options: Any) -> int:
    """Run until stopped; the exit code for `kwsd run`."""
    return await Daemon(settings, **options).run()


__all__ = ["Daemon", "run_daemon", "search_options"]
