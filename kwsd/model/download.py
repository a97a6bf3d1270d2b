"""Downloading and installing a model from the manifest's upstream source.

The sherpa-onnx release is a .tar.bz2 streamed with urllib (so HTTP(S)_PROXY and
NO_PROXY work as usual, and `file://` URLs or plain paths let an offline machine
install an archive copied from elsewhere, still checked against the pins). The CoreML
bundle comes from Hugging Face through huggingface_hub, imported only when needed
because it is heavy and useless on Linux. Both end the same way: pins checked, the
bundle opened, then an atomic swap into the models directory (`kwsd.model.install`).

Download URLs come from the manifest and can be overridden per call; the settings
`model.onnx_url` / `model.coreml_repo` (env `KWSD_MODEL__ONNX_URL`,
`KWSD_MODEL__COREML_REPO`) feed those overrides. `HF_ENDPOINT` selects a Hugging Face
mirror, as for every huggingface_hub user.
"""

from __future__ import annotations

import http.client
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import structlog
from tqdm import tqdm

from kwsd import __version__
from kwsd.errors import ModelError, NetworkError
from kwsd.model.archive import extract_archive, locate_model_dir
from kwsd.model.bundle import ModelBundle, Precision, open_bundle
from kwsd.model.install import staging_dir, swap_into_place
from kwsd.model.manifest import ModelSource
from kwsd.model.verify import check_pins, require_pins

