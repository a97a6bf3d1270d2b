"""Where detections go: the output protocol, and the set of outputs a daemon runs.

Every destination (stdout JSON lines, MQTT, Home Assistant discovery, Hermes, the
health endpoint) is an `Output`: started once, told about every published detection
and every keyword state, closed once. The daemon holds a list of them and never
needs to know which ones are configured; an embedder adds its own the same way.

`Outputs` runs the list. It starts them in order and closes them in reverse through
an AsyncExitStack, so a failed start still closes what was already running. A
failing output stays contained: an exception from one output's `on_detection`,
`on_keywords` or `close` is logged with its name and the others still get theirs.
Start-up failures do propagate (a busy health port is a configuration error the user
must see at once, not a half-started daemon).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Protocol, TypeVar

import structlog

from kwsd.detection import Detection
from kwsd.registry import RegistryState

log = structlog.get_logger("kwsd.outputs")

OutputT = TypeVar("OutputT")


class Output(Protocol):
    """A destination for detections and keyword state. All methods run on the event loop.

    `on_detection` and `on_keywords` must not block: queue the work and deliver it
    from a task started in `start` (or in a thread). `on_keywords` is called after
    every registry change, pause and resume included; compare `state.version` with
    the last one seen to react to list changes only. `close` delivers what it still
    holds, within its own time bound, and releases its resources.
    """

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def on_detection(self, det: Detection) -> None: ...

    def on_keywords(self, state: RegistryState) -> None: ...


def output_name(output: object) -> str:
    return type(output).__name__


class Outputs:
    """An ordered list of outputs, run together; use as an async context manager.

    Order matters twice: detections reach outputs in list order (the MQTT output
    before Home Assistant, so both use one payload), and closing runs in reverse
    (the health endpoint, first in the list, answers until the very end).
    """

    def __init__(self, outputs: Iterable[Output] = ()) -> None:
        self._outputs = tuple(outputs)
        self._stack: contextlib.AsyncExitStack | None = None

    def __iter__(self) -> Iterator[Output]:
        return iter(self._outputs)

    def __len__(self) -> int:
        return len(self._outputs)

    def find(self, kind: type[OutputT]) -> OutputT | None:
        """The first output of type `kind` (for tests, diagnostics and embedders)."""
        for output in self._outputs:
            if isinstance(output, kind):
                return output
        return None

    async def __aenter__(self) -> Outputs:
        stack = contextlib.AsyncExitStack()
        try:
            for output in self._outputs:
                await output.start()
                stack.push_async_callback(self._close, output)
        except BaseException:
            await stack.aclose()  # a failed start closes the ones already running
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def on_detection(self, det: Detection) -> None:
        self._each(
            lambda output: output.on_detection(det),
            "output failed to take a detection; the other outputs still get it",
            keyword=det.keyword,
        )

    def on_keywords(self, state: RegistryState) -> None:
        self._each(
            lambda output: output.on_keywords(state),
            "output failed to take the keyword list",
            version=state.version,
        )

    def _each(self, call: Callable[[Output], None], failure: str, **context: object) -> None:
        for output in self._outputs:
            try:
                call(output)
            except Exception:
                log.exception(failure, output=output_name(output), **context)

    @staticmethod
    async def _close(output: Output) -> None:
        try:
            await output.close()
        except Exception:
            log.exception("output failed to close", output=output_name(output))
