"""Cheap structural checks of model files, run every time a bundle is opened.

Full sha256 verification costs a read of every byte and only works where a pin is known,
so it belongs to `kwsd models verify` and to installs. What users actually hit is
cheaper to catch: an interrupted copy (truncated file), a zero-byte file, an HTML error
page or a Git LFS pointer saved under the model's name, a hand-edited tokens.txt. Each
check here reads at most a few hundred bytes of headers (plus the small text files) and
raises `FileProblemError` with the reason; `kwsd.model.bundle` turns that into a `ModelError`
that names the file and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

# (field number, wire type) pairs. ONNX ModelProto (onnx.proto): every exported model has
# ir_version (1, varint) and graph (7, length-delimited).
_ONNX_IR_VERSION = (1, 0)
_ONNX_GRAPH = (7, 2)
# SentencePiece ModelProto: field 1 is the repeated `pieces` message.
_SPM_PIECES = (1, 2)

_LFS_POINTER_PREFIX = b"version https://git-lfs"
_MAX_VARINT_BYTES = 10


class FileProblemError(ValueError):
    """Why a model file is unusable, worded to follow "<path> ...". Internal to kwsd.model."""


def _read_varint(fh: BinaryIO) -> int | None:
    """One protobuf varint, or None at a clean end of file."""
    result = 0
    for index in range(_MAX_VARINT_BYTES):
        raw = fh.read(1)
        if not raw:
            if index == 0:
                return None
            raise FileProblemError("is truncated (ends inside a field header)")
        byte = raw[0]
        result |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return result
    raise FileProblemError("is not a protobuf file (malformed field header)")


def _sniff_text(head: bytes) -> str | None:
    """A specific reason when the bytes are a well-known text impostor, else None."""
    if head.startswith(_LFS_POINTER_PREFIX):
        return (
            "is a Git LFS pointer, not the model itself (the repository was cloned without "
            "git-lfs); run `git lfs pull` there or download the release archive instead"
        )
    stripped = head.lstrip()
    if stripped[:1] == b"<":
        return "holds HTML/XML text, not a model (an error page saved in its place?)"
    return None


def protobuf_fields(path: Path) -> set[tuple[int, int]]:
    """Top-level (field number, wire type) pairs of a serialized protobuf message.

    Length-delimited fields are skipped with a seek, so this touches only the headers of
    the few top-level fields (the whole ONNX graph is one of them) yet notices a file that
    ends before a declared length: the signature of an interrupted download or copy.
    """
    size = path.stat().st_size
    if size == 0:
        raise FileProblemError("is empty (0 bytes)")
    seen: set[tuple[int, int]] = set()
    with path.open("rb") as fh:
        reason = _sniff_text(fh.read(64))
        if reason is not None:
            raise FileProblemError(reason)
        fh.seek(0)
        while True:
            key = _read_varint(fh)
            if key is None:
                break
            field, wire = key >> 3, key & 0x7
            if field == 0:
                raise FileProblemError("is not a protobuf file (field number 0)")
            if wire == 0:
                if _read_varint(fh) is None:
                    raise FileProblemError("is truncated (ends inside a value)")
            elif wire == 1:
                fh.seek(8, 1)
            elif wire == 2:
                length = _read_varint(fh)
                if length is None:
                    raise FileProblemError("is truncated (ends inside a field header)")
                fh.seek(length, 1)
            elif wire == 5:
                fh.seek(4, 1)
            else:
                raise FileProblemError(f"is not a protobuf file (invalid wire type {wire})")
            if fh.tell() > size:
                raise FileProblemError(
                    f"is truncated: it has {size} bytes but its contents declare at least "
                    f"{fh.tell()} (an interrupted download or copy?)"
                )
            seen.add((field, wire))
    return seen


def check_onnx(path: Path) -> None:
    """Raise FileProblemError unless `path` looks like a complete ONNX model."""
    fields = protobuf_fields(path)
    missing = {_ONNX_IR_VERSION, _ONNX_GRAPH} - fields
    if missing:
        raise FileProblemError("is not an ONNX model (no graph or IR version in it)")


def check_sentencepiece(path: Path) -> None:
    """Raise FileProblemError unless `path` looks like a complete SentencePiece model."""
    if _SPM_PIECES not in protobuf_fields(path):
        raise FileProblemError("is not a SentencePiece model (it has no pieces)")


def read_tokens(path: Path) -> dict[str, int]:
    """Parse tokens.txt (`<piece> <id>` per line, ids 0..N-1), or raise FileProblemError.

    The ids must be exactly 0..N-1 because the joiner's output index is the token id:
    a gap or duplicate would make every decoded piece after it wrong, silently.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FileProblemError("is not UTF-8 text (is it really tokens.txt?)") from None
    table: dict[str, int] = {}
    seen_ids: set[int] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise FileProblemError(f'line {number} is "{line[:60]}", expected "<piece> <id>"')
        piece, token_id = parts[0], int(parts[1])
        if token_id in seen_ids:
            raise FileProblemError(f"line {number} repeats id {token_id}")
        if piece in table:
            raise FileProblemError(f"line {number} repeats piece {piece!r}")
        table[piece] = token_id
        seen_ids.add(token_id)
    if not table:
        raise FileProblemError("is empty")
    if seen_ids != set(range(len(seen_ids))):
        first_gap = min(set(range(len(seen_ids))) - seen_ids)
        raise FileProblemError(
            f"has {len(seen_ids)} tokens but id {first_gap} is missing; ids must be 0..N-1"
        )
    return table


def read_config_json(path: Path) -> dict[str, Any]:
    """Parse the CoreML bundle's config.json (a JSON object), or raise FileProblemError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise FileProblemError("is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise FileProblemError(f"is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise FileProblemError(f"must hold a JSON object, found {type(data).__name__}")
    return data


def check_mlmodelc(path: Path) -> None:
    """Raise FileProblemError unless `path` is a compiled CoreML model directory.

    Only the shape is checked: the directory format is Apple's and private. An empty
    `coremldata.bin` (a download cut short) is caught; everything else is left to CoreML,
    which reports its own errors when the backend loads it.
    """
    if not path.is_dir():
        raise FileProblemError("must be a directory (a compiled .mlmodelc), but it is a file")
    marker = path / "coremldata.bin"
    if marker.is_file() and marker.stat().st_size == 0:
        raise FileProblemError("is incomplete (coremldata.bin inside it is empty)")
