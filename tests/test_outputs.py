"""The daemon's outputs: one failing output never costs the others (or the daemon) anything."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import structlog
from daemon_support import json_lines, make_settings

from kwsd.daemon import Daemon
from kwsd.detection import Detection
from kwsd.errors import ConfigError
from kwsd.outputs import Outputs
from kwsd.registry import RegistryState


class Recorder:
    """An embedder's output that keeps what it is given."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.events = events if events is not None else []
        self.detections: list[Detection] = []
        self.versions: list[int] = []

    async def start(self) -> None:
        self.events.append(f"start {id(self)}")

    async def close(self) -> None:
        self.events.append(f"close {id(self)}")

    def on_detection(self, det: Detection) -> None:
        self.detections.append(det)

    def on_keywords(self, state: RegistryState) -> None:
        self.versions.append(state.version)


class Broken:
    """An output with a bug in every method but start."""

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        raise RuntimeError("close bug")

    def on_detection(self, det: Detection) -> None:
        raise RuntimeError("detection bug")

    def on_keywords(self, state: RegistryState) -> None:
        raise RuntimeError("keywords bug")


async def test_a_failing_output_is_logged_and_the_others_still_get_every_detection(
    tmp_path: Path, assets: Path, speech: Path
) -> None:
    settings = make_settings(
        tmp_path, assets, speech, **{"keywords.phrases": ["HEY COMPUTER", "TURN ON THE LIGHTS"]}
    )
    out = io.StringIO()
    recorder = Recorder()
    daemon = Daemon(
        settings,
        stdout=out,
        extra_outputs=[Broken(), recorder],
        install_signal_handlers=False,
    )
    with structlog.testing.capture_logs() as logs:
        assert await daemon.run() == 0
    expected = ["HEY COMPUTER", "TURN ON THE LIGHTS"]
    assert [d["keyword"] for d in json_lines(out)] == expected  # the configured output
    assert [d.keyword for d in recorder.detections] == expected  # the one after the failure
    assert recorder.versions == [1]
    assert recorder.events == [f"start {id(recorder)}", f"close {id(recorder)}"]
    failures = [(e["event"], e.get("output")) for e in logs if e["log_level"] == "error"]
    assert failures.count(
        ("output failed to take a detection; the other outputs still get it", "Broken")
    ) == len(expected)
    assert ("output failed to take the keyword list", "Broken") in failures
    assert ("output failed to close", "Broken") in failures


async def test_outputs_start_in_order_close_in_reverse_and_a_failed_start_unwinds() -> None:
    events: list[str] = []
    first, second = Recorder(events), Recorder(events)
    async with Outputs([first, second]) as outputs:
        assert outputs.find(Recorder) is first and len(outputs) == 2
    assert events == [
        f"start {id(first)}",
        f"start {id(second)}",
        f"close {id(second)}",
        f"close {id(first)}",
    ]

    class BusyPort(Recorder):
        async def start(self) -> None:
            raise ConfigError("cannot listen on 127.0.0.1:9731")

    events.clear()
    with pytest.raises(ConfigError, match="cannot listen"):
        async with Outputs([first, BusyPort(events), second]):
            pytest.fail("a failed start must not enter the block")
    assert events == [f"start {id(first)}", f"close {id(first)}"]
