"""Executing plans: files, real subprocesses, failures, retries, root checks, dry runs."""

from __future__ import annotations

import io
import stat
import sys
from pathlib import Path

import pytest

from kwsd.errors import ExitCode
from kwsd.service.plan import (
    Command,
    MakeDir,
    Plan,
    RemoveFile,
    ServiceError,
    WriteFile,
    execute,
    run_command,
)

PY = sys.executable


def exit_with(code: int) -> tuple[str, ...]:
    return (PY, "-c", f"raise SystemExit({code})")


def test_steps_run_in_order_with_real_processes(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    target = tmp_path / "deep" / "dir" / "unit.service"
    old = tmp_path / "old.plist"
    old.write_text("x")
    plan = Plan(
        steps=(
            MakeDir(tmp_path / "logs"),
            WriteFile(target, "[Service]\n", mode=0o640),
            RemoveFile(old),
            RemoveFile(tmp_path / "never-existed"),
            # Proves the command runs after the file is written.
            Command((PY, "-c", f"open({str(marker)!r}, 'w').write(open({str(target)!r}).read())")),
        ),
        notes=("all done",),
    )
    out = io.StringIO()
    assert execute(plan, out=out) == ExitCode.OK
    assert (tmp_path / "logs").is_dir()
    assert target.read_text() == "[Service]\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert not old.exists()
    assert marker.read_text() == "[Service]\n"
    assert out.getvalue().splitlines()[-1] == "all done"
    assert not list(target.parent.glob(".*.tmp"))


def test_failed_command_raises_with_hint_and_stops(tmp_path: Path) -> None:
    after = tmp_path / "after"
    plan = Plan(
        steps=(
            Command(exit_with(3), hint="Try `kwsd service logs`."),
            WriteFile(after, "never"),
        )
    )
    with pytest.raises(
        ServiceError, match=r"failed with exit status 3\. Try `kwsd service logs`\."
    ):
        execute(plan, out=io.StringIO())
    assert not after.exists()


def test_ok_codes_and_best_effort_commands() -> None:
    plan = Plan(
        steps=(
            Command(exit_with(3), ok_codes=frozenset({0, 3})),
            Command(exit_with(113), ok_codes=None),
        )
    )
    assert execute(plan, out=io.StringIO()) == ExitCode.OK


def test_retries_until_success(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    script = (
        "import pathlib,sys;p=pathlib.Path(sys.argv[1]);"
        "n=int(p.read_text()) if p.exists() else 0;p.write_text(str(n+1));"
        "raise SystemExit(0 if n>=2 else 5)"
    )
    command = Command((PY, "-c", script, str(counter)), attempts=5, retry_delay=0.0)
    execute(Plan(steps=(command,)), out=io.StringIO())
    assert counter.read_text() == "3"


def test_retries_give_up(tmp_path: Path) -> None:
    command = Command(exit_with(5), attempts=2, retry_delay=0.0)
    with pytest.raises(ServiceError, match="exit status 5"):
        execute(Plan(steps=(command,)), out=io.StringIO())


def test_missing_program_is_a_service_error() -> None:
    with pytest.raises(ServiceError, match="launchctl-does-not-exist"):
        run_command(Command(("launchctl-does-not-exist", "print")))


def test_needs_root(tmp_path: Path) -> None:
    target = tmp_path / "unit"
    plan = Plan(steps=(WriteFile(target, "x"),), needs_root=True)
    with pytest.raises(ServiceError, match="sudo"):
        execute(plan, out=io.StringIO(), is_root=lambda: False)
    assert not target.exists()
    execute(plan, out=io.StringIO(), is_root=lambda: True)
    assert target.read_text() == "x"


def test_unwritable_target_is_a_service_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    plan = Plan(steps=(WriteFile(blocker / "unit.service", "x"),))
    with pytest.raises(ServiceError, match="cannot write"):
        execute(plan, out=io.StringIO())


def test_dry_run_prints_everything_and_touches_nothing(tmp_path: Path) -> None:
    target = tmp_path / "unit.service"
    plan = Plan(
        summary="install it",
        steps=(
            MakeDir(tmp_path / "d"),
            WriteFile(target, "[Unit]\nDescription=x\n"),
            Command(("systemctl", "--user", "daemon-reload")),
            Command(("launchctl", "bootout", "gui/1/x"), ok_codes=None),
        ),
        warnings=("warning: careful",),
        notes=("next: pull a model",),
        needs_root=True,  # a dry run needs no root
    )
    out = io.StringIO()
    execute(plan, dry_run=True, out=out, is_root=lambda: False)
    text = out.getvalue()
    assert not target.exists() and not (tmp_path / "d").exists()
    assert "# install it" in text
    assert "# warning: careful" in text
    assert f"# write {target} (mode 0644):\n[Unit]\nDescription=x\n# end of {target}" in text
    assert "systemctl --user daemon-reload\n" in text
    assert "launchctl bootout gui/1/x  # failure ignored" in text
    assert text.rstrip().endswith("# next: pull a model")
