"""A model on disk: which files make it up, checked before anything loads them.

Two layouts exist. The sherpa-onnx release (`encoder-*.onnx`, `decoder-*.onnx`,
`joiner-*.onnx`, each in fp32 and `.int8.onnx` form, plus `tokens.txt` and `bpe.model`)
runs everywhere with ONNX Runtime; the CoreML bundle (`encoder.mlmodelc`,
`decoder.mlmodelc`, `joiner.mlmodelc` directories, `config.json`, `tokens.txt`,
`bpe.model`) runs on macOS only. `open_bundle` picks the files, runs the cheap checks
of `kwsd.model.checks` and raises a `ModelError` that names the file and the fix, so a
damaged install is reported at start-up in one line instead of as an ONNX Runtime
traceback halfway through loading.

Decoder precision: the encoder and joiner follow `precision`, but the fp32 decoder is
preferred even for int8, as upstream's own mobile keyword-spotting configuration does.
The decoder is about 1 MB and its output is cached per two-token context, so int8 saves
nothing measurable there, while quantizing its embedding table shifts every hypothesis
score a little. The int8 decoder is used only when the fp32 one is absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kwsd.errors import ModelError, ModelMissingError
from kwsd.liblog import LibraryLogger
from kwsd.model.checks import (
    FileProblemError,
    check_mlmodelc,
    check_onnx,
    check_sentencepiece,
    read_config_json,
    read_tokens,
)

Layout = Literal["onnx", "coreml"]
Precision = Literal["int8", "fp32"]

ROLES = ("encoder", "decoder", "joiner")
TOKENS_FILE = "tokens.txt"
BPE_FILE = "bpe.model"
COREML_CONFIG_FILE = "config.json"
PULL_HINT = "run `kwsd models pull` to install the model"

# `encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx`, `encoder.onnx`, `joiner.int8.onnx`.
_ONNX_NAME = re.compile(
    r"^(?P<role>encoder|decoder|joiner)(?:-(?P<tag>.+?))?(?P<int8>\.int8)?\.onnx$"
)

log = LibraryLogger(__name__)


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """The files of one model, validated by `open_bundle`; backends load from these paths."""

    layout: Layout
    root: Path
    encoder: Path
    decoder: Path
    joiner: Path
    tokens: Path
    bpe_model: Path
    config: dict[str, Any] | None  # the CoreML bundle's config.json; None for ONNX

    @property
    def files(self) -> tuple[Path, ...]:
        """Every path the bundle uses (for logs, `models list` and size accounting)."""
        return (self.encoder, self.decoder, self.joiner, self.tokens, self.bpe_model)

    def describe(self) -> str:
        """One line for logs and `kwsd models list`: layout, root, chosen file names."""
        names = ", ".join(p.name for p in (self.encoder, self.decoder, self.joiner))
        return f"{self.layout} model in {self.root} ({names})"


def detect_layout(root: Path) -> Layout | None:
    """Which layout the directory holds, or None when it holds no model files at all."""
    if not root.is_dir():
        return None
    if any((root / f"{role}.mlmodelc").exists() for role in ROLES):
        return "coreml"
    if any(_ONNX_NAME.match(p.name) for p in root.glob("*.onnx")):
        return "onnx"
    return None


def open_bundle(
    root: Path, precision: Precision = "int8", encoder_override: Path | None = None
) -> ModelBundle:
    """Locate and check a model's files; raise `ModelError` saying what is wrong and what to do.

    `encoder_override` swaps in another encoder file while keeping this directory's
    decoder, joiner and vocabulary: that is how the stand-in encoder of `KWSD_ASSETS` runs
    against the real decoder and joiner (see `assets_bundle`).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise ModelMissingError(f"model directory {root} does not exist; {PULL_HINT}")
    if not root.is_dir():
        raise ModelError(f"model directory {root} is a file, not a directory")
    layout = detect_layout(root)
    if layout is None:
        raise ModelMissingError(
            f"model directory {root} holds no model files (no encoder/decoder/joiner .onnx "
            f"files and no .mlmodelc bundle); {PULL_HINT}"
        )
    if layout == "coreml":
        if encoder_override is not None:
            raise ModelError(
                f"{root} holds a CoreML bundle; an encoder override only works with the ONNX "
                "layout (decoder-*.onnx, joiner-*.onnx)"
            )
        if precision == "fp32":
            log.warning(
                "the CoreML bundle exists only in int8; model.precision=fp32 is ignored",
                root=str(root),
            )
        return _open_coreml(root)
    return _open_onnx(root, precision, encoder_override)


