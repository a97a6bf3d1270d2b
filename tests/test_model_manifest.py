"""The shipped manifest matches the real files, and bad manifests are refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from kwsd.errors import ModelError
from kwsd.model.locations import default_models_dir, source_checkout_models_dir
from kwsd.model.manifest import load_manifest
from kwsd.model.verify import check_pins

REPO = Path(__file__).resolve().parents[1]
RELEASE_URL = (
    "https://github.com/k2-fsa/sherpa-onnx/releases/download/kws-models/"
    "sherpa-onnx-kws-zipformer-gigaspeech-3.3M-2024-01-01.tar.bz2"
)
INT8_ENCODER_PIN = "1e721676515bcd42a186979733981213c66c80db680e1cc582dfedf3be76e678"


def test_shipped_manifest_describes_both_models() -> None:
    manifest = load_manifest()
    onnx = manifest.default("onnx")
    assert onnx.url == RELEASE_URL
    assert onnx.archive_dir == "sherpa-onnx-kws-zipformer-gigaspeech-3.3M-2024-01-01"
    assert onnx.kind == "archive"
    encoder = onnx.pin("encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx")
    assert encoder is not None
    assert encoder.sha256 == INT8_ENCODER_PIN
    coreml = manifest.default("coreml")
    assert coreml.kind == "huggingface"
    assert coreml.repo == "aufklarer/KWS-Zipformer-3M-CoreML-INT8"
    assert coreml.files == ()  # no pins are known for it


def test_shipped_pins_match_the_real_files(assets: Path) -> None:
    """Every pin transcribed from SHA256SUMS verifies against the real files."""
    sums = {
        name: digest
        for digest, name in (
            line.split() for line in (assets / "model" / "SHA256SUMS").read_text().splitlines()
        )
    }
    onnx = load_manifest().default("onnx")
    results = {c.name: c for c in check_pins(assets / "model", onnx)}
    for name, digest in sums.items():
        pin = onnx.pin(name)
        assert pin is not None, f"{name} is not pinned"
        assert pin.sha256 == digest
        assert results[name].status == "ok", results[name]
    # The encoder is not among the shared files; it is reported missing, not passed.
    assert results["encoder-epoch-12-avg-2-chunk-16-left-64.int8.onnx"].status == "missing"


def test_source_checkout_installs_into_repo_models() -> None:
    assert source_checkout_models_dir() == REPO / "models"
    assert default_models_dir() == REPO / "models"


_GOOD_ENTRY = 'id = "m"\nlayout = "onnx"\nurl = "https://example.org/m.tar.bz2"\n'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[[models]]\nid = "../evil"\nlayout = "onnx"\nurl = "x"\n', "becomes a directory name"),
        ('[[models]]\nid = "m"\nlayout = "tflite"\nurl = "x"\n', "layout must be"),
        ('[[models]]\nid = "m"\nlayout = "onnx"\n', "exactly one of `url`"),
        ('[[models]]\nid = "m"\nlayout = "onnx"\nurl = "x"\nrepo = "a/b"\n', "exactly one of"),
        (f"[[models]]\n{_GOOD_ENTRY}colour = 1\n", "unknown key `colour`"),
        (
            f'[[models]]\n{_GOOD_ENTRY}[models.files]\n"../x" = {{ sha256 = "{"0" * 64}" }}\n',
            "'..'",
        ),
        (f'[[models]]\n{_GOOD_ENTRY}[models.files]\n"a.onnx" = {{ sha256 = "abc" }}\n', "64 hex"),
        (f"[[models]]\n{_GOOD_ENTRY}[[models]]\n{_GOOD_ENTRY}", "lists id 'm' twice"),
        ("schema = 2\n", "schema 2"),
        ("models = [\n", "not valid TOML"),
        ("", "no [[models]] entries"),
    ],
)
def test_invalid_manifest_is_refused(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "manifest.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ModelError) as info:
        load_manifest(path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="cannot read the model manifest"):
        load_manifest(tmp_path / "nope.toml")


def test_checkout_manifest_is_the_packaged_one() -> None:
    """models/manifest.toml (where the guide says to look) is the package's manifest."""
    repo = Path(__file__).resolve().parents[1]
    checkout = repo / "models" / "manifest.toml"
    assert checkout.resolve() == (repo / "kwsd" / "data" / "models.toml").resolve()
