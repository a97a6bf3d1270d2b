"""Linux: systemd units (per-user by default, system-wide with `--system`).

Both units are `Type=notify`: kwsd sends READY=1 only once the model is loaded and the
first audio chunk went through the pipeline, and WATCHDOG=1 only while chunks keep
flowing (see `kwsd.service.watchdog`), so `WatchdogSec=` restarts a stuck pipeline,
not just a dead process.

Exit codes that need a human to act (bad usage, config, model or keywords, and 78 = no
model installed) are listed in `RestartPreventExitStatus=`: restarting cannot fix them.
Everything else (crash, audio device gone, watchdog) is retried every `RestartSec=`
without a start limit, because microphones and sound servers come back.

The system unit runs as a `DynamicUser=`: no account to create or clean up, a fresh
UID with no access to anyone's files, state in `StateDirectory=` (/var/lib/kwsd, which
systemd chowns to that UID), and ALSA access through `SupplementaryGroups=audio`. A
system service cannot reach a desktop user's PipeWire/PulseAudio session; on desktops
use the user unit.
"""

from __future__ import annotations

from pathlib import Path

from kwsd.errors import ExitCode
from kwsd.model.locations import SYSTEM
from kwsd.service.context import OPEN_FILES_LIMIT, ServiceContext
from kwsd.service.plan import Command, MakeDir, Plan, RemoveFile, WriteFile

UNIT_NAME = "kwsd.service"
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
WATCHDOG_SECONDS = 30
START_TIMEOUT_SECONDS = 120  # model load plus the first audio chunk
RESTART_SECONDS = 10
NO_RESTART_EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode.USAGE,
    ExitCode.CONFIG,
    ExitCode.MODEL,
    ExitCode.KEYWORDS,
    ExitCode.NOT_CONFIGURED,
)

_SPECIAL = set(" \t\n\"'\\;")


def escape_specifiers(text: str) -> str:
    """systemd expands `%x` specifiers in most settings; keep paths literal."""
    return text.replace("%", "%%")