def assets_bundle(assets: Path, precision: Precision = "int8") -> ModelBundle:
    """The development model of a `KWSD_ASSETS` directory: real decoder/joiner, stand-in encoder.

    Machines without access to the upstream release have the real decoder, joiner and
    vocabulary but not the real encoder; the trained stand-in encoder produces the same
    joiner space, so the real search runs on it unchanged.
    """
    assets = Path(assets).expanduser()
    model_dir = assets / "model"
    standin = assets / "standin" / "encoder-standin.onnx"
    missing = [p for p in (model_dir / TOKENS_FILE, standin) if not p.is_file()]
    if missing:
        raise ModelError(
            f"the assets directory {assets} (setting `assets` / $KWSD_ASSETS) is not a "
            f"kws-assets directory: {missing[0]} is missing. Point it at the directory that "
            "holds model/ and standin/, or unset it to use the installed model"
        )
    return open_bundle(model_dir, precision=precision, encoder_override=standin)


# --------------------------------------------------------------------------------------


def _problem(path: Path, reason: str, root: Path) -> ModelError:
    return ModelError(
        f"model file {path} {reason}. Run `kwsd models verify {root}` to check every file, "
        "then reinstall it with `kwsd models pull --force` (or copy it again from where you "
        "got it)"
    )


def _checked(path: Path, root: Path, check: Callable[[Path], object]) -> None:
    try:
        check(path)
    except FileProblemError as exc:
        raise _problem(path, str(exc), root) from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror or exc}") from None


def _required_file(root: Path, name: str, what: str) -> Path:
    path = root / name
    if not path.is_file():
        kind = "a directory" if path.exists() else "missing"
        raise ModelError(
            f"model directory {root} has no {what} ({name} is {kind}); {PULL_HINT}, or copy "
            f"the complete model directory"
        )
    return path


def _check_vocabulary(root: Path) -> tuple[Path, Path, int]:
    tokens = _required_file(root, TOKENS_FILE, "token table")
    bpe = _required_file(root, BPE_FILE, "SentencePiece model")
    try:
        count = len(read_tokens(tokens))
    except FileProblemError as exc:
        raise _problem(tokens, str(exc), root) from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {tokens}: {exc.strerror or exc}") from None
    _checked(bpe, root, check_sentencepiece)
    return tokens, bpe, count


def _open_coreml(root: Path) -> ModelBundle:
    parts: dict[str, Path] = {}
    for role in ROLES:
        path = root / f"{role}.mlmodelc"
        if not path.exists():
            raise ModelError(
                f"CoreML bundle {root} has no {role} ({path.name} is missing); {PULL_HINT} "
                "(`--backend coreml`)"
            )
        _checked(path, root, check_mlmodelc)
        parts[role] = path
    config_path = _required_file(root, COREML_CONFIG_FILE, "CoreML configuration")
    try:
        config = read_config_json(config_path)
    except FileProblemError as exc:
        raise _problem(config_path, str(exc), root) from None
    except OSError as exc:
        raise ModelError(f"cannot read model file {config_path}: {exc.strerror or exc}") from None
    tokens, bpe, count = _check_vocabulary(root)
    declared = (
        config.get("decoder", {}).get("vocabSize")
        if isinstance(config.get("decoder"), dict)
        else None
    )
    if isinstance(declared, int) and declared != count:
        raise ModelError(
            f"{config_path} declares vocabSize {declared} but {tokens} has {count} tokens; "
            "they come from different models. Reinstall the bundle with "
            "`kwsd models pull --backend coreml --force`"
        )
    return ModelBundle(
        layout="coreml",
        root=root,
        encoder=parts["encoder"],
        decoder=parts["decoder"],
        joiner=parts["joiner"],
        tokens=tokens,
        bpe_model=bpe,
        config=config,
    )


