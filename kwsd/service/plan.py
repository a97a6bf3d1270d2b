"""Install/uninstall/status/logs as data: a list of steps, then one place that runs them.

Every `kwsd service` action is first built as a `Plan` by pure functions (see
`launchd.py` and `systemd.py`), so tests can check the exact files and `launchctl` /
`systemctl` argument lists on any platform without touching the service manager, and
`--dry-run` can show users precisely what would happen. `execute` is the only code that
writes files or starts processes.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from kwsd.errors import ExitCode, KwsdError


class ServiceError(KwsdError):
    """The service could not be installed, removed or queried; the message says why."""

    exit_code = ExitCode.CONFIG


@dataclass(frozen=True)
class Command:
    """One external command. `ok_codes=None` accepts any exit status (best effort)."""

    argv: tuple[str, ...]
    ok_codes: frozenset[int] | None = frozenset({0})
    hint: str = ""  # appended to the error when the command fails
    attempts: int = 1  # launchd may need a moment after bootout before bootstrap works
    retry_delay: float = 1.0

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class WriteFile:
    path: Path
    content: str
    mode: int = 0o644


@dataclass(frozen=True)
class RemoveFile:
    path: Path


@dataclass(frozen=True)
class MakeDir:
    path: Path


Step = Command | WriteFile | RemoveFile | MakeDir


@dataclass(frozen=True)
class Plan:
    """What one `kwsd service` action does, in order, plus advice printed afterwards."""

    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()  # printed before anything runs
    needs_root: bool = False
    summary: str = ""

    @property
    def commands(self) -> list[tuple[str, ...]]:
        return [step.argv for step in self.steps if isinstance(step, Command)]

    @property
    def files(self) -> dict[Path, str]:
        return {step.path: step.content for step in self.steps if isinstance(step, WriteFile)}


Runner = Callable[[Command], int]


def run_command(command: Command) -> int:
    """Run with the terminal attached, so `status` and `logs -f` stream to the user."""
    try:
        return subprocess.run(command.argv, check=False).returncode
    except FileNotFoundError as exc:
        raise ServiceError(
            f"`{command.argv[0]}` was not found on PATH; is this system using "
            "the service manager kwsd expected?"
        ) from exc


def describe(plan: Plan, out: TextIO) -> None:
    """Print a plan without executing it (`--dry-run`)."""
    if plan.summary:
        print(f"# {plan.summary}", file=out)
    for warning in plan.warnings:
        print(f"# {warning}", file=out)
    for step in plan.steps:
        if isinstance(step, WriteFile):
            print(f"# write {step.path} (mode {step.mode:04o}):", file=out)
            print(step.content.rstrip("\n"), file=out)
            print(f"# end of {step.path}", file=out)
        elif isinstance(step, MakeDir):
            print(f"mkdir -p {shlex.quote(str(step.path))}", file=out)
        elif isinstance(step, RemoveFile):
            print(f"rm -f {shlex.quote(str(step.path))}", file=out)
        else:
            suffix = "  # failure ignored" if step.ok_codes is None else ""
            print(f"{step}{suffix}", file=out)
    for note in plan.notes:
        print(f"# {note}", file=out)


def _run_with_retries(command: Command, run: Runner) -> None:
    code = 0
    for attempt in range(max(1, command.attempts)):
        if attempt:
            time.sleep(command.retry_delay)
        code = run(command)
        if command.ok_codes is None or code in command.ok_codes:
            return
    hint = f" {command.hint}" if command.hint else ""
    raise ServiceError(f"`{command}` failed with exit status {code}.{hint}")


def _write(step: WriteFile) -> None:
    try:
        step.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = step.path.with_name(f".{step.path.name}.tmp")
        tmp.write_text(step.content, encoding="utf-8")
        tmp.chmod(step.mode)
        os.replace(tmp, step.path)  # atomic: a manager never reads a half-written unit
    except OSError as exc:
        raise ServiceError(f"cannot write {step.path}: {exc.strerror or exc}") from exc


def execute(
    plan: Plan,
    *,
    dry_run: bool = False,
    out: TextIO | None = None,
    run: Runner = run_command,
    is_root: Callable[[], bool] | None = None,
) -> int:
    """Carry out (or with `dry_run`, print) a plan; raises `ServiceError` on failure."""
    stream = sys.stdout if out is None else out
    if dry_run:
        describe(plan, stream)
        return int(ExitCode.OK)
    root = is_root() if is_root is not None else (os.geteuid() == 0)
    if plan.needs_root and not root:
        raise ServiceError(
            "this writes a system-wide service and needs root: run it with sudo "
            f"(`sudo {shlex.quote(sys.argv[0])} service ... --system`), "
            "or drop --system to install a per-user service"
        )
    for warning in plan.warnings:
        print(warning, file=stream)
    for step in plan.steps:
        if isinstance(step, WriteFile):
            _write(step)
            print(f"wrote {step.path}", file=stream)
        elif isinstance(step, MakeDir):
            try:
                step.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ServiceError(f"cannot create {step.path}: {exc.strerror or exc}") from exc
        elif isinstance(step, RemoveFile):
            try:
                step.path.unlink(missing_ok=True)
            except OSError as exc:
                raise ServiceError(f"cannot remove {step.path}: {exc.strerror or exc}") from exc
            print(f"removed {step.path}", file=stream)
        else:
            stream.flush()
            _run_with_retries(step, run)
    for note in plan.notes:
        print(note, file=stream)
    return int(ExitCode.OK)
