"""Pick the service manager for this platform and build the plan for one action."""

from __future__ import annotations

import dataclasses
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kwsd.service import launchd, systemd
from kwsd.service.context import ServiceContext
from kwsd.service.plan import Plan, ServiceError

Manager = Literal["launchd", "systemd"]
Action = Literal["install", "uninstall", "status", "logs", "restart"]
ACTIONS: tuple[Action, ...] = ("install", "uninstall", "status", "logs", "restart")


def detect_manager(platform: str = sys.platform) -> Manager:
    if platform == "darwin":
        return "launchd"
    if platform.startswith("linux"):
        return "systemd"
    raise ServiceError(
        f"`kwsd service` supports macOS (launchd) and Linux (systemd), not {platform}; "
        "run `kwsd run` under your platform's service manager instead"
    )


@dataclass(frozen=True)
class ServiceRequest:
    action: Action
    manager: Manager
    system: bool = False
    sandbox: bool = True
    lines: int = 100
    follow: bool = False


def sudo_warning(action: Action, system: bool, euid: int, environ: Mapping[str, str]) -> str | None:
    """`sudo kwsd service install` without --system would set kwsd up for root."""
    user = environ.get("SUDO_USER")
    if action != "install" or system or euid != 0 or not user or user == "root":
        return None
    return (
        f"warning: under sudo this installs a service for root, not for {user}; "
        "run it without sudo, or add --system"
    )


def system_install_warnings(ctx: ServiceContext) -> list[str]:
    """Things that make a DynamicUser service fail at start, caught at install time."""
    warnings: list[str] = []
    program = Path(ctx.program[0])
    if program.is_relative_to("/home") or program.is_relative_to("/root"):
        warnings.append(
            f"warning: {program} is inside a home directory, which the system service's "
            "dynamic user usually cannot read (exit status 203/EXEC). Install kwsd "
            "system-wide, e.g. a venv in /opt/kwsd, and run this command from there."
        )
    if ctx.config is not None:
        try:
            mode = ctx.config.stat().st_mode
        except OSError:
            mode = 0
        if not mode & stat.S_IROTH:
            warnings.append(
                f"warning: {ctx.config} is not world-readable; the service's dynamic user "
                "cannot read it. Put it in /etc/kwsd/ with mode 0644 (or 0640 and group "
                "ownership you grant via an override)."
            )
    return warnings


def build_plan(request: ServiceRequest, ctx: ServiceContext) -> Plan:
    if request.manager == "launchd":
        if request.system:
            raise ServiceError(
                "--system is not available on macOS: kwsd must run as a LaunchAgent in "
                "your login session, because macOS grants microphone access per user and "
                "a system daemon only ever hears silence"
            )
        if request.action == "install":
            return launchd.install_plan(ctx)
        if request.action == "uninstall":
            return launchd.uninstall_plan(ctx)
        if request.action == "status":
            return launchd.status_plan(ctx)
        if request.action == "logs":
            return launchd.logs_plan(ctx, request.lines, request.follow)
        return launchd.restart_plan(ctx)

    if request.action == "install":
        plan = systemd.install_plan(ctx, sandbox=request.sandbox)
        if ctx.system:
            plan = dataclasses.replace(plan, warnings=tuple(system_install_warnings(ctx)))
        return plan
    if request.action == "uninstall":
        return systemd.uninstall_plan(ctx)
    if request.action == "status":
        return systemd.status_plan(ctx)
    if request.action == "logs":
        return systemd.logs_plan(ctx, request.lines, request.follow)
    return systemd.restart_plan(ctx)
