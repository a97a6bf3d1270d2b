"""Where the Wyoming server's decoding runs: a thread, or processes of their own.

Everything a stream costs outside ONNX Runtime (features, the keyword search, the
server's own bookkeeping) holds Python's GIL, so one process decodes on about one
core however many the machine has. A `ThreadShard` runs the `BatchWorker` in a thread
of the server's process: the lightest choice, and enough for a household's few
satellites. A `ProcessShard` runs a `BatchWorker` in a process with its own model and
GIL; the engine gives each connection to one shard (`wyoming.workers` of them), so
decoding spreads over the cores while the connections stay with the event loop.

Both take the same commands and give the same events (`kwsd.wyoming.decoding`). A
decode process that dies (killed, out of memory) fails only the utterances it was
decoding; the engine starts a new one in its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from typing import Final, Protocol

import structlog

from kwsd.batch import StreamBatch
from kwsd.errors import ModelError
from kwsd.log import configure_logging
from kwsd.spotter import KeywordSpotter
from kwsd.wyoming.decoding import BatchWorker, Command, Event

log = structlog.get_logger("kwsd.wyoming")

# Loads a model in a decode process: `KeywordSpotter.loader()`, which pickles.
SpotterFactory = Callable[[], KeywordSpotter]
EventsHandler = Callable[[list[Event]], None]

# How long a decode process may take to load its model before start-up fails.
START_TIMEOUT_SECONDS: Final = 120.0
# How often an idle decode process checks that the server that started it still runs.
ORPHAN_CHECK_SECONDS: Final = 1.0
STOP_TIMEOUT_SECONDS: Final = 5.0


class WorkerCommand(Protocol):
    """What a shard runs on its worker: the commands of `kwsd.wyoming.decoding`."""

    def apply(self, worker: BatchWorker) -> None: ...


class Shard(Protocol):
    """A `BatchWorker` somewhere, fed commands from the event loop."""

    name: str
    broken: str | None  # set while it cannot decode: requests fail at once

    def submit(self, command: Command) -> None: ...

    async def close(self) -> None: ...


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit included)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def _apply_all(worker: BatchWorker, commands: list[WorkerCommand]) -> None:
    for command in commands:
        try:
            command.apply(worker)
        except Exception:
            log.exception("Wyoming decode command failed", command=type(command).__name__)


# ---------------------------------------------------------------- in a thread


class ThreadShard:
    """A worker thread stepping a `StreamBatch` in the server's own process."""

    def __init__(
        self, batch: StreamBatch, loop: asyncio.AbstractEventLoop, on_events: EventsHandler
    ) -> None:
        self.name = "thread"
        self.broken: str | None = None
        self.worker = BatchWorker(batch)
        self._loop = loop
        self._on_events = on_events
        self._commands: deque[WorkerCommand] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="kwsd-wyoming-decode", daemon=True)

    @classmethod
    async def start(
        cls, spotter: KeywordSpotter, *, exact: bool, on_events: EventsHandler
    ) -> ThreadShard:
        """The worker thread; its encoder calls are spread over every usable core
        (ONNX Runtime releases the GIL while it computes)."""
        batch = await asyncio.to_thread(spotter.create_batch, exact=exact, threads=usable_cores())
        shard = cls(batch, asyncio.get_running_loop(), on_events)
        shard._thread.start()
        log.debug("Wyoming decode thread started", plan=str(batch.plan))
        return shard

    def submit(self, command: WorkerCommand) -> None:
        """Queue a command for the worker thread (from any thread)."""
        with self._wake:
            self._commands.append(command)
            self._wake.notify()

    async def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self.worker.batch.close)

    def _run(self) -> None:
        worker = self.worker
        while True:
            with self._wake:
                while not self._commands and not self._stopping:
                    delay = worker.wait_before_step()
                    if delay == 0.0:
                        break
                    self._wake.wait(delay)
                if self._stopping:
                    return
                commands = list(self._commands)
                self._commands.clear()
            _apply_all(worker, commands)
            # One chunk per ready stream, then look for new audio: a stream that
            # hands over meanwhile joins the next step instead of waiting for a drain.
            if worker.wait_before_step() == 0.0:
                worker.step()
            events = worker.take_events()
            if events:
                self._loop.call_soon_threadsafe(self._on_events, events)


# ---------------------------------------------------------------- in a process


@dataclass(frozen=True, slots=True)
class _Started:
    pid: int
    plan: str


@dataclass(frozen=True, slots=True)
class _StartFailed:
    error: str


@dataclass(frozen=True, slots=True)
class WorkerLogging:
    """The server's logging, repeated in each decode process (it logs to the same stderr)."""

    level: str = "info"
    fmt: str = "auto"


_Message = _Started | _StartFailed | list[Event]


