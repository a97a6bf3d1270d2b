"""Error types that carry an actionable message and a process exit code.

Every failure a user can cause (a bad config, keyword, model file, audio device or
MQTT payload) is raised as one of these, so the CLI can print one line instead of a
traceback and the daemon can reject the input while keeping its previous good state.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    FAILURE = 1  # unexpected internal error (a bug: please report it)
    USAGE = 2  # bad command-line argument
    CONFIG = 3  # invalid configuration file or environment
    MODEL = 4  # model missing, corrupt or download failed
    KEYWORDS = 5  # invalid keyword list
    AUDIO = 6  # audio file unreadable or audio device unavailable
    NETWORK = 7  # download or broker unreachable
    # systemd's RestartPreventExitStatus / launchd's SuccessfulExit use this: the service
    # cannot start until the user acts (e.g. runs `kwsd models pull`), so no hot restart loop.
    NOT_CONFIGURED = 78  # EX_CONFIG from sysexits.h


class KwsdError(Exception):
    """Base for errors whose message is meant for the user, not the developer."""

    exit_code: ExitCode = ExitCode.FAILURE


class ConfigError(KwsdError):
    exit_code = ExitCode.CONFIG


class ModelError(KwsdError):
    exit_code = ExitCode.MODEL


class ModelMissingError(ModelError):
    """No model is installed where we looked; the fix is `kwsd models pull`."""

    exit_code = ExitCode.NOT_CONFIGURED


class KeywordError(KwsdError):
    exit_code = ExitCode.KEYWORDS


class AudioError(KwsdError):
    exit_code = ExitCode.AUDIO


class NetworkError(KwsdError):
    exit_code = ExitCode.NETWORK