# role -> precision -> tag -> path
_Candidates = dict[str, dict[Precision, dict[str, Path]]]


def _onnx_candidates(root: Path) -> _Candidates:
    found: _Candidates = {role: {"int8": {}, "fp32": {}} for role in ROLES}
    for path in sorted(root.glob("*.onnx")):
        match = _ONNX_NAME.match(path.name)
        if match is None:
            continue
        precision: Precision = "int8" if match["int8"] else "fp32"
        found[match["role"]][precision][match["tag"] or ""] = path
    return found


def _tags(found: _Candidates, role: str) -> set[str]:
    return set(found[role]["int8"]) | set(found[role]["fp32"])


def _pattern(role: str, tag: str, precision: Precision) -> str:
    stem = f"{role}-{tag}" if tag else role
    return f"{stem}.int8.onnx" if precision == "int8" else f"{stem}.onnx"


def _choose_tag(root: Path, found: _Candidates, roles: tuple[str, ...]) -> str:
    """The one export (file-name tag) that every needed role has."""
    for role in roles:
        if not _tags(found, role):
            raise ModelError(
                f"model directory {root} has no {role} ({role}-*.onnx is missing); "
                f"{PULL_HINT}, or copy the complete model directory"
            )
    common = set.intersection(*(_tags(found, role) for role in roles))
    if len(common) == 1:
        return common.pop()
    listing = "; ".join(
        f"{role}: {', '.join(sorted(p.name for d in found[role].values() for p in d.values()))}"
        for role in roles
    )
    if not common:
        raise ModelError(
            f"the ONNX files in {root} are not from one export (their names differ after "
            f"the role: {listing}); keep one matching encoder/decoder/joiner set"
        )
    raise ModelError(
        f"{root} holds {len(common)} different ONNX exports ({listing}); keep one set per "
        "directory, or point model.dir at a directory with a single model"
    )


def _pick(root: Path, found: _Candidates, role: str, tag: str, precision: Precision) -> Path:
    path = found[role][precision].get(tag)
    if path is not None:
        return path
    other: Precision = "fp32" if precision == "int8" else "int8"
    alternative = found[role][other].get(tag)
    wanted = _pattern(role, tag, precision)
    if alternative is not None:
        raise ModelError(
            f"model directory {root} has no {precision} {role} ({wanted}) but has the "
            f'{other} one ({alternative.name}); set model.precision = "{other}" '
            f"(or pass --precision {other}), or {PULL_HINT} with both precisions"
        )
    raise ModelError(f"model directory {root} has no {role} ({wanted}); {PULL_HINT}")


def _open_onnx(root: Path, precision: Precision, encoder_override: Path | None) -> ModelBundle:
    found = _onnx_candidates(root)
    needed = ("decoder", "joiner") if encoder_override is not None else ROLES
    tag = _choose_tag(root, found, needed)

    if encoder_override is not None:
        encoder = Path(encoder_override).expanduser()
        if not encoder.is_file():
            raise ModelError(f"encoder override {encoder} does not exist or is not a file")
    else:
        encoder = _pick(root, found, "encoder", tag, precision)
    joiner = _pick(root, found, "joiner", tag, precision)
    decoder = found["decoder"]["fp32"].get(tag) or found["decoder"]["int8"][tag]
    if decoder.name.endswith(".int8.onnx"):
        log.debug("no fp32 decoder; using the int8 one", decoder=str(decoder))

    for path in (encoder, decoder, joiner):
        _checked(path, root, check_onnx)
    tokens, bpe, _count = _check_vocabulary(root)
    return ModelBundle(
        layout="onnx",
        root=root,
        encoder=encoder,
        decoder=decoder,
        joiner=joiner,
        tokens=tokens,
        bpe_model=bpe,
        config=None,
    )
