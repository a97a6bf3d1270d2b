"""Microphone capture with PortAudio (sounddevice), built to run unattended for months.

The PortAudio callback runs on a real-time audio thread: it only copies the block and
hands it to the event loop (`call_soon_threadsafe`). It never blocks, logs or converts,
because a late callback makes the driver drop audio. Conversion, stamping and queueing
happen on the loop.

A daemon must survive the device: missing at boot (USB not enumerated yet), unplugged
mid-run, a driver that silently stops calling back. In every case it logs why, waits
with exponential backoff, rescans the devices and reopens; it never exits or spins.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from kwsd.audio.base import SAMPLE_RATE, AudioOptions, StreamClock
from kwsd.audio.blocking import call_in_daemon_thread
from kwsd.audio.convert import Converter
from kwsd.audio.devices import (
    PORTAUDIO_LOCK,
    InputDevice,
    list_input_devices,
    portaudio,
    rescan,
    select_input_device,
    supports_rate,
)
from kwsd.audio.queue import BoundedAudioQueue
from kwsd.audio.silence import SilenceWatchdog, mic_silence_hint
from kwsd.backoff import Backoff
from kwsd.errors import AudioError
from kwsd.log import get_logger

log = get_logger(__name__)

# Rates tried, in order, when neither 16 kHz nor the device default works.
_FALLBACK_RATES = (48000, 44100, 32000, 22050)
# A stream that delivered audio this long counts as healthy: the next failure starts the
# backoff from its minimum again.
_HEALTHY_AFTER_SECONDS = 10.0
_OVERFLOW_WARN_INTERVAL = 30.0
# How often a driver stuck closing the stream is reported.
_CLOSE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """How a device is opened: which device, how many channels, at which rate."""

    device: InputDevice
    channels: int
    rate: int

    def describe(self) -> str:
        return f"{self.device.label()} at {self.rate} Hz, {self.channels} channel(s)"


def plan_stream(
    device: InputDevice,
    requested_rate: int | None,
    channel: int | None,
    rate_supported: Callable[[int, int, int], bool] | None = None,
) -> StreamPlan:
    """Choose channels and rate for `device`.

    Channel k needs k+1 channels opened; downmixing uses up to two (plugin devices
    such as ALSA's advertise 128 "channels" that are just copies). The rate is 16 kHz
    when the device can, else its default rate, else a common one; soxr converts.
    """
    supported = rate_supported or supports_rate
    if channel is not None:
        if channel >= device.max_input_channels:
            raise AudioError(
                f"audio.channel = {channel} but input device {device.label()} has "
                f"{device.max_input_channels} channel(s); use 0..{device.max_input_channels - 1} "
                "or leave channel unset to downmix"
            )
        channels = channel + 1
    else:
        channels = max(1, min(device.max_input_channels, 2))
    if requested_rate is not None:
        if not supported(device.index, requested_rate, channels):
            raise AudioError(
                f"input device {device.label()} cannot record at audio.sample_rate = "
                f"{requested_rate} Hz (its default is {device.default_samplerate:.0f} Hz); "
                "unset audio.sample_rate to let kwsd choose"
            )
        return StreamPlan(device, channels, requested_rate)
    candidates = [SAMPLE_RATE, int(device.default_samplerate), *_FALLBACK_RATES]
    for rate in dict.fromkeys(r for r in candidates if r > 0):
        if supported(device.index, rate, channels):
            return StreamPlan(device, channels, rate)
    raise AudioError(
        f"input device {device.label()} accepts none of the sample rates "
        f"{', '.join(str(r) for r in dict.fromkeys(candidates))} Hz with {channels} channel(s)"
    )


class MicSource:
    """A PortAudio input device, reopened with backoff whenever it fails or disappears."""

    live = True

    def __init__(self, options: AudioOptions | None = None) -> None:
        self.options = options or AudioOptions(source="mic")
        portaudio()  # a missing libportaudio is a setup error: say so now, not in a retry loop
        self.name = "mic"
        self.clock = StreamClock()
        self.watchdog = SilenceWatchdog(
            self.options.silence_warning_seconds, source="the microphone", hint=mic_silence_hint()
        )
        # Read by metrics and tests.
        self.plan: StreamPlan | None = None
        self.opens = 0
        self.failures = 0  # failed opens plus lost streams
        self.overflows = 0  # callbacks flagged input_overflow (the driver dropped audio)
        # Loop-side state of the current stream.
        self._generation = 0
        self._converter: Converter | None = None
        self._out: BoundedAudioQueue | None = None
        self._last_audio_at = 0.0
        self._lost: asyncio.Event | None = None
        self._lost_reason = ""
        self._last_overflow_warning: float | None = None

    # -- main loop -------------------------------------------------------------------
    async def run(self, out: BoundedAudioQueue) -> None:
        loop = asyncio.get_running_loop()
        self._out = out
        backoff = Backoff(
            self.options.reopen_backoff_initial_seconds,
            self.options.reopen_backoff_max_seconds,
            jitter=False,
        )
        rescan_first = False
        while True:
            self._lost = asyncio.Event()
            self._generation += 1
            generation = self._generation
            try:
                stream = await call_in_daemon_thread(
                    partial(self._open, loop, generation, rescan_first),
                    name="kwsd-audio-open",
                    on_abandoned=self._abort_and_close,
                )
            except asyncio.CancelledError:
                self._generation += 1  # a stream still opening must not feed the queue
                raise
            except AudioError as exc:
                self.failures += 1
                delay = backoff.next_delay()
                log.error(
                    "audio_device_unavailable",
                    error=str(exc),
                    retry_in_seconds=round(delay, 2),
                    attempt=backoff.attempt,
                )
                await asyncio.sleep(delay)
                rescan_first = True
                continue
            opened_at = time.monotonic()
            try:
                reason = await self._watch()
                self.failures += 1
                if time.monotonic() - opened_at >= _HEALTHY_AFTER_SECONDS:
                    backoff.reset()
                delay = backoff.next_delay()
                # Said before closing: closing a wedged device can itself take a while.
                log.warning(
                    "audio_device_lost",
                    device=self.plan.describe() if self.plan else None,
                    reason=reason,
                    retry_in_seconds=round(delay, 2),
                )
            finally:
                await self._close(stream)
            self.clock.mark_discontinuity()
            await asyncio.sleep(delay)
            rescan_first = True

    # -- worker-thread side (blocking PortAudio calls) ------------------------------------
    def _open(self, loop: asyncio.AbstractEventLoop, generation: int, rescan_first: bool) -> Any:
        with PORTAUDIO_LOCK:
            return self._open_locked(loop, generation, rescan_first)

    def _open_locked(
        self, loop: asyncio.AbstractEventLoop, generation: int, rescan_first: bool
    ) -> Any:
        sd = portaudio()
        try:
            if rescan_first:
                rescan()  # a replugged device gets a new index; PortAudio sees it only after this
            plan = plan_stream(
                select_input_device(self.options.device, list_input_devices(probe_16k=False)),
                self.options.sample_rate,
                self.options.channel,
            )
        except sd.PortAudioError as exc:
            raise AudioError(f"PortAudio failed while looking for the input device: {exc}") from exc
        converter = Converter(plan.rate, self.options.channel)
        blocksize = max(1, plan.rate * self.options.block_ms // 1000)

        def callback(indata: Any, _frames: int, _time: Any, status: Any) -> None:
            # Audio thread: copy and hand over, nothing else (plain try: no context
            # manager object is created per callback).
            try:  # noqa: SIM105
                loop.call_soon_threadsafe(
                    self._on_block, generation, indata.copy(), status, time.monotonic()
                )
            except RuntimeError:  # the loop is closed: we are shutting down
                pass

        def finished() -> None:
            try:  # noqa: SIM105
                loop.call_soon_threadsafe(self._on_finished, generation)
            except RuntimeError:
                pass

        try:
            stream = sd.InputStream(
                device=plan.device.index,
                samplerate=plan.rate,
                channels=plan.channels,
                dtype="float32",
                blocksize=blocksize,
                callback=callback,
                finished_callback=finished,
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise AudioError(f"cannot open input device {plan.describe()}: {exc}") from exc
        # Set before start(): callbacks reach the loop as soon as the stream runs.
        self._converter = converter
        self.plan = plan
        self._last_audio_at = time.monotonic()
        try:
            stream.start()
        except sd.PortAudioError as exc:
            stream.close(ignore_errors=True)
            raise AudioError(f"cannot start input device {plan.describe()}: {exc}") from exc
        self.opens += 1
        log.info(
            "audio_device_opened",
            device=plan.device.name,
            index=plan.device.index,
            hostapi=plan.device.hostapi,
            sample_rate=plan.rate,
            channels=plan.channels,
            channel=self.options.channel if self.options.channel is not None else "downmix",
            resampling=plan.rate != SAMPLE_RATE,
        )
        return stream

    @staticmethod
    def _abort_and_close(stream: Any) -> None:
        # abort, not stop: stop waits for the audio thread to drain, abort cancels it.
        with PORTAUDIO_LOCK:
            try:
                stream.abort(ignore_errors=True)
            finally:
                stream.close(ignore_errors=True)

    # -- loop side --------------------------------------------------------------------
    def _on_block(self, generation: int, data: Any, status: Any, captured_at: float) -> None:
        if generation != self._generation or self._converter is None or self._out is None:
            return  # a late callback from a stream already closed
        self._last_audio_at = captured_at
        if status and status.input_overflow:
            self._overflowed(captured_at)
        samples = self._converter.process(data)
        if samples.size == 0:
            return
        block = self.clock.stamp(samples, captured_at)
        self.watchdog.feed(block.samples)
        self._out.put_nowait(block)

    def _on_finished(self, generation: int) -> None:
        if generation == self._generation and self._lost is not None:
            self._lost_reason = "the audio stream stopped (device removed or driver error)"
            self._lost.set()

    def _overflowed(self, now: float) -> None:
        self.overflows += 1
        self.clock.mark_discontinuity()
        last = self._last_overflow_warning
        if last is None or now - last >= _OVERFLOW_WARN_INTERVAL:
            self._last_overflow_warning = now
            log.warning(
                "audio_input_overflow",
                overflows_total=self.overflows,
                message="the audio driver dropped input because kwsd did not read it in "
                "time; a busy CPU or a blocked event loop causes this",
            )

    async def _watch(self) -> str:
        """Wait until the stream fails; return why."""
        assert self._lost is not None
        stall = self.options.stall_timeout_seconds
        poll = max(0.05, min(1.0, stall / 4))
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=poll)
                return self._lost_reason
            except TimeoutError:
                pass
            idle = time.monotonic() - self._last_audio_at
            if stall > 0 and idle >= stall:
                return f"no audio from the device for {idle:.1f} s (driver stalled or unplugged)"

    async def _close(self, stream: Any) -> None:
        """Abort and close `stream`; wait however long the driver takes.

        PortAudio is not thread-safe: until this returns no other PortAudio call (rescan,
        open) may run, so a driver stuck in abort is waited for, loudly, instead of being
        raced. The daemon itself keeps running; shutdown does not wait for the thread.
        """
        self._generation += 1  # ignore callbacks still in flight
        closing = asyncio.ensure_future(
            call_in_daemon_thread(partial(self._abort_and_close, stream), name="kwsd-audio-close")
        )
        waited = 0.0
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(closing), timeout=_CLOSE_TIMEOUT_SECONDS)
                return
            except TimeoutError:
                waited += _CLOSE_TIMEOUT_SECONDS
                log.error(
                    "audio_device_close_stuck",
                    waited_seconds=waited,
                    message="the audio driver does not release the device; kwsd waits for it "
                    "and hears nothing meanwhile (unplug/replug the device or restart the "
                    "audio service)",
                )
            except Exception as exc:  # closing a broken device may fail; we move on anyway
                log.warning("audio_device_close_failed", error=str(exc))
                return
