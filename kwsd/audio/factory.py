"""Settings → the configured audio source."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kwsd.audio.base import AudioOptions, AudioSource
from kwsd.audio.file import FileSource
from kwsd.audio.mic import MicSource
from kwsd.audio.stdin import StdinSource
from kwsd.errors import AudioError

if TYPE_CHECKING:
    from kwsd.config import AudioSettings


def open_source(settings: AudioSettings | AudioOptions) -> AudioSource:
    """The source that the `[audio]` settings (or options built in code) describe.

    Raises AudioError for problems the user must fix before anything can work (a missing
    file, PortAudio not installed). A microphone that is absent is *not* an error here:
    the mic source keeps retrying, so a daemon started before its USB mic still comes up.
    """
    options = (
        settings if isinstance(settings, AudioOptions) else AudioOptions.from_settings(settings)
    )
    if options.source == "file":
        if options.file is None:
            raise AudioError('audio.source = "file" needs audio.file set to the file to read')
        return FileSource(options.file, options)
    if options.source == "stdin":
        return StdinSource(options)
    if options.source == "mic":
        return MicSource(options)
    raise AudioError(f"unknown audio.source {options.source!r}; use mic, file or stdin")