class ProcessShard:
    """A decode process with its own model, fed over a pipe by the event loop.

    Commands are gathered per turn of the event loop and sent as one message; the
    queue's feeder thread writes them, so a busy decode process never blocks the
    loop. A reader thread passes events back, and notices the process ending.
    """

    def __init__(
        self,
        name: str,
        load: SpotterFactory,
        *,
        exact: bool,
        on_events: EventsHandler,
        on_lost: Callable[[ProcessShard, str], None],
        logging: WorkerLogging,
    ) -> None:
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._on_events = on_events
        self._on_lost = on_lost
        context = multiprocessing.get_context("spawn")  # never fork a threaded server
        self._commands: Queue[list[WorkerCommand] | None] = context.Queue()
        self._events: Queue[_Message] = context.Queue()
        self._process: BaseProcess = context.Process(
            target=serve_shard,
            args=(self._commands, self._events, load, exact, logging),
            name=f"kwsd-wyoming-decode-{name}",
            daemon=True,
        )
        self._pending: list[WorkerCommand] = []
        self._stopping = False
        self._reader = threading.Thread(
            target=self._read, name=f"kwsd-wyoming-events-{name}", daemon=True
        )
        self.pid: int | None = None
        self.broken: str | None = None  # why it could not start: requests fail at once

    async def launch(self) -> None:
        """Start the process and wait until its model is loaded (or say why not).

        Commands submitted before are kept and applied once it runs.
        """
        await asyncio.to_thread(self._process.start)
        try:
            first = await asyncio.to_thread(self._events.get, True, START_TIMEOUT_SECONDS)
        except queue.Empty:
            await self._stop_process()
            raise ModelError(
                f"Wyoming decode process {self.name} did not load its model within "
                f"{START_TIMEOUT_SECONDS:.0f} s; is the machine out of memory? "
                "Lower wyoming.workers"
            ) from None
        if not isinstance(first, _Started):
            await self._stop_process()
            reason = first.error if isinstance(first, _StartFailed) else repr(first)
            raise ModelError(f"Wyoming decode process {self.name} could not start: {reason}")
        self.pid = first.pid
        self._reader.start()
        log.info("Wyoming decode process started", worker=self.name, pid=first.pid, plan=first.plan)

    def submit(self, command: WorkerCommand) -> None:
        """Queue a command (event loop thread only); sent at the end of this loop turn."""
        if not self._pending:
            self._loop.call_soon(self._flush)
        self._pending.append(command)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._stopping:
            self._commands.put(pending)

    async def close(self) -> None:
        self._flush()
        self._stopping = True
        with contextlib.suppress(ValueError, OSError):
            self._commands.put(None)
        await self._stop_process()
        if self._reader.is_alive():
            await asyncio.to_thread(self._reader.join)
        self._events.cancel_join_thread()
        self._events.close()

    async def _stop_process(self) -> None:
        self._stopping = True
        process = self._process
        if process.pid is None:  # never started
            return
        await asyncio.to_thread(process.join, STOP_TIMEOUT_SECONDS)
        if process.is_alive():
            process.kill()
            await asyncio.to_thread(process.join)
        # Nobody reads what is still queued: read it here, so the queue's feeder thread
        # is not left blocked on a full pipe, then let it go.
        await asyncio.to_thread(_discard, self._commands)
        self._commands.close()
        self._commands.cancel_join_thread()

    def _read(self) -> None:
        while True:
            try:
                message = self._events.get(timeout=ORPHAN_CHECK_SECONDS)
            except queue.Empty:
                if self._stopping:
                    return
                if not self._process.is_alive():
                    reason = f"exit code {self._process.exitcode}"
                    with contextlib.suppress(RuntimeError):  # the loop is closed
                        self._loop.call_soon_threadsafe(self._on_lost, self, reason)
                    return
                continue
            except (EOFError, OSError, ValueError):
                return
            if isinstance(message, list):
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._on_events, message)


def _discard(unread: Queue[list[WorkerCommand] | None]) -> None:
    with contextlib.suppress(queue.Empty, EOFError, OSError, ValueError):
        while True:
            unread.get(timeout=0.2)


def serve_shard(
    commands: Queue[list[WorkerCommand] | None],
    events: Queue[_Message],
    load: SpotterFactory,
    exact: bool,
    logging: WorkerLogging,
) -> None:
    """A decode process's main: load the model, then apply commands and step the batch.

    It ignores Ctrl-C (the server in front of it decides when to stop, and sends
    None), and it ends by itself when that server has gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(logging.level, logging.fmt)
    try:
        batch = load().create_batch(exact=exact)
    except Exception as exc:
        events.put(_StartFailed(f"{type(exc).__name__}: {exc}"))
        return  # the queue is flushed at exit: the server is waiting for this
    events.put(_Started(os.getpid(), str(batch.plan)))
    events.cancel_join_thread()  # from now on, do not wait at exit for a server that left
    worker = BatchWorker(batch)
    server = os.getppid()
    while True:
        received: list[list[WorkerCommand] | None] = []
        delay = worker.wait_before_step()
        try:
            if delay != 0.0:  # wait for a message, or until the ready chunks are due
                received.append(
                    commands.get(timeout=ORPHAN_CHECK_SECONDS if delay is None else delay)
                )
            while True:  # and take whatever else has arrived
                received.append(commands.get_nowait())
        except queue.Empty:
            pass
        except (EOFError, OSError):
            return
        if not received and delay is None:
            if os.getppid() != server:
                return
            continue
        for message in received:
            if message is None:
                return
            _apply_all(worker, message)
        if worker.wait_before_step() == 0.0:
            worker.step()
        found = worker.take_events()
        if found:
            events.put(found)
