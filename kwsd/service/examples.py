"""The example unit files in deploy/, rendered from the same code `kwsd service install` uses.

The files in deploy/ are for people who install units by hand (or package kwsd); they
are generated, never edited, so they cannot drift from what the installer writes. A test
compares them with `render_examples()`. Regenerate with:

    python -m kwsd.service.examples deploy
"""

from __future__ import annotations

import sys
from pathlib import Path

from kwsd.model.locations import SYSTEM
from kwsd.service import launchd, systemd
from kwsd.service.context import SYSTEM_CONFIG, ServiceContext

_HOME = "/HOME-PLACEHOLDER"  # no '%', so unit escaping leaves it alone

_LAUNCHD_NOTE = """<!--
  Example: replace /Users/you with your home directory and the program path with
  the output of `command -v kwsd`, then copy to ~/Library/LaunchAgents/ and run
  launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/org.kwsd.daemon.plist
  (or simply run `kwsd service install`, which does all of this).
-->
"""

_USER_NOTE = (
    "# Example (what `kwsd service install` writes, with %h for your home directory):\n"
    "# copy to ~/.config/systemd/user/kwsd.service, point ExecStart= at `command -v kwsd`,\n"
    "# then: systemctl --user daemon-reload && systemctl --user enable --now kwsd.service\n"
)

_SYSTEM_NOTE = (
    "# Example: copy to /etc/systemd/system/kwsd.service with kwsd installed in\n"
    "# /opt/kwsd (python3 -m venv /opt/kwsd && /opt/kwsd/bin/pip install kwsd), then:\n"
    "# systemctl daemon-reload && systemctl enable --now kwsd.service\n"
)


def render_examples() -> dict[str, str]:
    """Relative path under deploy/ → file content."""
    user = ServiceContext(
        program=(f"{_HOME}/.local/bin/kwsd",),
        config=None,
        home=Path(_HOME),
        uid=501,
        data_dir=Path(_HOME) / ".local" / "share" / "kwsd",
        cache_dir=Path(_HOME) / ".cache" / "kwsd",
    )
    system = ServiceContext(
        program=("/opt/kwsd/bin/kwsd",),
        config=SYSTEM_CONFIG,
        home=Path("/root"),
        uid=0,
        data_dir=SYSTEM.data,
        cache_dir=SYSTEM.cache,
        system=True,
    )
    mac = ServiceContext(
        program=("/Users/you/.local/bin/kwsd",),
        config=Path("/Users/you/Library/Application Support/kwsd/config.toml"),
        home=Path("/Users/you"),
        uid=501,
        data_dir=Path("/Users/you/Library/Application Support/kwsd"),
        cache_dir=Path("/Users/you/Library/Caches/kwsd"),
    )
    plist = launchd.render_plist(mac).replace("<plist ", _LAUNCHD_NOTE + "<plist ", 1)
    return {
        f"launchd/{launchd.LABEL}.plist": plist,
        "systemd/kwsd.service": _USER_NOTE + systemd.render_user_unit(user).replace(_HOME, "%h"),
        "systemd/kwsd-system.service": _SYSTEM_NOTE + systemd.render_system_unit(system),
    }


def write_examples(dest: Path) -> list[Path]:
    written = []
    for relative, content in render_examples().items():
        path = dest / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover
    for written_path in write_examples(Path(sys.argv[1] if len(sys.argv) > 1 else "deploy")):
        print(written_path)
