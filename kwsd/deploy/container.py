"""The container image's entrypoint: get ready for a kwsd command, then become it.

`kwsd container start [COMMAND ARGS...]` (the image's ENTRYPOINT; COMMAND defaults to
`run`) does what a container needs before kwsd starts, each step logged:

1. the config: /config/config.toml when it exists and nothing else was chosen;
2. the volumes: /data must be writable by the container's user, or kwsd says how to fix it;
3. the model: for `run` and `wyoming`, the same resolution the daemon does
   (`kwsd.model.resolve`): model.dir, else KWSD_ASSETS, else the model installed in
   /data, else the sha256-pinned download into /data (first start only);
4. the microphone: with $PULSE_SERVER set (a PulseAudio or PipeWire socket, or a Home
   Assistant add-on with `audio: true`) and audio.source = "mic", audio comes from
   `parec` through kwsd's stdin source, since the image's PortAudio speaks ALSA only;
5. the health targets for the HEALTHCHECK (`kwsd.deploy.probe`).

Then it replaces itself with kwsd (exec), so signals reach kwsd directly and the
container stops cleanly. Anything that is not a kwsd command (`bash`, `sh -c ...`) is
executed as given, so `podman run -it IMAGE bash` still works.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from kwsd.config import Settings
from kwsd.deploy.probe import HealthState, Target, write_state
from kwsd.errors import ConfigError, KwsdError
from kwsd.model.locations import default_models_dir

CONFIG_FILE: Final = Path("/config/config.toml")
DEFAULT_COMMAND: Final = ("run",)
# Every `kwsd` sub-command; the entrypoint prepares these and runs anything else as is.
KWSD_COMMANDS: Final = frozenset(
    {"run", "detect", "decode-frames", "keywords", "models", "service", "config", "devices",
     "eval", "wyoming", "container"}
)  # fmt: skip
# Commands that run a service (and so load a model, serve health and may need a mic).
SERVICE_COMMANDS: Final = frozenset({"run", "wyoming"})
PULSE_RETRY_SECONDS: Final = 2


@dataclass(frozen=True)
class StartPlan:
    """What the entrypoint will execute, decided from the arguments and environment."""

    argv: tuple[str, ...]  # the command line, without the program
    is_kwsd: bool  # False: run argv as given (a shell, a one-off tool)
    env: Mapping[str, str] = field(default_factory=dict)  # variables to add


def plan_start(
    args: Sequence[str], environ: Mapping[str, str], config_file: Path = CONFIG_FILE
) -> StartPlan:
    """Normalise the container's command: `kwsd run`, `run` and nothing all mean kwsd run."""
    argv = list(args)
    if argv and argv[0] == "kwsd":
        argv = argv[1:]
    if not argv:
        argv = list(DEFAULT_COMMAND)
    if argv[0] not in KWSD_COMMANDS and not argv[0].startswith("-"):
        return StartPlan(tuple(argv), is_kwsd=False)
    env: dict[str, str] = {}
    if "KWSD_CONFIG" not in environ and "--config" not in argv and config_file.is_file():
        env["KWSD_CONFIG"] = str(config_file)
    return StartPlan(tuple(argv), is_kwsd=True, env=env)


def command_settings(argv: Sequence[str]) -> Settings:
    """The effective settings of a `run` or `wyoming` command line, as kwsd will see them."""
    from kwsd.cli import build_parser
    from kwsd.cli import run as run_cli
    from kwsd.cli.common import settings_for

    ns: argparse.Namespace = build_parser().parse_args(list(argv))
    if argv[0] == "run":
        return run_cli.load(ns)
    return settings_for(ns, wyoming__uri=ns.uri, search__refractory_seconds=ns.refractory)


