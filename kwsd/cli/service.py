"""`kwsd service install|uninstall|status|logs|restart`: run kwsd at login or boot.

launchd (a LaunchAgent) on macOS, systemd (a user unit, or a system unit with
`--system`) on Linux. `--dry-run` prints the file that would be written and the exact
commands that would run, without touching anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from kwsd.service.context import resolve_context
from kwsd.service.install import (
    ACTIONS,
    ServiceRequest,
    build_plan,
    detect_manager,
    sudo_warning,
)
from kwsd.service.plan import execute

_HELP = {
    "install": "write the unit/plist for this kwsd and start it now and at every login/boot",
    "uninstall": "stop the service and remove its unit/plist (models and logs are kept)",
    "status": "show whether the service runs, its PID and last exit status",
    "logs": "show the service's log (journal on Linux, ~/Library/Logs/kwsd on macOS)",
    "restart": "restart the service, e.g. after `kwsd models pull`",
}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--system",
        action="store_true",
        help="system-wide systemd unit (Linux, needs root) instead of a per-user service",
    )
    common.add_argument(
        "--dry-run",
        action="store_true",
        help="print the file and commands instead of running them",
    )
    common.add_argument(
        "--manager",
        choices=("launchd", "systemd"),
        help="service manager (default: launchd on macOS, systemd on Linux)",
    )

    parser = subparsers.add_parser(
        "service",
        help="run kwsd as a service (launchd on macOS, systemd on Linux)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="service_action", metavar="ACTION")
    actions.required = True
    for action in ACTIONS:
        sub = actions.add_parser(
            action, parents=[common], help=_HELP[action], description=_HELP[action]
        )
        sub.set_defaults(func=run, service_action=action)
        if action == "install":
            sub.add_argument(
                "--config",
                metavar="FILE",
                help="config file the service uses (default: $KWSD_CONFIG, else the "
                "standard location if it exists)",
            )
            sub.add_argument(
                "--no-sandbox",
                dest="sandbox",
                action="store_false",
                help="user unit without ProtectSystem/ProtectHome/PrivateTmp, for kernels "
                "without unprivileged user namespaces (status 226/NAMESPACE)",
            )
        if action == "logs":
            sub.add_argument(
                "-n", "--lines", type=_positive_int, default=100, help="lines to show (100)"
            )
            sub.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")


def run(args: argparse.Namespace) -> int:
    action = args.service_action
    manager = args.manager or detect_manager()
    installing = action == "install"
    ctx = resolve_context(getattr(args, "config", None), system=args.system, with_config=installing)
    request = ServiceRequest(
        action=action,
        manager=manager,
        system=args.system,
        sandbox=getattr(args, "sandbox", True),
        lines=getattr(args, "lines", 100),
        follow=getattr(args, "follow", False),
    )
    plan = build_plan(request, ctx)
    warning = sudo_warning(action, args.system, os.geteuid(), os.environ)
    if warning:
        plan = dataclasses.replace(plan, warnings=(*plan.warnings, warning))
    return execute(plan, dry_run=args.dry_run)