DEFAULT_TIMEOUT = 30.0  # seconds without any byte before a download is called dead
_CHUNK = 1 << 16
_ARCHIVE_SUFFIXES = (".tar.bz2", ".tbz2", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar")
OFFLINE_HINT = (
    "download the model on a machine with internet and pass --model-dir, or set KWSD_ASSETS "
    "(an archive copied here installs with `kwsd models pull --url PATH`)"
)
COREML_OFFLINE_HINT = (
    "download the bundle on a machine with internet, copy its directory here and pass "
    "--model-dir, or use the ONNX model (`--backend onnx`, which also installs offline "
    "with `kwsd models pull --url PATH`)"
)

log = structlog.get_logger(__name__)


def show_progress(progress: bool) -> bool:
    """A bar when asked for, or when a person is watching stderr (never in a service log)."""
    return progress or bool(getattr(sys.stderr, "isatty", lambda: False)())


def _host(url: str) -> str:
    return urlparse(url).hostname or url


def _normalise_url(url: str) -> str:
    """http(s) and file URLs as given; a plain local path becomes a file URL."""
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https", "file"):
        return url
    if scheme == "" or (len(scheme) == 1 and sys.platform == "win32"):  # C:\... on Windows
        path = Path(url).expanduser().resolve()
        if not path.is_file():
            raise ModelError(f"model archive {path} does not exist")
        return path.as_uri()
    raise ModelError(f"unsupported download URL {url!r}: use http://, https://, file:// or a path")


def fetch(url: str, dest: Path, *, progress: bool = False, timeout: float = DEFAULT_TIMEOUT) -> int:
    """Stream `url` into the file `dest`; return the byte count. Raise NetworkError/ModelError."""
    url = _normalise_url(url)
    host = _host(url)
    request = urllib.request.Request(url, headers={"User-Agent": f"kwsd/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if 400 <= exc.code < 500:
            # Retrying will not help: the URL is wrong or the file was removed upstream.
            raise ModelError(
                f"download failed: {url} answered HTTP {exc.code} {exc.reason}; check the URL "
                "(--url / model.onnx_url), or " + OFFLINE_HINT
            ) from None
        raise NetworkError(
            f"download failed: {host} answered HTTP {exc.code} {exc.reason}; try again later, "
            "or " + OFFLINE_HINT
        ) from None
    except urllib.error.URLError as exc:
        if url.startswith("file:"):
            raise ModelError(f"cannot read {url}: {exc.reason}") from None
        raise NetworkError(f"could not reach {host}: {exc.reason}; {OFFLINE_HINT}") from None
    except (TimeoutError, OSError, http.client.HTTPException) as exc:
        raise NetworkError(f"could not reach {host}: {exc}; {OFFLINE_HINT}") from None

    written = 0
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=Path(urlparse(url).path).name or "model",
            file=sys.stderr,
            disable=not show_progress(progress),
            leave=False,
        )
        log.info("downloading model", url=url, bytes=total)
        try:
            with bar, dest.open("wb") as out:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
        except (TimeoutError, http.client.HTTPException, ConnectionError) as exc:
            raise NetworkError(
                f"the download from {host} broke off after {written} bytes ({exc}); try again, "
                "or " + OFFLINE_HINT
            ) from None
        except OSError as exc:
            raise ModelError(
                f"cannot write the download to {dest}: {exc.strerror or exc}"
            ) from None
    if total is not None and written != total:
        raise NetworkError(
            f"the download from {host} ended after {written} of {total} bytes; try again, "
            "or " + OFFLINE_HINT
        )
    return written


def _archive_name(url: str) -> str:
    name = Path(urlparse(url).path).name.lower()
    suffix = next((s for s in _ARCHIVE_SUFFIXES if name.endswith(s)), ".tar.bz2")
    return f"download{suffix}"


def install_archive(
    source: ModelSource,
    models_dir: Path,
    *,
    precision: Precision = "int8",
    progress: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> ModelBundle:
    """Download `source.url`, check pins and files, and install it as `models_dir/<id>`."""
    if source.url is None:
        raise ModelError(f"{source.id} is not distributed as an archive")
    target = models_dir / source.install_dir
    with staging_dir(models_dir) as staging:
        archive = staging / _archive_name(source.url)
        size = fetch(source.url, archive, progress=progress, timeout=timeout)
        unpacked = staging / "unpacked"
        extract_archive(archive, unpacked)
        archive.unlink()
        model_root = locate_model_dir(unpacked, source.archive_dir)
        require_pins(model_root, source, f"the archive from {source.url}")
        open_bundle(model_root, precision)  # refuse an archive the daemon could not run
        swap_into_place(model_root, target, staging)
    log.info("model installed", model=source.id, path=str(target), download_bytes=size)
    return open_bundle(target, precision)


def _hf_error(exc: Exception, source: ModelSource, endpoint: str | None) -> Exception:
    from huggingface_hub import errors as hf_errors

    host = _host(endpoint) if endpoint else "huggingface.co"
    if isinstance(
        exc,
        hf_errors.RepositoryNotFoundError
        | hf_errors.RevisionNotFoundError
        | hf_errors.GatedRepoError,
    ):
        return ModelError(
            f"Hugging Face has no accessible repository {source.repo!r} at revision "
            f"{source.revision or 'main'} ({type(exc).__name__}); check model.coreml_repo"
        )
    text = str(exc).strip()
    first_line = text.splitlines()[0].removeprefix("Got: ") if text else type(exc).__name__
    return NetworkError(f"could not reach {host}: {first_line}; {COREML_OFFLINE_HINT}")


def install_huggingface(
    source: ModelSource,
    models_dir: Path,
    *,
    progress: bool = False,
    endpoint: str | None = None,
) -> ModelBundle:
    """Download the Hugging Face snapshot of `source.repo` and install it as `models_dir/<id>`.

    `endpoint` overrides the Hub URL (default: $HF_ENDPOINT or huggingface.co).
    """
    if source.repo is None:
        raise ModelError(f"{source.id} is not distributed through Hugging Face")
    # Lazy: heavy, and only macOS installs need it.
    import huggingface_hub
    from huggingface_hub.utils.tqdm import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    target = models_dir / source.install_dir
    bars_were_disabled = are_progress_bars_disabled()
    with staging_dir(models_dir) as staging:
        local = staging / "snapshot"
        log.info("downloading model", repo=source.repo, revision=source.revision)
        if not show_progress(progress):
            disable_progress_bars()
        try:
            huggingface_hub.snapshot_download(
                repo_id=source.repo,
                revision=source.revision,
                local_dir=local,
                endpoint=endpoint,
                etag_timeout=DEFAULT_TIMEOUT,
            )
        except Exception as exc:  # the hub's error types vary by version
            raise _hf_error(exc, source, endpoint) from None
        finally:
            if not bars_were_disabled:
                enable_progress_bars()
        # huggingface_hub keeps its download bookkeeping there; it is not part of the model.
        shutil.rmtree(local / ".cache", ignore_errors=True)
        require_pins(local, source, f"the snapshot of {source.repo}")
        open_bundle(local)
        swap_into_place(local, target, staging)
    log.info("model installed", model=source.id, path=str(target))
    return open_bundle(target)


def installed_ok(target: Path, source: ModelSource, precision: Precision) -> ModelBundle | None:
    """The installed bundle if it opens and every pin matches, else None (reason logged)."""
    try:
        bundle = open_bundle(target, precision)
    except ModelError as exc:
        log.info("installed model unusable; reinstalling", path=str(target), reason=str(exc))
        return None
    failures = [c for c in check_pins(target, source) if c.failed]
    if failures:
        log.info(
            "installed model does not match its pins; reinstalling",
            path=str(target),
            files=[c.name for c in failures],
        )
        return None
    return bundle


def pull(
    source: ModelSource,
    models_dir: Path,
    *,
    precision: Precision = "int8",
    progress: bool = False,
    force: bool = False,
    endpoint: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[ModelBundle, bool]:
    """Make sure `source` is installed under `models_dir`; return (bundle, downloaded).

    An install that opens and matches its pins is kept unless `force`; anything else is
    downloaded again and replaces it only once the new copy has been verified.
    """
    target = models_dir / source.install_dir
    if not force and target.exists():
        bundle = installed_ok(target, source, precision)
        if bundle is not None:
            log.info("model already installed", model=source.id, path=str(target))
            return bundle, False
    if source.kind == "archive":
        bundle = install_archive(
            source, models_dir, precision=precision, progress=progress, timeout=timeout
        )
    else:
        bundle = install_huggingface(source, models_dir, progress=progress, endpoint=endpoint)
    return bundle, True
