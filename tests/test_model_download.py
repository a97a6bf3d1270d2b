"""Downloads, verification and atomic installs against a real HTTP server on loopback.

The archive is built from the real decoder/joiner/vocabulary plus the synthetic encoder
under the release's int8 encoder name; its pins are computed here and handed to the code
through a manifest file, the same path the shipped manifest takes.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from kwsd.cli import main
from kwsd.errors import ExitCode, ModelError, ModelMissingError, NetworkError
from kwsd.model.bundle import open_bundle
from kwsd.model.download import install_huggingface, pull
from kwsd.model.install import STAGING_PREFIX
from kwsd.model.manifest import Manifest, ModelSource, load_manifest
from kwsd.model.resolve import resolve_model

MODEL_ID = "sherpa-onnx-kws-zipformer-gigaspeech-3.3M-2024-01-01"
TAG = "epoch-12-avg-2-chunk-16-left-64"
ENCODER = f"encoder-{TAG}.int8.onnx"
REAL_FILES = (
    f"decoder-{TAG}.onnx",
    f"decoder-{TAG}.int8.onnx",
    f"joiner-{TAG}.onnx",
    f"joiner-{TAG}.int8.onnx",
    "tokens.txt",
    "bpe.model",
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _release_files(assets: Path) -> dict[str, bytes]:
    files = {name: (assets / "model" / name).read_bytes() for name in REAL_FILES}
    files[ENCODER] = (assets / "synthetic" / "encoder-synthetic.onnx").read_bytes()
    return files


def _build_tarball(
    path: Path, files: dict[str, bytes], extra: dict[str, bytes] | None = None
) -> None:
    """A .tar.bz2 laid out like the upstream release: one top directory, plus test_wavs/."""
    with tarfile.open(path, "w:bz2") as tar:
        members = {f"{MODEL_ID}/{name}": data for name, data in files.items()}
        members[f"{MODEL_ID}/test_wavs/trans.txt"] = b"0.wav LIGHT UP\n"
        members.update(extra or {})
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def _write_manifest(path: Path, url: str, pins: dict[str, str]) -> Path:
    lines = [
        "schema = 1",
        "[[models]]",
        f'id = "{MODEL_ID}"',
        'layout = "onnx"',
        f'url = "{url}"',
        f'archive_dir = "{MODEL_ID}"',
        "[models.files]",
        *(f'"{name}" = {{ sha256 = "{digest}" }}' for name, digest in sorted(pins.items())),
        "[[models]]",
        'id = "KWS-Zipformer-3M-CoreML-INT8"',
        'layout = "coreml"',
        'repo = "aufklarer/KWS-Zipformer-3M-CoreML-INT8"',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/short.tar.bz2":
            # Promise 100000 bytes, send 10, hang up: a connection dropped mid-download.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"BZh91AY&SY")
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loopback must never be sent through a proxy from the CI environment."""
    for name in (
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, served directory) of a real HTTP server on 127.0.0.1, one per module."""
    root = tmp_path_factory.mktemp("www")
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(_Handler, directory=str(root))
    )
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def release(
    assets: Path, server: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Manifest, dict[str, bytes], Path]:
    """(manifest with pins, file contents, manifest path) for the good archive on the server."""
    base, root = server
    files = _release_files(assets)
    _build_tarball(root / f"{MODEL_ID}.tar.bz2", files)
    pins = {name: _sha256(data) for name, data in files.items()}
    manifest_dir = tmp_path_factory.mktemp("manifest")
    path = _write_manifest(manifest_dir / "manifest.toml", f"{base}/{MODEL_ID}.tar.bz2", pins)
    return load_manifest(path), files, path


def _onnx_source(manifest: Manifest) -> ModelSource:
    return manifest.default("onnx")


def _no_leftovers(models_dir: Path) -> None:
    assert not list(models_dir.glob(f"{STAGING_PREFIX}*")), "staging directory left behind"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- installing


def test_download_extract_verify_and_open(
    release: tuple[Manifest, dict[str, bytes], Path], tmp_path: Path
) -> None:
    manifest, files, _ = release
    models = tmp_path / "models"
    bundle, downloaded = pull(_onnx_source(manifest), models)
    assert downloaded
    target = models / MODEL_ID
    assert bundle.root == target
    assert bundle.encoder == target / ENCODER
    for name, data in files.items():
        assert (target / name).read_bytes() == data
    assert (target / "test_wavs" / "trans.txt").is_file()  # unpinned extras are installed too
    assert open_bundle(target).layout == "onnx"
    _no_leftovers(models)

    again, downloaded = pull(_onnx_source(manifest), models)
    assert not downloaded  # verified install is kept
    assert again.root == target


def test_tampered_archive_is_refused_and_previous_install_survives(
    release: tuple[Manifest, dict[str, bytes], Path], server: tuple[str, Path], tmp_path: Path
) -> None:
    manifest, files, _ = release
    base, root = server
    models = tmp_path / "models"
    pull(_onnx_source(manifest), models)
    before = {p.name: p.read_bytes() for p in (models / MODEL_ID).iterdir() if p.is_file()}

    bad = dict(files)
    flipped = bytearray(bad[ENCODER])
    flipped[len(flipped) // 2] ^= 0x01  # one bit: still a structurally valid ONNX file
    bad[ENCODER] = bytes(flipped)
    _build_tarball(root / "tampered.tar.bz2", bad)
    source = _onnx_source(manifest).with_url(f"{base}/tampered.tar.bz2")

    with pytest.raises(ModelError) as info:
        pull(source, models, force=True)
    message = str(info.value)
    assert ENCODER in message
    assert "mismatch" in message
    assert "previous model" in message
    after = {p.name: p.read_bytes() for p in (models / MODEL_ID).iterdir() if p.is_file()}
    assert after == before
    assert open_bundle(models / MODEL_ID).encoder.read_bytes() == files[ENCODER]
    _no_leftovers(models)


def test_wrong_pin_is_refused(
    release: tuple[Manifest, dict[str, bytes], Path], server: tuple[str, Path], tmp_path: Path
) -> None:
    _, files, _ = release
    base, _root = server
    pins = {name: _sha256(data) for name, data in files.items()}
    pins["tokens.txt"] = "0" * 64
    manifest = load_manifest(
        _write_manifest(tmp_path / "wrong.toml", f"{base}/{MODEL_ID}.tar.bz2", pins)
    )
    models = tmp_path / "models"
    with pytest.raises(ModelError, match=r"tokens\.txt: mismatch"):
        pull(_onnx_source(manifest), models)
    assert not (models / MODEL_ID).exists()
    _no_leftovers(models)


def test_pinned_file_missing_from_archive_is_refused(
    release: tuple[Manifest, dict[str, bytes], Path], server: tuple[str, Path], tmp_path: Path
) -> None:
    manifest, files, _ = release
    base, root = server
    partial_files = {k: v for k, v in files.items() if k != "bpe.model"}
    _build_tarball(root / "partial.tar.bz2", partial_files)
    with pytest.raises(ModelError, match=r"bpe\.model: missing"):
        pull(_onnx_source(manifest).with_url(f"{base}/partial.tar.bz2"), tmp_path / "models")


@pytest.mark.parametrize(
    "evil",
    [
        {"../escaped.txt": b"gotcha"},
        {f"{MODEL_ID}/../../escaped.txt": b"gotcha"},
        {"/tmp/kwsd-absolute-escape.txt": b"gotcha"},
    ],
)
def test_path_traversal_member_is_refused(
    release: tuple[Manifest, dict[str, bytes], Path],
    server: tuple[str, Path],
    tmp_path: Path,
    evil: dict[str, bytes],
) -> None:
    manifest, files, _ = release
    base, root = server
    name = f"evil-{abs(hash(tuple(evil)))}.tar.bz2"
    _build_tarball(root / name, files, extra=evil)
    models = tmp_path / "a" / "models"
    with pytest.raises(ModelError, match="path traversal"):
        pull(_onnx_source(manifest).with_url(f"{base}/{name}"), models)
    assert not (tmp_path / "a" / "escaped.txt").exists()
    assert not (models / "escaped.txt").exists()
    assert not Path("/tmp/kwsd-absolute-escape.txt").exists()
    assert not (models / MODEL_ID).exists()
    _no_leftovers(models)


def test_symlink_member_is_refused(
    release: tuple[Manifest, dict[str, bytes], Path], server: tuple[str, Path], tmp_path: Path
) -> None:
    manifest, files, _ = release
    base, root = server
    path = root / "link.tar.bz2"
    _build_tarball(path, files)
    with tarfile.open(path, "r:bz2") as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else b"") for m in src.getmembers()]  # type: ignore[union-attr]
    with tarfile.open(path, "w:bz2") as tar:
        for member, data in members:
            tar.addfile(member, io.BytesIO(data))
        link = tarfile.TarInfo(f"{MODEL_ID}/passwd")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(ModelError, match="is a link"):
        pull(_onnx_source(manifest).with_url(f"{base}/link.tar.bz2"), tmp_path / "models")


def test_connection_refused_is_a_clear_network_error(
    release: tuple[Manifest, dict[str, bytes], Path], tmp_path: Path
) -> None:
    manifest, _, _ = release
    source = _onnx_source(manifest).with_url(f"http://127.0.0.1:{_closed_port()}/x.tar.bz2")
    with pytest.raises(NetworkError) as info:
        pull(source, tmp_path / "models")
    message = str(info.value)
    assert message.startswith("could not reach 127.0.0.1")
    assert "--model-dir" in message
    assert "KWSD_ASSETS" in message
    assert info.value.exit_code == ExitCode.NETWORK
    _no_leftovers(tmp_path / "models")


def test_http_404_is_a_clear_error(
    release: tuple[Manifest, dict[str, bytes], Path], server: tuple[str, Path], tmp_path: Path
) -> None:
    manifest, _, _ = release
    base, _root = server
    with pytest.raises(ModelError) as info:
        pull(_onnx_source(manifest).with_url(f"{base}/gone.tar.bz2"), tmp_path / "models")
    assert "HTTP 404" in str(info.value)
    assert "--url" in str(info.value)
    assert not isinstance(info.value, NetworkError)  # retrying a 404 does not help


def test_download_cut_short_is_a_network_error(
    release: tuple[Manifest, dict[str, bytes], Path], server: tuple[str, Path], tmp_path: Path
) -> None:
    manifest, _, _ = release
    base, _root = server
    with pytest.raises(NetworkError, match="after 10 "):
        pull(_onnx_source(manifest).with_url(f"{base}/short.tar.bz2"), tmp_path / "models")


def test_not_an_archive_is_refused(
    release: tuple[Manifest, dict[str, bytes], Path], server: tuple[str, Path], tmp_path: Path
) -> None:
    manifest, _, _ = release
    base, root = server
    (root / "page.tar.bz2").write_text("<html>sign in to continue</html>")
    with pytest.raises(ModelError, match="not a readable tar archive"):
        pull(_onnx_source(manifest).with_url(f"{base}/page.tar.bz2"), tmp_path / "models")


def test_local_archive_path_installs_offline(
    release: tuple[Manifest, dict[str, bytes], Path], server: tuple[str, Path], tmp_path: Path
) -> None:
    manifest, files, _ = release
    _base, root = server
    source = _onnx_source(manifest).with_url(str(root / f"{MODEL_ID}.tar.bz2"))
    bundle, downloaded = pull(source, tmp_path / "models")
    assert downloaded
    assert bundle.encoder.read_bytes() == files[ENCODER]


def test_abandoned_staging_dirs_are_cleaned(
    release: tuple[Manifest, dict[str, bytes], Path], tmp_path: Path
) -> None:
    manifest, _, _ = release
    models = tmp_path / "models"
    stale = models / f"{STAGING_PREFIX}crashed"
    stale.mkdir(parents=True)
    (stale / "download.tar.bz2").write_bytes(b"partial")
    old = time.time() - 3 * 24 * 3600
    os.utime(stale, (old, old))
    pull(_onnx_source(manifest), models)
    assert not stale.exists()


def test_huggingface_unreachable_is_a_network_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    source = load_manifest().default("coreml")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(NetworkError) as info:
        install_huggingface(source, tmp_path / "models", endpoint=endpoint)
    assert str(info.value).startswith("could not reach 127.0.0.1")
    assert "--model-dir" in str(info.value)
    assert not (tmp_path / "models" / source.install_dir).exists()
    _no_leftovers(tmp_path / "models")


# ----------------------------------------------------------------------------- resolution


def test_resolve_downloads_then_finds_the_install(
    release: tuple[Manifest, dict[str, bytes], Path], tmp_path: Path
) -> None:
    manifest, _, _ = release
    models = tmp_path / "models"
    with pytest.raises(ModelMissingError) as info:
        resolve_model(
            None, allow_download=False, models_dir=models, manifest=manifest, coreml_available=False
        )
    assert info.value.exit_code == 78
    assert "kwsd models pull" in str(info.value)

    downloaded = resolve_model(
        None, allow_download=True, models_dir=models, manifest=manifest, coreml_available=False
    )
    assert downloaded.root == models / MODEL_ID
    installed = resolve_model(
        None, allow_download=False, models_dir=models, manifest=manifest, coreml_available=False
    )
    assert installed == downloaded


def test_resolve_prefers_explicit_dir_then_assets(
    release: tuple[Manifest, dict[str, bytes], Path], assets: Path, tmp_path: Path
) -> None:
    manifest, _, _ = release
    models = tmp_path / "models"
    pull(_onnx_source(manifest), models)
    # model.dir may name the install itself or the directory holding it.
    for given in (models / MODEL_ID, models):
        bundle = resolve_model(
            given, assets=assets, allow_download=False, manifest=manifest, coreml_available=False
        )
        assert bundle.root == models / MODEL_ID
    via_assets = resolve_model(
        None,
        assets=assets,
        allow_download=False,
        models_dir=models,
        manifest=manifest,
        coreml_available=False,
    )
    assert via_assets.encoder == assets / "standin" / "encoder-standin.onnx"


def test_resolve_explicit_dir_missing_is_not_replaced(
    release: tuple[Manifest, dict[str, bytes], Path], tmp_path: Path
) -> None:
    manifest, _, _ = release
    models = tmp_path / "models"
    pull(_onnx_source(manifest), models)
    with pytest.raises(ModelMissingError, match="kwsd models pull --dest"):
        resolve_model(
            tmp_path / "typo",
            allow_download=True,
            models_dir=models,
            manifest=manifest,
            coreml_available=False,
        )


def test_resolve_refuses_a_layout_the_backend_cannot_run(
    release: tuple[Manifest, dict[str, bytes], Path], tmp_path: Path
) -> None:
    manifest, _, _ = release
    models = tmp_path / "models"
    pull(_onnx_source(manifest), models)
    with pytest.raises(ModelError, match=r'model\.backend = "onnx"'):
        resolve_model(
            models / MODEL_ID, backend="coreml", manifest=manifest, coreml_available=False
        )


# ------------------------------------------------------------------------------------ CLI


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the CLI away from the user's config and cache directories."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("KWSD_CONFIG", raising=False)


@pytest.mark.usefixtures("cli_env")
def test_cli_pull_list_verify(
    release: tuple[Manifest, dict[str, bytes], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, files, manifest_path = release
    models = tmp_path / "models"
    common = ["--manifest", str(manifest_path)]
    assert main(["models", "pull", "--backend", "onnx", "--dest", str(models), *common]) == 0
    assert f"installed {MODEL_ID}" in capsys.readouterr().out

    assert main(["models", "list", "--dest", str(models), *common]) == 0
    out = capsys.readouterr().out
    assert MODEL_ID in out
    assert "installed" in out

    target = models / MODEL_ID
    assert main(["models", "verify", str(target), *common]) == 0
    out = capsys.readouterr().out
    assert f"ok       {ENCODER}" in out
    assert "all files verified" in out
    assert main(["models", "verify", "--dest", str(models), *common]) == 0
    capsys.readouterr()

    # One changed byte in a pinned file: exit code 4 and the file is named.
    tokens = target / "tokens.txt"
    tokens.write_bytes(files["tokens.txt"].replace(b"<blk> 0", b"<blk> 0 ", 1)[:-1] + b"\n")
    assert main(["models", "verify", str(target), *common]) == ExitCode.MODEL
    captured = capsys.readouterr()
    assert "MISMATCH tokens.txt" in captured.out
    assert "tokens.txt" in captured.err
    assert "kwsd models pull --force" in captured.err

    # pull repairs it (the damaged install no longer verifies, so it is replaced).
    assert main(["models", "pull", "--backend", "onnx", "--dest", str(models), *common]) == 0
    assert tokens.read_bytes() == files["tokens.txt"]
    capsys.readouterr()


@pytest.mark.usefixtures("cli_env")
def test_cli_verify_missing_dir_exits_78(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "verify", str(tmp_path / "none")]) == ExitCode.NOT_CONFIGURED
    assert "kwsd models pull" in capsys.readouterr().err


@pytest.mark.usefixtures("cli_env")
def test_cli_pull_network_error_exit_code(
    release: tuple[Manifest, dict[str, bytes], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, _, manifest_path = release
    url = f"http://127.0.0.1:{_closed_port()}/x.tar.bz2"
    code = main(
        [
            "models",
            "pull",
            "--backend",
            "onnx",
            "--dest",
            str(tmp_path / "m"),
            "--url",
            url,
            "--manifest",
            str(manifest_path),
        ]
    )
    assert code == ExitCode.NETWORK
    assert "could not reach 127.0.0.1" in capsys.readouterr().err
