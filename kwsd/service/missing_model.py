"""What `kwsd run` does when no model is installed: explain, then exit 78.

Exit code 78 (EX_CONFIG, `ExitCode.NOT_CONFIGURED`) is the contract with the service
managers: the systemd units list it in `RestartPreventExitStatus=`, so a daemon that
cannot work until the user acts does not spin in a restart loop. launchd has no such
key; its plist throttles restarts instead (see `kwsd.service.launchd`), which also means
a model pulled later is picked up without a manual restart.
"""

from __future__ import annotations

import sys

import structlog

from kwsd.errors import ExitCode
from kwsd.service.launchd import THROTTLE_SECONDS
from kwsd.service.notify import Notifier

log = structlog.get_logger(__name__)


def missing_model_hint(platform: str = sys.platform) -> str:
    """The fix, worded for how the daemon is most likely being run on this platform."""
    if platform == "darwin":
        return (
            "run `kwsd models pull`; a kwsd LaunchAgent retries every "
            f"{THROTTLE_SECONDS} s and starts listening by itself once the model is there "
            "(or run `kwsd service restart`)"
        )
    return (
        "run `kwsd models pull`, then `kwsd service restart` "
        "(systemd does not restart kwsd on exit code 78 by itself)"
    )


def report_missing_model(
    error: BaseException,
    notifier: Notifier | None = None,
    platform: str = sys.platform,
) -> int:
    """Log why kwsd cannot start and what to run; return the exit code for `main`."""
    hint = missing_model_hint(platform)
    log.error("no model installed; kwsd cannot listen", error=str(error), fix=hint)
    # Shown by `systemctl status kwsd` next to "status=78/CONFIG".
    (notifier or Notifier.from_env()).status(f"no model installed: {hint}")
    return int(ExitCode.NOT_CONFIGURED)
