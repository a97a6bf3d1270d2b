"""Running kwsd under a service manager: launchd on macOS, systemd on Linux.

Two halves live here. The runtime half (`notify`, `watchdog`, `missing_model`) is what
the daemon calls while it runs, so that the service manager knows when it is ready and
restarts it when the audio pipeline stalls (it watches the pipeline's pulse,
`kwsd.heartbeat.Heartbeat`). The install half (`context`, `plan`, `launchd`,
`systemd`, `install`) renders unit files and builds the exact commands `kwsd service
...` runs; building is pure so tests can check it on any platform, and only
`plan.execute` touches the system.
"""

from __future__ import annotations

from kwsd.service.missing_model import report_missing_model
from kwsd.service.notify import Notifier
from kwsd.service.watchdog import ServiceLifecycle, Watchdog

__all__ = ["Notifier", "ServiceLifecycle", "Watchdog", "report_missing_model"]