def quote_value(text: str) -> str:
    """A double-quoted systemd word with C-style escapes."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_exec_arg(arg: str) -> str:
    """One `ExecStart=` argument: `%` and `$` are expanded there, so double them."""
    text = escape_specifiers(arg).replace("$", "$$")
    if not text or any(ch in _SPECIAL for ch in text):
        return quote_value(text)
    return text


def environment_line(name: str, value: str) -> str:
    return f"Environment={quote_value(escape_specifiers(f'{name}={value}'))}"


def _path_word(path: Path, optional: bool = False) -> str:
    word = escape_specifiers(("-" if optional else "") + str(path))
    return quote_value(word) if any(ch in _SPECIAL for ch in word) else word


def _exec_start(ctx: ServiceContext) -> str:
    return "ExecStart=" + " ".join(quote_exec_arg(arg) for arg in ctx.run_argv)


def _service_common(ctx: ServiceContext) -> list[str]:
    no_restart = " ".join(str(int(code)) for code in NO_RESTART_EXIT_CODES)
    lines = [
        "Type=notify",
        "NotifyAccess=main",
        _exec_start(ctx),
        "# `systemctl reload kwsd`: re-read the config and keywords without an audio gap.",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ]
    if ctx.config is not None:
        lines.append(environment_line("KWSD_CONFIG", str(ctx.config)))
    lines += [
        environment_line("PYTHONUNBUFFERED", "1"),
        "# READY=1 comes after the model is loaded and the first audio chunk is processed.",
        f"TimeoutStartSec={START_TIMEOUT_SECONDS}",
        "# WATCHDOG=1 is sent only while audio keeps flowing: a stuck pipeline is restarted.",
        f"WatchdogSec={WATCHDOG_SECONDS}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SECONDS}",
        "# Exits that need you to act; 78 = no model installed (run `kwsd models pull`).",
        f"RestartPreventExitStatus={no_restart}",
        "TimeoutStopSec=20",
        "# Open files: Wyoming clients (wyoming.max_connections) plus MQTT, health, files.",
        f"LimitNOFILE={OPEN_FILES_LIMIT}",
        "SyslogIdentifier=kwsd",
    ]
    return lines


_HEADER = (
    "# kwsd keyword-spotting daemon: {kind} unit, written by `kwsd service install{flag}`.\n"
    "# Re-run that command to regenerate it; put local changes in an override\n"
    "# (`systemctl {scope}edit kwsd`), which survives reinstalling.\n"
)


def render_user_unit(ctx: ServiceContext, *, sandbox: bool = True) -> str:
    """The per-user unit for ~/.config/systemd/user/kwsd.service."""
    service = _service_common(ctx)
    service.append("NoNewPrivileges=yes")
    if sandbox:
        writable = " ".join(_path_word(p, optional=True) for p in (ctx.data_dir, ctx.cache_dir))
        service += [
            "# Sandbox (needs unprivileged user namespaces; if the unit fails with",
            "# 226/NAMESPACE, reinstall with `kwsd service install --no-sandbox`).",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "PrivateTmp=yes",
            f"ReadWritePaths={writable}",
        ]
    unit = [
        _HEADER.format(kind="user", flag="", scope="--user "),
        "[Unit]",
        "Description=kwsd keyword-spotting daemon",
        "After=pipewire.service pipewire-pulse.service pulseaudio.service",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        *service,
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    return "\n".join(unit) + "\n"


def render_system_unit(ctx: ServiceContext) -> str:
    """The system-wide unit for /etc/systemd/system/kwsd.service (DynamicUser)."""
    service = _service_common(ctx)
    service += [
        "# kwsd finds its data, cache and config through the XDG variables:",
        f"# {SYSTEM.data}, {SYSTEM.cache} (models: {SYSTEM.models}), {SYSTEM.config}.",
        environment_line("XDG_DATA_HOME", str(SYSTEM.xdg_data_home)),
        environment_line("XDG_CACHE_HOME", str(SYSTEM.xdg_cache_home)),
        environment_line("XDG_CONFIG_HOME", str(SYSTEM.xdg_config_home)),
        "DynamicUser=yes",
        "SupplementaryGroups=audio",
        "StateDirectory=kwsd",
        "CacheDirectory=kwsd",
        "ConfigurationDirectory=kwsd",
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=read-only",
        "PrivateTmp=yes",
        "# Sound cards only; PrivateDevices= would hide /dev/snd.",
        "DevicePolicy=closed",
        "DeviceAllow=char-alsa rw",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictNamespaces=yes",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallArchitectures=native",
        "CapabilityBoundingSet=",
        "# No MemoryDenyWriteExecute=: the audio callback is a libffi closure.",
    ]
    unit = [
        _HEADER.format(kind="system", flag=" --system", scope=""),
        "[Unit]",
        "Description=kwsd keyword-spotting daemon (system-wide)",
        "Wants=network-online.target",
        "After=network-online.target sound.target",
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        *service,
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(unit) + "\n"


def unit_path(ctx: ServiceContext) -> Path:
    if ctx.system:
        return SYSTEM_UNIT_DIR / UNIT_NAME
    return ctx.home / ".config" / "systemd" / "user" / UNIT_NAME


def _systemctl(ctx: ServiceContext, *args: str) -> tuple[str, ...]:
    return ("systemctl", *(() if ctx.system else ("--user",)), *args)


def _journalctl(ctx: ServiceContext, *args: str) -> tuple[str, ...]:
    return ("journalctl", *(() if ctx.system else ("--user",)), *args)


def _no_bus_hint(ctx: ServiceContext) -> str:
    if ctx.system:
        return ""
    return (
        "If it says 'Failed to connect to bus', there is no systemd user session here "
        "(e.g. su or a container): log in directly or over SSH, or use --system."
    )


def install_plan(ctx: ServiceContext, *, sandbox: bool = True) -> Plan:
    path = unit_path(ctx)
    text = render_system_unit(ctx) if ctx.system else render_user_unit(ctx, sandbox=sandbox)
    steps: list[MakeDir | WriteFile | Command] = []
    if not ctx.system:
        # ReadWritePaths= needs these to exist, or the sandbox leaves them read-only.
        steps += [MakeDir(ctx.data_dir), MakeDir(ctx.cache_dir)]
    steps += [
        WriteFile(path, text),
        Command(_systemctl(ctx, "daemon-reload"), hint=_no_bus_hint(ctx)),
        Command(_systemctl(ctx, "enable", UNIT_NAME)),
        # restart = start, or apply a changed unit to a running service.
        Command(
            _systemctl(ctx, "restart", UNIT_NAME),
            hint="The unit is installed and enabled but did not start; see "
            "`kwsd service logs`. Exit status 78 means no model: run "
            f"`kwsd models pull{' --system' if ctx.system else ''}`, then "
            f"`kwsd service restart{' --system' if ctx.system else ''}`.",
        ),
    ]
    flag = " --system" if ctx.system else ""
    notes = [f"kwsd is running; see `kwsd service status{flag}` and `kwsd service logs -f{flag}`."]
    if ctx.system:
        notes.append(
            f"The service reads models from {SYSTEM.models} (`sudo kwsd models pull --system`), "
            f"keeps its state in {SYSTEM.data} and reads {SYSTEM.config}/config.toml."
        )
    else:
        notes.append(
            "It starts when you log in. To start it at boot without logging in: "
            "`loginctl enable-linger $USER`."
        )
    return Plan(
        summary=f"install {path}",
        steps=tuple(steps),
        notes=tuple(notes),
        needs_root=ctx.system,
    )


def uninstall_plan(ctx: ServiceContext) -> Plan:
    path = unit_path(ctx)
    return Plan(
        summary=f"uninstall {path}",
        steps=(
            Command(_systemctl(ctx, "disable", "--now", UNIT_NAME), ok_codes=None),
            RemoveFile(path),
            Command(_systemctl(ctx, "daemon-reload"), hint=_no_bus_hint(ctx)),
            Command(_systemctl(ctx, "reset-failed", UNIT_NAME), ok_codes=None),
        ),
        notes=(f"Models and state in {ctx.data_dir} are kept.",),
        needs_root=ctx.system,
    )


def status_plan(ctx: ServiceContext) -> Plan:
    return Plan(
        summary=f"status of {UNIT_NAME}",
        steps=(
            Command(
                _systemctl(ctx, "status", UNIT_NAME, "--no-pager", "--lines=20"),
                # 3 = installed but not running: still a useful answer.
                ok_codes=frozenset({0, 3}),
                hint="kwsd is not installed here; run `kwsd service install`. " + _no_bus_hint(ctx),
            ),
        ),
    )


def logs_plan(ctx: ServiceContext, lines: int = 100, follow: bool = False) -> Plan:
    argv = _journalctl(ctx, "-u", UNIT_NAME, "-n", str(lines), "--no-pager")
    if follow:
        argv = (*argv, "-f")
    return Plan(
        summary=f"journal of {UNIT_NAME}",
        steps=(Command(argv, ok_codes=frozenset({0, 130, 143, -2, -15})),),
    )


def restart_plan(ctx: ServiceContext) -> Plan:
    return Plan(
        summary=f"restart {UNIT_NAME}",
        steps=(
            Command(
                _systemctl(ctx, "restart", UNIT_NAME),
                hint="See `kwsd service logs`; is kwsd installed (`kwsd service install`)?",
            ),
        ),
        needs_root=ctx.system,
    )
