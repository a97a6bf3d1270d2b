"""The microphone source against real PortAudio and real ALSA capture devices.

This machine has no sound card, so each test builds its own: an ALSA `file` PCM over
the `null` PCM whose capture data is read from a FIFO the test writes (ALSA_CONFIG_PATH
points PortAudio's ALSA host API at a generated config). PortAudio lists these PCMs as
ordinary input devices and delivers exactly the bytes written, in the sample format
kwsd negotiates (float32). Everything from device enumeration to the audio callback is
the real sounddevice/PortAudio/ALSA stack; nothing is mocked.

The FIFO is filled before capture starts (one burst, so no read ever sees half a
block); when it runs dry, reads block, which is how a stalled driver looks.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
from alsa_support import ALSA_CONF, FifoCaptureDevices
from async_support import wait_until
from engine_support import espeak_wav
from structlog.testing import capture_logs

from kwsd.audio.base import SAMPLE_RATE, AudioBlock, AudioOptions
from kwsd.audio.devices import (
    PORTAUDIO_LOCK,
    InputDevice,
    list_input_devices,
    portaudio,
    rescan,
    select_input_device,
)
from kwsd.audio.mic import MicSource, plan_stream
from kwsd.audio.queue import BoundedAudioQueue
from kwsd.audio.silence import mic_silence_hint
from kwsd.cli import COMMAND_MODULES
from kwsd.cli import devices as devices_cli
from kwsd.errors import AudioError, ExitCode

NEVER = 600.0  # stall timeout for tests that must not see a reopen


@pytest.fixture
def alsa(tmp_path: Path) -> Iterator[FifoCaptureDevices]:
    if not ALSA_CONF.is_file():
        pytest.fail(f"{ALSA_CONF} missing: install libasound2 (it comes with libportaudio2)")
    devices = FifoCaptureDevices(tmp_path, ["kwsd_desk", "kwsd_usb_mic"])
    devices.activate(["kwsd_desk", "kwsd_usb_mic"])
    rescan()
    yield devices
    devices.close()
    rescan()


def espeak(tmp_path: Path, text: str, name: str) -> tuple[np.ndarray, int]:
    wav = espeak_wav(tmp_path / f"{name}.wav", text, voice="en-us")
    data, rate = sf.read(wav, dtype="float32")
    return np.asarray(data, dtype=np.float32), int(rate)


def at_rate(signal: np.ndarray, rate: int, target: int) -> np.ndarray:
    return np.asarray(soxr.resample(signal, rate, target, quality="HQ"), dtype=np.float32)


def pad_to(a: np.ndarray, n: int) -> np.ndarray:
    return np.pad(a, (0, max(0, n - len(a))))[:n]


async def collect(queue: BoundedAudioQueue, n_samples: int) -> list[AudioBlock]:
    blocks: list[AudioBlock] = []
    total = 0
    async with asyncio.timeout(15):
        while total < n_samples:
            block = await queue.get()
            assert block is not None
            blocks.append(block)
            total += block.num_samples
    return blocks


async def logged_any(logs: list[MutableMapping[str, Any]], events: tuple[str, ...]) -> None:
    await wait_until(lambda: any(e["event"] in events for e in logs), within=10, what=str(events))


async def logged(logs: list[MutableMapping[str, Any]], event: str, count: int) -> None:
    """Wait until structlog captured `count` `event` entries (capture_logs has no hook)."""
    await wait_until(
        lambda: sum(e["event"] == event for e in logs) >= count, within=10, what=f"{count} {event}"
    )


def wait_until_portaudio_idle() -> None:
    with PORTAUDIO_LOCK:
        pass


async def stop(task: asyncio.Task[None], alsa: FifoCaptureDevices) -> None:
    """Cancel the source; feed the FIFOs meanwhile so the blocked ALSA read returns."""
    done = threading.Event()
    feeder = alsa.feed_zeros_until(done)
    try:
        task.cancel()
        async with asyncio.timeout(15):
            with pytest.raises(asyncio.CancelledError):
                await task
            # A cancelled source may leave its stream closing in a background thread;
            # it holds the PortAudio lock until the driver lets go.
            await asyncio.to_thread(wait_until_portaudio_idle)
    finally:
        done.set()
        feeder.join()


def assert_tiled(blocks: list[AudioBlock]) -> None:
    """Blocks follow each other sample-exactly in stream time."""
    for prev, cur in itertools.pairwise(blocks):
        assert cur.start_sample == prev.start_sample + prev.num_samples
        assert cur.start == pytest.approx(prev.end)


def options(**kw: object) -> AudioOptions:
    base: dict[str, object] = {
        "source": "mic",
        "stall_timeout_seconds": NEVER,
        "silence_warning_seconds": 0.0,
        "reopen_backoff_initial_seconds": 0.05,
        "reopen_backoff_max_seconds": 0.2,
        "max_queue_seconds": 30.0,
    }
    base.update(kw)
    return AudioOptions(**base)  # type: ignore[arg-type]


def test_portaudio_lists_the_fifo_devices(alsa: FifoCaptureDevices) -> None:
    devices = list_input_devices()
    names = [d.name for d in devices]
    assert names == ["kwsd_desk", "kwsd_usb_mic"]
    assert all(d.hostapi == "ALSA" and d.supports_16k for d in devices)
    assert sum(d.is_default for d in devices) == 1


def test_device_selection_by_name_index_and_default(alsa: FifoCaptureDevices) -> None:
    devices = list_input_devices(probe_16k=False)
    usb = select_input_device("USB", devices)  # case-insensitive substring
    assert usb.name == "kwsd_usb_mic"
    assert select_input_device(usb.index, devices) == usb
    assert select_input_device(str(usb.index), devices) == usb
    assert select_input_device(None, devices).is_default
    with pytest.raises(AudioError) as err:
        select_input_device("blue yeti", devices)
    message = str(err.value)
    assert "'blue yeti'" in message and "kwsd_desk" in message and "kwsd_usb_mic" in message
    with pytest.raises(AudioError, match="not an input device index"):
        select_input_device(99, devices)


def test_channel_beyond_device_is_an_actionable_error(alsa: FifoCaptureDevices) -> None:
    usb = select_input_device("usb", list_input_devices(probe_16k=False))
    with pytest.raises(AudioError, match=r"audio.channel = 200 .* 128 channel"):
        plan_stream(usb, None, 200)
    with pytest.raises(AudioError, match=r"cannot record at audio\.sample_rate = 100 Hz"):
        plan_stream(usb, 100, None)


async def test_mic_48k_stereo_device_downmixed_and_resampled(
    alsa: FifoCaptureDevices, tmp_path: Path
) -> None:
    left, rate = espeak(tmp_path, "turn on the lights", "left")
    right, _ = espeak(tmp_path, "open the garage door", "right")
    n = max(len(left), len(right))
    stereo48 = np.stack(
        [at_rate(pad_to(left, n), rate, 48000), at_rate(pad_to(right, n), rate, 48000)], axis=1
    )
    alsa.write("kwsd_usb_mic", stereo48)
    expected = at_rate(stereo48.mean(axis=1), 48000, SAMPLE_RATE)

    queue = BoundedAudioQueue(30)
    source = MicSource(options(device="usb", sample_rate=48000))
    task = asyncio.create_task(source.run(queue))
    try:
        blocks = await collect(queue, len(expected) - 800)
    finally:
        await stop(task, alsa)

    assert source.plan is not None
    assert source.plan.device.name == "kwsd_usb_mic" and source.plan.rate == 48000
    assert source.plan.channels == 2
    assert blocks[0].start_sample == 0 and not blocks[0].discontinuity
    assert_tiled(blocks)
    assert all(b.captured_at is not None for b in blocks)
    got = np.concatenate([b.samples for b in blocks])
    m = min(len(got), len(expected))
    # Streaming resampling of what the device delivered equals batch resampling.
    np.testing.assert_allclose(got[:m], expected[:m], atol=1e-5)
    assert np.abs(got[:m]).max() > 0.1  # real speech, not silence


async def test_mic_selects_one_channel(alsa: FifoCaptureDevices, tmp_path: Path) -> None:
    left, rate = espeak(tmp_path, "good night", "left")
    right, _ = espeak(tmp_path, "volume up", "right")
    n = max(len(left), len(right))
    stereo48 = np.stack(
        [at_rate(pad_to(left, n), rate, 48000), at_rate(pad_to(right, n), rate, 48000)], axis=1
    )
    alsa.write("kwsd_usb_mic", stereo48)
    expected = at_rate(stereo48[:, 1], 48000, SAMPLE_RATE)

    queue = BoundedAudioQueue(30)
    source = MicSource(options(device="kwsd_usb_mic", sample_rate=48000, channel=1))
    task = asyncio.create_task(source.run(queue))
    try:
        blocks = await collect(queue, len(expected) - 800)
    finally:
        await stop(task, alsa)
    got = np.concatenate([b.samples for b in blocks])
    m = min(len(got), len(expected))
    np.testing.assert_allclose(got[:m], expected[:m], atol=1e-5)
    other = at_rate(stereo48[:, 0], 48000, SAMPLE_RATE)
    assert np.abs(got[:m] - other[:m]).max() > 0.1  # really the right channel, not the left


async def test_mic_warns_once_per_digital_silence_episode(
    alsa: FifoCaptureDevices, tmp_path: Path
) -> None:
    speech, rate = espeak(tmp_path, "hey computer", "speech")
    speech16 = at_rate(speech, rate, SAMPLE_RATE)[:SAMPLE_RATE]  # 1 s
    zeros = np.zeros(int(1.5 * SAMPLE_RATE), np.float32)
    mono = np.concatenate([speech16, zeros, speech16, zeros, speech16])
    alsa.write("kwsd_desk", np.stack([mono, mono], axis=1))

    queue = BoundedAudioQueue(30)
    source = MicSource(options(device="desk", silence_warning_seconds=0.5))
    task = asyncio.create_task(source.run(queue))
    with capture_logs() as logs:
        try:
            blocks = await collect(queue, len(mono) - SAMPLE_RATE // 2)
        finally:
            await stop(task, alsa)
    assert source.plan is not None and source.plan.rate == SAMPLE_RATE  # 16 kHz supported
    got = np.concatenate([b.samples for b in blocks])
    np.testing.assert_array_equal(got[: len(mono) - SAMPLE_RATE], mono[: len(mono) - SAMPLE_RATE])
    warnings = [e for e in logs if e["event"] == "audio_digital_silence"]
    back = [e for e in logs if e["event"] == "audio_signal_back"]
    assert len(warnings) == 2  # one per 1.5 s episode, not one per block
    assert all(w["log_level"] == "warning" for w in warnings)
    assert mic_silence_hint() in warnings[0]["message"]
    assert len(back) == 2
    assert source.watchdog.episodes == 2


async def test_missing_device_is_retried_until_it_appears(
    alsa: FifoCaptureDevices, tmp_path: Path
) -> None:
    alsa.activate(["kwsd_desk"])  # the USB mic is not plugged in yet
    rescan()
    speech, rate = espeak(tmp_path, "lights off", "speech")
    speech16 = at_rate(speech, rate, SAMPLE_RATE)
    alsa.write("kwsd_usb_mic", np.stack([speech16, speech16], axis=1))

    queue = BoundedAudioQueue(30)
    source = MicSource(options(device="usb"))
    with capture_logs() as logs:
        task = asyncio.create_task(source.run(queue))
        try:
            await logged(logs, "audio_device_unavailable", 3)
            assert not task.done()  # no crash, no exit: it keeps trying
            alsa.activate(["kwsd_desk", "kwsd_usb_mic"])  # plugged in
            blocks = await collect(queue, len(speech16) - 800)
        finally:
            await stop(task, alsa)
    errors = [e for e in logs if e["event"] == "audio_device_unavailable"]
    assert all(e["log_level"] == "error" for e in errors)
    assert "no input device matches audio.device = 'usb'" in errors[0]["error"]
    assert "kwsd_desk" in errors[0]["error"]  # lists what is available
    delays = [e["retry_in_seconds"] for e in errors]
    assert delays[:3] == [0.05, 0.1, 0.2]  # exponential, capped at the configured maximum
    assert source.plan is not None and source.plan.device.name == "kwsd_usb_mic"
    got = np.concatenate([b.samples for b in blocks])
    m = len(speech16) - 800
    np.testing.assert_array_equal(got[:m], speech16[:m])
    assert blocks[0].start_sample == 0


async def test_no_device_at_all_logs_and_keeps_running(alsa: FifoCaptureDevices) -> None:
    alsa.activate([])
    rescan()
    assert list_input_devices() == []
    queue = BoundedAudioQueue(30)
    source = MicSource(options())
    with capture_logs() as logs:
        task = asyncio.create_task(source.run(queue))
        try:
            await logged(logs, "audio_device_unavailable", 2)
            assert not task.done()
        finally:
            await stop(task, alsa)
    error = next(e for e in logs if e["event"] == "audio_device_unavailable")
    assert "no audio input device found" in error["error"]
    assert source.opens == 0 and source.failures >= 2


async def test_stalled_device_is_reopened(alsa: FifoCaptureDevices, tmp_path: Path) -> None:
    first, rate = espeak(tmp_path, "hey computer", "first")
    second, _ = espeak(tmp_path, "living room", "second")
    first16 = at_rate(first, rate, SAMPLE_RATE)
    second16 = at_rate(second, rate, SAMPLE_RATE)
    alsa.write("kwsd_desk", np.stack([first16, first16], axis=1))

    queue = BoundedAudioQueue(30)
    source = MicSource(options(device="desk", stall_timeout_seconds=0.4))
    with capture_logs() as logs:
        task = asyncio.create_task(source.run(queue))
        try:
            before = await collect(queue, len(first16) - 800)
            # The FIFO is now empty: the driver blocks, no callbacks come.
            await logged(logs, "audio_device_lost", 1)
            # The device "comes back": audio flows again, which also lets the stuck read
            # (and so the abort of the old stream) return.
            alsa.write("kwsd_desk", np.stack([second16, second16], axis=1))
            await wait_until(lambda: source.opens >= 2, within=10, what="the reopen")
            again = np.tile(second16, 2)
            alsa.write("kwsd_desk", np.stack([again, again], axis=1))
            after: list[AudioBlock] = []
            async with asyncio.timeout(10):
                while not after:
                    block = await queue.get()
                    assert block is not None
                    if block.discontinuity:
                        after.append(block)
                after += await collect(queue, SAMPLE_RATE // 2)
        finally:
            await stop(task, alsa)
    lost = next(e for e in logs if e["event"] == "audio_device_lost")
    assert "no audio from the device" in lost["reason"]
    opened = [e for e in logs if e["event"] == "audio_device_opened"]
    assert len(opened) == source.opens >= 2
    assert after[0].discontinuity
    assert after[0].start_sample >= before[-1].start_sample + before[-1].num_samples
    assert_tiled(after)
    assert np.abs(np.concatenate([b.samples for b in after])).max() > 0.05  # speech again


def test_plan_prefers_16k_then_default_rate(alsa: FifoCaptureDevices) -> None:
    # The rate predicate stands in for a device without 16 kHz; everything else is real.
    usb = select_input_device("usb", list_input_devices(probe_16k=False))
    assert plan_stream(usb, None, None).rate == SAMPLE_RATE
    no16k = InputDevice(
        index=usb.index,
        name=usb.name,
        hostapi=usb.hostapi,
        max_input_channels=2,
        default_samplerate=44100.0,
        is_default=False,
        supports_16k=False,
    )
    plan = plan_stream(no16k, None, None, rate_supported=lambda _i, r, _c: r != SAMPLE_RATE)
    assert plan.rate == 44100 and plan.channels == 2
    only48 = plan_stream(no16k, None, 0, rate_supported=lambda _i, r, _c: r == 48000)
    assert only48.rate == 48000 and only48.channels == 1
    with pytest.raises(AudioError, match="accepts none of the sample rates"):
        plan_stream(no16k, None, None, rate_supported=lambda _i, _r, _c: False)


def test_portaudio_module_loads() -> None:
    sd = portaudio()
    assert hasattr(sd, "InputStream")


# -- `kwsd devices` ---------------------------------------------------------------------


def run_devices_command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="kwsd")
    devices_cli.register(parser.add_subparsers())
    args = parser.parse_args(["devices", *argv])
    code: int = args.func(args)
    return code


def test_devices_command_lists_inputs(
    alsa: FifoCaptureDevices, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "kwsd.cli.devices" in COMMAND_MODULES
    assert run_devices_command() == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == [
        "index",
        "name",
        "host",
        "API",
        "inputs",
        "default",
        "rate",
        "16",
        "kHz",
    ]
    desk = next(line for line in lines if "kwsd_desk" in line)
    usb = next(line for line in lines if "kwsd_usb_mic" in line)
    assert desk.startswith("*") and not usb.startswith("*")  # the default is marked
    assert "ALSA" in usb and "128" in usb and "yes" in usb
    assert "audio.device" in out

    assert run_devices_command("--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["name"] for d in listed] == ["kwsd_desk", "kwsd_usb_mic"]
    assert listed[0]["is_default"] and listed[1]["supports_16k"] is True
    assert {"index", "hostapi", "max_input_channels", "default_samplerate"} <= set(listed[0])


def test_devices_command_without_devices(
    alsa: FifoCaptureDevices, capsys: pytest.CaptureFixture[str]
) -> None:
    alsa.activate([])
    rescan()
    assert run_devices_command() == 0
    out = capsys.readouterr().out
    assert "No audio input devices found" in out and "arecord -l" in out


async def test_device_failing_mid_stream_is_reopened(
    alsa: FifoCaptureDevices, tmp_path: Path
) -> None:
    speech, rate = espeak(tmp_path, "open the garage door please", "speech")
    speech16 = np.trim_zeros(at_rate(speech, rate, SAMPLE_RATE))
    # While broken, the device carries exact zeros; after it is "replugged", speech.
    idle = np.zeros(3 * SAMPLE_RATE, np.float32)
    alsa.write("kwsd_usb_mic", np.stack([idle, idle], axis=1))
    alsa.activate(["kwsd_desk", "kwsd_usb_mic"], broken=("kwsd_usb_mic",))
    rescan()

    queue = BoundedAudioQueue(30)
    source = MicSource(options(device="usb", reopen_backoff_initial_seconds=0.3))
    with capture_logs() as logs:
        task = asyncio.create_task(source.run(queue))
        try:
            # ALSA fails a few blocks in: usually PortAudio then ends the running stream
            # (finished callback); on a slow machine the failure can already hit the
            # priming read inside start(). Either way kwsd must log it and retry.
            await logged_any(logs, ("audio_device_lost", "audio_device_unavailable"))
            assert not task.done()
            alsa.activate(["kwsd_desk", "kwsd_usb_mic"])  # replugged, healthy again
            opens_before = source.opens
            await wait_until(lambda: source.opens > opens_before, within=10, what="the reopen")
            alsa.write("kwsd_usb_mic", np.stack([speech16, speech16], axis=1))
            blocks: list[AudioBlock] = []
            async with asyncio.timeout(10):
                heard = 0
                while heard < len(speech16) - 800:
                    block = await queue.get()
                    assert block is not None
                    blocks.append(block)
                    if heard or block.samples.any():
                        heard += block.num_samples
        finally:
            await stop(task, alsa)
    failure = next(
        e for e in logs if e["event"] in ("audio_device_lost", "audio_device_unavailable")
    )
    if failure["event"] == "audio_device_lost":
        assert failure["log_level"] == "warning"
        assert "stream stopped" in failure["reason"] and "kwsd_usb_mic" in failure["device"]
    else:
        assert failure["log_level"] == "error" and "kwsd_usb_mic" in failure["error"]
    assert source.opens >= 1 and source.failures >= 1
    assert_tiled(blocks)
    got = np.trim_zeros(np.concatenate([b.samples for b in blocks]), "f")
    m = len(speech16) - 800
    np.testing.assert_array_equal(got[:m], speech16[:m])  # the replugged device's audio, intact


DEVICES_MAIN = (
    "import sys, kwsd.cli as cli\n"
    "cli.COMMAND_MODULES = ('kwsd.cli.devices',)  # only this command, through the real main()\n"
    "sys.exit(cli.main(['devices']))\n"
)


def portaudio_library() -> Path:
    # ldconfig lives in /sbin, which a user's PATH (and CI's PATH=/usr/bin:/bin) may lack.
    ldconfig = shutil.which("ldconfig", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    assert ldconfig is not None, "ldconfig not found"
    listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, check=True)
    for line in listing.stdout.splitlines():
        if "libportaudio.so.2" in line and "=>" in line:
            return Path(line.split("=>")[1].strip()).resolve()
    pytest.fail("libportaudio2 is not installed (apt install libportaudio2)")


def test_devices_command_through_main(alsa: FifoCaptureDevices) -> None:
    result = subprocess.run(
        [sys.executable, "-c", DEVICES_MAIN],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ},  # carries ALSA_CONFIG_PATH to the FIFO devices
    )
    assert result.returncode == 0, result.stderr
    assert "kwsd_usb_mic" in result.stdout


def test_devices_command_without_portaudio_library() -> None:
    """libportaudio2 made unloadable in a private mount namespace (the real file, hidden)."""
    library = portaudio_library()
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.decode().strip()}")
    script = f'mount --bind /dev/null {library} && exec {sys.executable} -c "$0"'
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, DEVICES_MAIN],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == int(ExitCode.AUDIO), result.stderr
    assert result.stderr.startswith("kwsd: error: cannot load the PortAudio library")
    assert "apt install libportaudio2" in result.stderr
    assert "Traceback" not in result.stderr