def ensure_writable(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(_volume_hint(path, what, exc.strerror or str(exc))) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(_volume_hint(path, what, "permission denied"))


def _volume_hint(path: Path, what: str, reason: str) -> str:
    uid, gid = os.getuid(), os.getgid()
    return (
        f"{path} ({what}) is not writable by the container's user {uid}:{gid}: {reason}. "
        f"Use a named volume (-v kwsd-data:/data), or give the host directory to that user: "
        f"`chown {uid}:{gid} DIR` (rootless podman: `podman unshare chown {uid}:{gid} DIR`)"
    )


def ensure_model(settings: Settings) -> None:
    """Load the model as the daemon will: this downloads it on the first start.

    Loading (not only locating) it also proves the files open before kwsd replaces this
    process; the memory is released by the exec.
    """
    from kwsd.spotter import KeywordSpotter

    KeywordSpotter.from_config(settings.model, settings.search, assets=settings.assets)


def local_address(uri_host: str) -> str:
    """Where a probe inside the container reaches a server bound to `uri_host`."""
    if uri_host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if uri_host in ("::", "[::]"):
        return "[::1]"
    return uri_host


def wyoming_target(uri: str) -> Target:
    if uri.startswith("unix://"):
        return Target("wyoming", uri)
    host, _, port = uri.removeprefix("tcp://").rpartition(":")
    return Target("wyoming", f"tcp://{local_address(host)}:{port}")


def health_targets(command: str, settings: Settings) -> tuple[Target, ...]:
    targets: list[Target] = []
    if command == "run" and settings.health.enabled:
        host = local_address(settings.health.host)
        targets.append(Target("http", f"http://{host}:{settings.health.port}/healthz"))
    if command == "wyoming" or settings.wyoming.enabled:
        targets.append(wyoming_target(settings.wyoming.uri))
    return tuple(targets)


def pulse_capture(settings: Settings, environ: Mapping[str, str]) -> list[str] | None:
    """The `parec` command feeding kwsd's stdin, when the microphone is a PulseAudio socket."""
    if settings.audio.source != "mic" or not environ.get("PULSE_SERVER"):
        return None
    rate = settings.audio.sample_rate or 16000
    command = [
        "parec", "--raw", "--format=s16le", f"--rate={rate}", "--channels=1",
        "--latency-msec=100", "--client-name=kwsd",
    ]  # fmt: skip
    if isinstance(settings.audio.device, str):
        command.append(f"--device={settings.audio.device}")
    return command


def _kwsd_program() -> list[str]:
    script = Path(sys.executable).with_name("kwsd")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kwsd"]


def _say(message: str) -> None:
    print(f"kwsd container: {message}", file=sys.stderr, flush=True)


def _spawn_capture(command: list[str]) -> int:
    """Start `command` in a retry loop writing to a pipe; return the pipe's read end.

    parec exits when the sound server restarts; the loop brings it back while kwsd keeps
    running (it only sees a short gap on stdin).
    """
    loop = (
        'while :; do "$@"; '
        f'echo "kwsd container: audio capture ($1) stopped with status $?; '
        f'retrying in {PULSE_RETRY_SECONDS} s" >&2; sleep {PULSE_RETRY_SECONDS}; done'
    )
    read_end, write_end = os.pipe()
    subprocess.Popen(["sh", "-c", loop, "sh", *command], stdout=write_end, stdin=subprocess.DEVNULL)
    os.close(write_end)
    return read_end


def spawn_detached(argv: Sequence[str]) -> None:
    """Run argv in the background, orphaned so the container's init reaps it."""
    subprocess.run(["sh", "-c", '"$@" </dev/null &', "sh", *argv], check=True)


def start(
    args: Sequence[str], *, announce_wyoming: bool = False, model_checked: bool = False
) -> int:
    """Prepare and exec the command; returns only when it cannot start (an exit code).

    `model_checked`: the caller (the add-on) has just loaded the model with these settings.
    """
    plan = plan_start(args, os.environ)
    if not plan.is_kwsd:
        os.execvp(plan.argv[0], list(plan.argv))
    os.environ.update(plan.env)
    if "KWSD_CONFIG" in plan.env:
        _say(f"using {plan.env['KWSD_CONFIG']}")
    argv = list(plan.argv)
    capture: list[str] | None = None
    if argv[0] in SERVICE_COMMANDS:
        try:
            settings = command_settings(argv)
            ensure_writable(Path(settings.data_dir), "data_dir, kwsd's state")
            if settings.assets is None and settings.model.dir is None:
                ensure_writable(default_models_dir(), "the models directory")
            if not model_checked:
                ensure_model(settings)
        except KwsdError as exc:
            print(f"kwsd: error: {exc}", file=sys.stderr)
            return int(exc.exit_code)
        if argv[0] == "run":
            capture = pulse_capture(settings, os.environ)
            if capture is not None:
                _say(
                    f"PULSE_SERVER={os.environ['PULSE_SERVER']}: the microphone is read with "
                    f"`{shlex.join(capture)}` through kwsd's stdin source"
                )
                argv += ["--source", "stdin"]
        write_state(HealthState(health_targets(argv[0], settings)))
        if announce_wyoming and (argv[0] == "wyoming" or settings.wyoming.enabled):
            uri = settings.wyoming.uri
            spawn_detached([sys.executable, "-m", "kwsd", "container", "announce", "--uri", uri])
    if capture is not None:
        os.dup2(_spawn_capture(capture), 0)
    program = _kwsd_program()
    os.execv(program[0], [*program, *argv])
