"""`kwsd models pull|list|verify`: install, inspect and check the speech model.

`pull` downloads the model kwsd would otherwise fetch on first start, so a service can
be set up ahead of time (and a machine without internet can install an archive copied
from elsewhere with `--url PATH`). `list` shows what is installed and which model
`kwsd run` would pick, and why. `verify` hashes every file against the manifest's sha256
pins and exits non-zero naming any file that does not match.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kwsd.cli.config import add_config_args, settings_from_args
from kwsd.config import Settings
from kwsd.errors import KwsdError, ModelError, ModelMissingError
from kwsd.log import configure_logging
from kwsd.model.bundle import (
    Layout,
    ModelBundle,
    Precision,
    assets_bundle,
    detect_layout,
    open_bundle,
)
from kwsd.model.locations import SYSTEM, default_models_dir
from kwsd.model.manifest import Manifest, ModelSource, load_manifest
from kwsd.model.resolve import (
    coreml_runtime_available,
    find_model_root,
    resolve_model,
    wanted_layouts,
)
from kwsd.model.verify import FileCheck, check_pins


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE",
        help="model manifest to use instead of the one shipped with kwsd (sources and "
        "sha256 pins; see kwsd/data/models.toml)",
    )
    add_config_args(parser)


def _add_dest(parser: argparse.ArgumentParser, what: str) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--dest",
        type=Path,
        metavar="DIR",
        help=f"models directory {what} (default: {default_models_dir()})",
    )
    where.add_argument(
        "--system",
        action="store_true",
        help=f"the system-wide service's models directory, {SYSTEM.models} (needs root "
        "to write; `kwsd service install --system` reads it)",
    )


def _models_dir(args: argparse.Namespace) -> Path:
    if args.system:
        return default_models_dir(system=True)
    dest: Path | None = args.dest
    return (dest or default_models_dir()).expanduser()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "models",
        help="download, list and verify the speech model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="models_command", metavar="ACTION")
    actions.required = True

    pull = actions.add_parser(
        "pull",
        help="download and install the model (verified against its sha256 pins)",
        description="Download the model, check every pinned file's sha256, and install it "
        "atomically: an existing install is replaced only after the new one has been "
        "verified, and is kept if anything fails.",
    )
    pull.add_argument(
        "--backend",
        choices=("auto", "onnx", "coreml"),
        help="which model: onnx = the sherpa-onnx release (all platforms), coreml = the "
        "CoreML bundle (macOS); auto = what `kwsd run` would use (default: model.backend)",
    )
    pull.add_argument(
        "--precision",
        choices=("int8", "fp32"),
        help="precision the install must be usable with (default: model.precision)",
    )
    _add_dest(pull, "to install into")
    pull.add_argument(
        "--url",
        metavar="URL",
        help="download the ONNX archive from this URL, file:// URL or local path instead "
        "(a mirror or a copied file; the sha256 pins still apply; default: model.onnx_url, "
        "else upstream)",
    )
    pull.add_argument(
        "--repo",
        metavar="OWNER/NAME",
        help="Hugging Face repository of the CoreML bundle (default: model.coreml_repo)",
    )
    pull.add_argument(
        "--force", action="store_true", help="download again even if a verified copy exists"
    )
    pull.add_argument(
        "--progress",
        action="store_true",
        help="always show a progress bar (default: only when stderr is a terminal)",
    )
    _common(pull)
    pull.set_defaults(func=_pull)

    listing = actions.add_parser(
        "list",
        help="show known models, where they are installed, and which one kwsd would use",
    )
    _add_dest(listing, "to look in")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(listing)
    listing.set_defaults(func=_list)

    verify = actions.add_parser(
        "verify",
        help="check model files against their sha256 pins (exit 4 on any mismatch)",
        description="Hash every file of a model and compare it with the manifest's sha256 "
        "pins, then open the model as kwsd would. Without DIR, every model installed in "
        "the models directory is checked. Exit code 0 when all is well, 4 naming the "
        "first bad file otherwise.",
    )
    verify.add_argument(
        "dir",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="model directory (default: installed models)",
    )
    verify.add_argument(
        "--precision",
        choices=("int8", "fp32"),
        help="precision whose files must be present (default: model.precision)",
    )
    _add_dest(verify, "to check when DIR is not given")
    _common(verify)
    verify.set_defaults(func=_verify)


# --------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    settings = settings_from_args(args)
    configure_logging(settings.log.level, settings.log.format)
    return settings


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _pull(args: argparse.Namespace) -> int:
    from kwsd.model.download import pull

    settings = _settings(args)
    manifest = load_manifest(args.manifest)
    backend = args.backend or settings.model.backend
    precision: Precision = args.precision or settings.model.precision
    layout = wanted_layouts(backend, coreml_available=coreml_runtime_available())[0]
    source = manifest.default(layout)
    url = args.url or settings.model.onnx_url
    repo = args.repo or settings.model.coreml_repo
    if layout == "onnx" and url:
        source = source.with_url(url)
    elif layout == "coreml" and repo and repo != source.repo:
        source = source.with_repo(repo)
    if args.url and layout != "onnx":
        raise ModelError("--url applies to the ONNX archive; use --repo for the CoreML bundle")
    dest = _models_dir(args)

    bundle, downloaded = pull(
        source, dest, precision=precision, progress=args.progress, force=args.force
    )
    if downloaded:
        print(f"installed {source.id} in {bundle.root}")
    else:
        print(
            f"{source.id} is already installed in {bundle.root} and verified "
            "(use --force to download it again)"
        )
    if settings.model.dir is not None:
        print(
            f"note: model.dir = {settings.model.dir} is set, so kwsd uses that directory, "
            "not this install"
        )
    elif settings.assets is not None:
        print(
            f"note: assets = {settings.assets} (KWSD_ASSETS) is set, so kwsd uses the "
            "stand-in model, not this install"
        )
    return 0


def _status(path: Path, layout: Layout, precision: Precision) -> str:
    if not path.exists():
        return "not installed"
    if detect_layout(path) != layout:
        return "not installed (directory holds no model)"
    try:
        open_bundle(path, precision)
    except KwsdError as exc:
        return f"damaged: {exc}"
    return "installed"


def _settings_row(
    label: str, path: Path, manifest: Manifest, precision: Precision
) -> dict[str, Any]:
    """A `list` row for a model the settings point at rather than one from the manifest."""
    layout: Layout | None = None
    try:
        if label.startswith("assets"):
            layout, status = assets_bundle(path, precision).layout, "usable (stand-in encoder)"
        else:
            root = find_model_root(path, manifest, ("onnx", "coreml"))
            layout = detect_layout(root)
            status = _status(root, layout, precision) if layout else "holds no model files"
    except KwsdError as exc:
        status = f"damaged: {exc}"
    return {"model": label, "layout": layout, "status": status, "size": None,
            "path": str(path), "source": "settings"}  # fmt: skip


def _list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    manifest = load_manifest(args.manifest)
    base = _models_dir(args)
    precision = settings.model.precision
    rows: list[dict[str, Any]] = []
    for source in manifest.models:
        path = base / source.install_dir
        status = _status(path, source.layout, precision)
        rows.append({
            "model": source.id,
            "layout": source.layout,
            "status": status,
            "size": _tree_size(path) if status == "installed" else None,
            "path": str(path),
            "source": source.location,
        })  # fmt: skip
    if settings.model.dir is not None:
        rows.append(_settings_row("model.dir", settings.model.dir, manifest, precision))
    if settings.assets is not None:
        rows.append(_settings_row("assets (KWSD_ASSETS)", settings.assets, manifest, precision))

    try:
        chosen = resolve_model(
            settings.model.dir,
            backend=settings.model.backend,
            precision=precision,
            allow_download=False,
            assets=settings.assets,
            onnx_url=settings.model.onnx_url,
            coreml_repo=settings.model.coreml_repo,
            models_dir=base,
            manifest=manifest,
        )
        would_use = chosen.describe()
    except KwsdError as exc:
        would_use = f"none ({exc})"
    if args.json:
        print(json.dumps({"models_dir": str(base), "models": rows, "kwsd_would_use": would_use},
                         indent=2))  # fmt: skip
        return 0
    print(f"models directory: {base}")
    width = max(len(r["model"]) for r in rows)
    for row in rows:
        size = _human_size(row["size"]) if row["size"] is not None else "-"
        print(f"  {row['model']:<{width}}  {row['layout'] or '-':<6}  {size:>8}  {row['status']}")
        print(f"  {'':<{width}}  {row['path']}")
    print(f"kwsd would use: {would_use}")
    return 0


_MARK = {"ok": "ok", "mismatch": "MISMATCH", "missing": "missing", "unpinned": "unpinned",
         "unreadable": "UNREADABLE"}  # fmt: skip


def _source_for_dir(root: Path, manifest: Manifest) -> ModelSource | None:
    """The manifest entry describing the model in `root`, found by name or by its files."""
    for source in manifest.models:
        if root.name in (source.install_dir, source.archive_dir):
            return source
    names = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    return manifest.match_files(names)


def _verify_one(root: Path, manifest: Manifest, precision: Precision) -> list[str]:
    """Print a report for one model directory; return the names of files that failed."""
    print(f"{root}:")
    failed: list[str] = []
    try:
        bundle: ModelBundle | None = open_bundle(root, precision)
    except ModelMissingError:
        raise
    except ModelError as exc:
        bundle = None
        print(f"  FAILED   cannot be opened: {exc}")
        failed.append(f"{root} (cannot be opened)")
    used = {p.name for p in bundle.files} if bundle else set()
    source = _source_for_dir(root, manifest)
    results: list[FileCheck] = check_pins(root, source) if source else []
    if source is None:
        print("  (no manifest entry matches this model, so no sha256 pins are known; "
              "only its structure was checked)")  # fmt: skip
    for check in results:
        if check.status == "missing" and check.name not in used:
            print(f"  absent   {check.name} (not used with precision {precision})")
            continue
        detail = f": {check.detail}" if check.failed else ""
        print(f"  {_MARK[check.status]:<8} {check.name}{detail}")
        if check.failed:
            failed.append(f"{root / check.name} ({check.status})")
    pinned = {c.name for c in results}
    for path in sorted(root.glob("*.onnx")):
        if path.name not in pinned:
            print(f"  unpinned {path.name} (not in the manifest)")
    return failed


def _verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    manifest = load_manifest(args.manifest)
    precision: Precision = args.precision or settings.model.precision
    if args.dir is not None:
        roots = [find_model_root(args.dir.expanduser(), manifest, ("onnx", "coreml"))]
    else:
        base = _models_dir(args)
        roots = [
            base / s.install_dir for s in manifest.models if detect_layout(base / s.install_dir)
        ]
        if not roots:
            raise ModelMissingError(f"no model is installed in {base}; run `kwsd models pull`")
    failed: list[str] = []
    for root in roots:
        failed += _verify_one(root, manifest, precision)
    if failed:
        raise ModelError(
            f"verification failed: {'; '.join(failed)}. Reinstall with "
            "`kwsd models pull --force` (or copy the files again from where you got them)"
        )
    print("all files verified")
    return 0
