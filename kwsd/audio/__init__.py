"""Audio input: microphone, file or stdin → float32 mono 16 kHz blocks in a bounded queue.

The daemon wires one source into one `BoundedAudioQueue`:

    source = open_source(settings.audio)
    queue = BoundedAudioQueue(settings.audio.max_queue_seconds)
    capture = asyncio.create_task(source.run(queue))   # returns at end of input
    ...  # decoder task: `while (block := await queue.get()) is not None: ...`
    # when capture finishes: queue.close() so the decoder drains and sees None
"""

from kwsd.lazy import lazy_exports

TYPE_CHECKING = False  # names load on first use: `read_audio` needs no asyncio nor mic
if TYPE_CHECKING:
    from kwsd.audio.base import SAMPLE_RATE, AudioBlock, AudioOptions, AudioSource
    from kwsd.audio.factory import open_source
    from kwsd.audio.file import FileSource, read_audio
    from kwsd.audio.mic import MicSource
    from kwsd.audio.queue import BoundedAudioQueue, QueueClosedError
    from kwsd.audio.stdin import StdinSource

_MODULES = {
    "base": ("SAMPLE_RATE", "AudioBlock", "AudioOptions", "AudioSource"),
    "factory": ("open_source",),
    "file": ("FileSource", "read_audio"),
    "mic": ("MicSource",),
    "queue": ("BoundedAudioQueue", "QueueClosedError"),
    "stdin": ("StdinSource",),
}
__getattr__, __dir__ = lazy_exports(
    __name__, {name: f"kwsd.audio.{m}" for m, names in _MODULES.items() for name in names}
)

__all__ = [
    "SAMPLE_RATE",
    "AudioBlock",
    "AudioOptions",
    "AudioSource",
    "BoundedAudioQueue",
    "FileSource",
    "MicSource",
    "QueueClosedError",
    "StdinSource",
    "open_source",
    "read_audio",
]
