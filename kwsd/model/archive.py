"""Unpacking a downloaded model archive without trusting its member names.

A tar member named `../../.bashrc` or `/etc/cron.d/x`, a symlink pointing outside the
target, or a device node would let whoever controls the download (or a mirror a user
pointed `model.onnx_url` at) write anywhere the daemon can. Model archives contain only
plain files and directories, so everything else is refused before a single byte is
written, and the archive is rejected as a whole.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from kwsd.errors import ModelError

# The real archive unpacks to ~20 MB; anything near this is not a keyword-spotting model.
MAX_UNPACKED_BYTES = 4 << 30


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    name = member.name
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith("\\") or (len(name) > 1 and name[1] == ":"):
        return "has an absolute path"
    if ".." in pure.parts or "\\" in name:
        return "climbs out of the target directory with '..'"
    if member.issym() or member.islnk():
        return f"is a link (to {member.linkname!r}); model archives never contain links"
    if not (member.isfile() or member.isdir()):
        return "is a device, FIFO or other special file"
    return None


def extract_archive(archive: Path, dest: Path) -> list[str]:
    """Unpack `archive` (tar, optionally gz/bz2/xz) into the new directory `dest`.

    Returns the member names. Raises `ModelError` for an unreadable or unsafe archive;
    `dest` may then hold partial output, which the caller's staging directory discards.
    """
    try:
        tar = tarfile.open(archive, mode="r:*")  # noqa: SIM115 (closed by the `with` below)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ModelError(
            f"the downloaded file is not a readable tar archive ({exc}); the URL may point at "
            "a web page or a different file"
        ) from None
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ModelError(
                f"the downloaded archive is damaged ({exc}); download it again"
            ) from None
        total = 0
        for member in members:
            reason = _unsafe_reason(member)
            if reason is not None:
                raise ModelError(
                    f"refusing the downloaded archive: member {member.name!r} {reason} "
                    "(path traversal). Nothing was installed; check the download URL"
                )
            total += max(member.size, 0)
        if total > MAX_UNPACKED_BYTES:
            raise ModelError(
                f"refusing the downloaded archive: it unpacks to {total} bytes, far more than "
                "a keyword-spotting model; check the download URL"
            )
        dest.mkdir(parents=True, exist_ok=False)
        try:
            # The "data" filter (Python >= 3.11.4) re-checks paths and strips permission
            # bits such as setuid; the checks above already refused anything it would.
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python 3.11.0-3.11.3
                tar.extractall(dest, members=members)  # members checked above
        except (tarfile.TarError, EOFError) as exc:
            raise ModelError(
                f"the downloaded archive is damaged ({exc}); download it again"
            ) from None
        except OSError as exc:
            raise ModelError(
                f"could not unpack the model into {dest}: {exc.strerror or exc}"
            ) from None
    return [m.name for m in members]


def locate_model_dir(unpacked: Path, archive_dir: str | None) -> Path:
    """The directory inside an unpacked archive that holds the model files.

    The manifest names it (`archive_dir`); an archive from another URL may name it
    differently, so a single top-level directory, or the top level itself, is accepted too.
    """
    if archive_dir is not None and (unpacked / archive_dir).is_dir():
        return unpacked / archive_dir
    entries = [p for p in unpacked.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return unpacked
