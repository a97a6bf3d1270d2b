"""ALSA capture devices backed by FIFOs: real PortAudio input on a machine without a sound card.

Each device is an ALSA `file` PCM over the `null` PCM whose capture data is read from a
FIFO the test writes; ALSA_CONFIG_PATH points PortAudio's ALSA host API at a generated
config (so it applies to child processes too). PortAudio lists these PCMs as ordinary
input devices and delivers exactly the bytes written, in the sample format the stream
was opened with (write float32 for a float32 stream, one column per channel).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from pathlib import Path

import numpy as np

ALSA_CONF = Path("/usr/share/alsa/alsa.conf")
PIPE_BYTES = 1 << 20  # default /proc/sys/fs/pipe-max-size


class FifoCaptureDevices:
    """Real ALSA capture PCMs whose samples come from FIFOs this test writes."""

    def __init__(self, directory: Path, names: list[str]) -> None:
        self.directory = directory
        self.fds: dict[str, int] = {}
        for name in names:
            fifo = directory / f"{name}.fifo"
            os.mkfifo(fifo)
            # O_RDWR: opening never blocks, and ALSA's reader never sees EOF between tests.
            fd = os.open(fifo, os.O_RDWR)
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            self.fds[name] = fd
        self._configs = 0
        self._saved_env = os.environ.get("ALSA_CONFIG_PATH")

    def activate(self, names: list[str], broken: tuple[str, ...] = ()) -> None:
        """Make exactly these devices visible (takes effect at the next PortAudio rescan).

        A `broken` device fails for real a few blocks after it starts: the file plugin
        copies captured audio to /dev/full, the write fails, ALSA returns an error and
        PortAudio ends the stream, just as when a USB microphone is pulled.
        """
        self._configs += 1
        path = self.directory / f"asound-{self._configs}.conf"
        lines = [f"<{ALSA_CONF}>"]
        for name in names:
            sink = "/dev/full" if name in broken else "/dev/null"
            lines.append(
                f'pcm.{name} {{ type file; slave.pcm "null"; file "{sink}"; '
                f'infile "{self.directory / (name + ".fifo")}"; format "raw" }}'
            )
        path.write_text("\n".join(lines) + "\n")
        os.environ["ALSA_CONFIG_PATH"] = str(path)

    def write(self, name: str, frames: np.ndarray) -> None:
        data = np.ascontiguousarray(frames, dtype="<f4").tobytes()
        assert len(data) <= PIPE_BYTES, "more audio than the FIFO holds: keep test audio short"
        os.write(self.fds[name], data)

    def feed_zeros_until(self, done: threading.Event) -> threading.Thread:
        """Unblock ALSA readers (so aborting a stream can finish) until `done` is set."""

        def feed() -> None:
            zeros = bytes(4096)
            for fd in self.fds.values():
                os.set_blocking(fd, False)
            while not done.wait(0.005):
                for fd in self.fds.values():
                    with contextlib.suppress(BlockingIOError):
                        os.write(fd, zeros)
            for fd in self.fds.values():
                os.set_blocking(fd, True)

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        return thread

    def feed_silence_until(self, name: str, rate: int, done: threading.Event) -> threading.Thread:
        """Mono float32 silence at real-time pace, as an idle microphone delivers it.

        `feed_zeros_until` floods the FIFO; a program that drops its oldest audio when
        the decoder falls behind (as a live input should) would lose the speech before
        the silence then.
        """
        step = 0.05
        zeros = bytes(4 * int(rate * step))

        def feed() -> None:
            while not done.wait(step):
                os.write(self.fds[name], zeros)

        thread = threading.Thread(target=feed, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()
        if self._saved_env is None:
            os.environ.pop("ALSA_CONFIG_PATH", None)
        else:
            os.environ["ALSA_CONFIG_PATH"] = self._saved_env
