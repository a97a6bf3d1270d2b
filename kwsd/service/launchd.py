"""macOS: a per-user LaunchAgent, managed with `launchctl bootstrap/bootout/print`.

A LaunchAgent, not a LaunchDaemon: microphone access (TCC) is granted per user and only
a process in the user's GUI (Aqua) session can hold it. A daemon outside that session
reads all-zero samples and macOS never asks the user.

Restart policy. launchd has no counterpart to systemd's `RestartPreventExitStatus=`:
`KeepAlive = {SuccessfulExit = false}` restarts on *any* non-zero exit, and
`KeepAlive = {Crashed = true}` only on death by a crash signal, which would leave an
ordinary Python error (exit 1) down for good. So we keep `SuccessfulExit = false` (a
clean exit 0, e.g. `kwsd service` stopping it, is not restarted) and rely on
`ThrottleInterval`: launchd spawns the job at most once per interval, so exit 78 (no
model installed) costs one short start per minute instead of a hot loop, and the agent
starts listening by itself once `kwsd models pull` has run. A job that ran longer than
the interval and then crashed is restarted at once.
"""

from __future__ import annotations

import plistlib
from pathlib import Path
from typing import Any

from kwsd.service.context import OPEN_FILES_LIMIT, ServiceContext
from kwsd.service.plan import Command, MakeDir, Plan, RemoveFile, WriteFile

LABEL = "org.kwsd.daemon"
THROTTLE_SECONDS = 60
EXIT_TIMEOUT_SECONDS = 20  # SIGTERM → SIGKILL grace, enough to flush MQTT and say offline
LAUNCHCTL = "launchctl"
# launchd starts jobs with PATH=/usr/bin:/bin:/usr/sbin:/sbin; add Homebrew's prefixes.
BASE_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")

_COMMENT = """<!--
  kwsd LaunchAgent, written by `kwsd service install` (edit there, not here).
  KeepAlive/SuccessfulExit=false: restart after any failure, not after a clean exit.
  launchd cannot exempt exit code 78 (no model installed) from restarts, so
  ThrottleInterval spaces restarts out: at most one start per interval, and the agent
  begins listening by itself once `kwsd models pull` has run.
  Logs: ~/Library/Logs/kwsd/kwsd.log (`kwsd service logs -f`).
-->
"""


def agent_path(home: Path, label: str = LABEL) -> Path:
    return home / "Library" / "LaunchAgents" / f"{label}.plist"


def log_dir(home: Path) -> Path:
    return home / "Library" / "Logs" / "kwsd"


def log_file(home: Path) -> Path:
    return log_dir(home) / "kwsd.log"


def domain(uid: int) -> str:
    return f"gui/{uid}"


def service_target(uid: int, label: str = LABEL) -> str:
    return f"{domain(uid)}/{label}"


def _search_path(ctx: ServiceContext) -> str:
    first = str(Path(ctx.program[0]).parent)
    return ":".join(dict.fromkeys((first, *BASE_PATH)))


def plist_dict(ctx: ServiceContext, label: str = LABEL) -> dict[str, Any]:
    env = {"PATH": _search_path(ctx), "PYTHONUNBUFFERED": "1"}
    if ctx.config is not None:
        env["KWSD_CONFIG"] = str(ctx.config)
    log = str(log_file(ctx.home))
    return {
        "Label": label,
        "ProgramArguments": list(ctx.run_argv),
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": THROTTLE_SECONDS,
        "ExitTimeOut": EXIT_TIMEOUT_SECONDS,
        # Only in the logged-in GUI session, where microphone permission can exist.
        "LimitLoadToSessionType": "Aqua",
        # Audio has a real-time deadline; background jobs get CPU and I/O throttled.
        "ProcessType": "Interactive",
        "WorkingDirectory": str(ctx.home),
        "EnvironmentVariables": env,
        "StandardOutPath": log,
        "StandardErrorPath": log,
        # launchd's default is 256 open files (hard: unlimited); Wyoming clients each
        # hold one.
        "SoftResourceLimits": {"NumberOfFiles": OPEN_FILES_LIMIT},
    }


def render_plist(ctx: ServiceContext, label: str = LABEL) -> str:
    text = plistlib.dumps(plist_dict(ctx, label), fmt=plistlib.FMT_XML, sort_keys=False)
    head, sep, body = text.decode("utf-8").partition("<plist ")
    return f"{head}{_COMMENT}{sep}{body}"


def install_plan(ctx: ServiceContext, label: str = LABEL) -> Plan:
    path = agent_path(ctx.home, label)
    target = service_target(ctx.uid, label)
    return Plan(
        summary=f"install LaunchAgent {label}",
        steps=(
            MakeDir(log_dir(ctx.home)),
            WriteFile(path, render_plist(ctx, label)),
            # Unload an older copy first; "not loaded" is fine.
            Command((LAUNCHCTL, "bootout", target), ok_codes=None),
            # A previous `launchctl disable` would make bootstrap fail.
            Command((LAUNCHCTL, "enable", target)),
            Command(
                (LAUNCHCTL, "bootstrap", domain(ctx.uid), str(path)),
                attempts=5,  # bootout finishes asynchronously; bootstrap may say EIO at first
                hint=f"Check the plist with `plutil -lint {path}` and see `kwsd service logs`.",
            ),
        ),
        notes=(
            f"kwsd runs now and at every login; logs: {log_file(ctx.home)} "
            "(`kwsd service logs -f`).",
            "Microphone: macOS may ask once for permission. If the log warns about digital "
            "silence, allow the program in System Settings > Privacy & Security > "
            "Microphone, then run `kwsd service restart`.",
        ),
    )


def uninstall_plan(ctx: ServiceContext, label: str = LABEL) -> Plan:
    return Plan(
        summary=f"uninstall LaunchAgent {label}",
        steps=(
            Command((LAUNCHCTL, "bootout", service_target(ctx.uid, label)), ok_codes=None),
            RemoveFile(agent_path(ctx.home, label)),
        ),
        notes=(f"Logs are kept in {log_dir(ctx.home)}.",),
    )


def status_plan(ctx: ServiceContext, label: str = LABEL) -> Plan:
    return Plan(
        summary=f"status of LaunchAgent {label}",
        steps=(
            Command(
                (LAUNCHCTL, "print", service_target(ctx.uid, label)),
                hint="kwsd is not loaded; install it with `kwsd service install`.",
            ),
        ),
        notes=(
            f"Plist: {agent_path(ctx.home, label)}; log: {log_file(ctx.home)}. "
            "`last exit code = 78` means no model (see the log) or a plist launchd "
            "could not start.",
        ),
    )


def logs_plan(ctx: ServiceContext, lines: int = 100, follow: bool = False) -> Plan:
    path = log_file(ctx.home)
    argv = ("tail", "-n", str(lines), *(("-F",) if follow else ()), str(path))
    return Plan(
        summary="kwsd log",
        steps=(
            Command(
                argv,
                # tail exits 130/143 when the user stops `-F` with Ctrl-C.
                ok_codes=frozenset({0, 130, 143, -2, -15}),
                hint=f"No log at {path} yet: is kwsd installed (`kwsd service install`)?",
            ),
        ),
    )


def restart_plan(ctx: ServiceContext, label: str = LABEL) -> Plan:
    return Plan(
        summary=f"restart LaunchAgent {label}",
        steps=(
            Command(
                (LAUNCHCTL, "kickstart", "-k", service_target(ctx.uid, label)),
                hint="kwsd is not loaded; install it with `kwsd service install`.",
            ),
        ),
    )
