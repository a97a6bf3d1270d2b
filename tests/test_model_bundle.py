"""open_bundle / assets_bundle on real model files (copied into tmp_path, never into the repo)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from kwsd.errors import ExitCode, ModelError, ModelMissingError
from kwsd.model.bundle import assets_bundle, detect_layout, open_bundle

TAG = "epoch-12-avg-2-chunk-16-left-64"
ENC_INT8 = f"encoder-{TAG}.int8.onnx"
ENC_FP32 = f"encoder-{TAG}.onnx"
DEC_INT8 = f"decoder-{TAG}.int8.onnx"
DEC_FP32 = f"decoder-{TAG}.onnx"
JOIN_INT8 = f"joiner-{TAG}.int8.onnx"
JOIN_FP32 = f"joiner-{TAG}.onnx"


def make_onnx_dir(
    assets: Path, root: Path, *, encoders: tuple[str, ...] = (ENC_INT8, ENC_FP32)
) -> Path:
    """The release layout: real decoder/joiner/vocabulary, the synthetic encoder as encoder."""
    root.mkdir(parents=True)
    for name in (DEC_INT8, DEC_FP32, JOIN_INT8, JOIN_FP32, "tokens.txt", "bpe.model"):
        shutil.copyfile(assets / "model" / name, root / name)
    for name in encoders:
        shutil.copyfile(assets / "synthetic" / "encoder-synthetic.onnx", root / name)
    return root


def make_coreml_dir(assets: Path, root: Path, vocab_size: int = 500) -> Path:
    """The CoreML layout; the .mlmodelc directories are empty (only CoreML reads inside them)."""
    root.mkdir(parents=True)
    for role in ("encoder", "decoder", "joiner"):
        (root / f"{role}.mlmodelc").mkdir()
    config = {"modelName": "kws-zipformer-gigaspeech", "decoder": {"vocabSize": vocab_size}}
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    for name in ("tokens.txt", "bpe.model"):
        shutil.copyfile(assets / "model" / name, root / name)
    return root


@pytest.fixture
def onnx_dir(assets: Path, tmp_path: Path) -> Path:
    return make_onnx_dir(assets, tmp_path / "model")


# ------------------------------------------------------------------------------ ONNX layout


def test_int8_default_uses_int8_encoder_joiner_and_fp32_decoder(onnx_dir: Path) -> None:
    bundle = open_bundle(onnx_dir)
    assert bundle.layout == "onnx"
    assert bundle.root == onnx_dir
    assert bundle.encoder.name == ENC_INT8
    assert bundle.joiner.name == JOIN_INT8
    assert bundle.decoder.name == DEC_FP32  # upstream's choice; see the bundle docstring
    assert bundle.tokens.name == "tokens.txt"
    assert bundle.bpe_model.name == "bpe.model"
    assert bundle.config is None
    # The chosen files really are loadable models.
    for path in (bundle.decoder, bundle.joiner):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert session.get_outputs()


def test_fp32_precision_picks_fp32_files(onnx_dir: Path) -> None:
    bundle = open_bundle(onnx_dir, precision="fp32")
    assert (bundle.encoder.name, bundle.joiner.name, bundle.decoder.name) == (
        ENC_FP32,
        JOIN_FP32,
        DEC_FP32,
    )


def test_int8_decoder_is_used_when_the_fp32_one_is_absent(onnx_dir: Path) -> None:
    (onnx_dir / DEC_FP32).unlink()
    assert open_bundle(onnx_dir).decoder.name == DEC_INT8


def test_missing_requested_precision_names_what_exists_and_the_setting(
    assets: Path, tmp_path: Path
) -> None:
    root = make_onnx_dir(assets, tmp_path / "m", encoders=(ENC_FP32,))
    with pytest.raises(ModelError) as info:
        open_bundle(root, precision="int8")
    message = str(info.value)
    assert ENC_INT8 in message
    assert ENC_FP32 in message
    assert 'model.precision = "fp32"' in message
    assert info.value.exit_code == ExitCode.MODEL


def test_missing_encoder_says_to_pull(assets: Path, tmp_path: Path) -> None:
    root = make_onnx_dir(assets, tmp_path / "m", encoders=())
    with pytest.raises(ModelError, match=r"no encoder .*kwsd models pull"):
        open_bundle(root)


@pytest.mark.parametrize("name", ["tokens.txt", "bpe.model"])
def test_missing_vocabulary_file_is_named(onnx_dir: Path, name: str) -> None:
    (onnx_dir / name).unlink()
    with pytest.raises(ModelError) as info:
        open_bundle(onnx_dir)
    assert name in str(info.value)
    assert "kwsd models pull" in str(info.value)


def test_directory_that_does_not_exist_is_missing_with_exit_78(tmp_path: Path) -> None:
    with pytest.raises(ModelMissingError) as info:
        open_bundle(tmp_path / "nowhere")
    assert info.value.exit_code == ExitCode.NOT_CONFIGURED
    assert int(info.value.exit_code) == 78
    assert "kwsd models pull" in str(info.value)


def test_directory_without_model_files_is_missing(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("nothing here\n")
    assert detect_layout(tmp_path) is None
    with pytest.raises(ModelMissingError, match="holds no model files"):
        open_bundle(tmp_path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("victim", "damage", "expected"),
    [
        (ENC_INT8, lambda p: p.write_bytes(b""), "is empty"),
        (DEC_FP32, _truncate, "is truncated"),
        (JOIN_INT8, _truncate, "is truncated"),
        (
            ENC_INT8,
            lambda p: p.write_text(
                "version https://git-lfs.github.com/spec/v1\noid sha256:1e72\nsize 4840000\n"
            ),
            "Git LFS pointer",
        ),
        (DEC_FP32, lambda p: p.write_text("<!DOCTYPE html><html>Not Found</html>"), "HTML"),
        ("bpe.model", _truncate, "is truncated"),
        ("bpe.model", lambda p: p.write_bytes(b"\x08\x01"), "not a SentencePiece model"),
    ],
)
def test_corrupt_onnx_and_bpe_files_are_named_with_the_fix(
    onnx_dir: Path, victim: str, damage: object, expected: str
) -> None:
    assert callable(damage)
    damage(onnx_dir / victim)
    with pytest.raises(ModelError) as info:
        open_bundle(onnx_dir)
    message = str(info.value)
    assert str(onnx_dir / victim) in message
    assert expected in message
    assert "kwsd models verify" in message
    assert "kwsd models pull --force" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("<blk> 0\n<sos/eos>\n", "line 2"),
        ("<blk> 0\nA 1\nB 1\n", "repeats id 1"),
        ("<blk> 0\nA 2\n", "id 1 is missing"),
        ("", "is empty"),
    ],
)
def test_malformed_tokens_txt(onnx_dir: Path, content: str, expected: str) -> None:
    (onnx_dir / "tokens.txt").write_text(content, encoding="utf-8")
    with pytest.raises(ModelError) as info:
        open_bundle(onnx_dir)
    assert "tokens.txt" in str(info.value)
    assert expected in str(info.value)


def test_files_from_different_exports_are_refused(onnx_dir: Path) -> None:
    (onnx_dir / JOIN_INT8).rename(onnx_dir / "joiner-epoch-99-avg-1.int8.onnx")
    (onnx_dir / JOIN_FP32).unlink()
    with pytest.raises(ModelError, match="not from one export"):
        open_bundle(onnx_dir)


def test_encoder_override_keeps_decoder_joiner_and_vocabulary(assets: Path) -> None:
    standin = assets / "standin" / "encoder-standin.onnx"
    bundle = open_bundle(assets / "model", encoder_override=standin)
    assert bundle.encoder == standin
    assert bundle.decoder == assets / "model" / DEC_FP32
    assert bundle.joiner == assets / "model" / JOIN_INT8


def test_missing_encoder_override_is_an_error(onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"encoder override .* does not exist"):
        open_bundle(onnx_dir, encoder_override=tmp_path / "nope.onnx")


def test_assets_bundle_uses_the_standin_encoder(assets: Path) -> None:
    bundle = assets_bundle(assets)
    assert bundle.encoder == assets / "standin" / "encoder-standin.onnx"
    assert bundle.root == assets / "model"
    session = ort.InferenceSession(str(bundle.encoder), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "encoder_out"


def test_wrong_assets_dir_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as info:
        assets_bundle(tmp_path)
    assert "KWSD_ASSETS" in str(info.value)
    assert "model/" in str(info.value)


# ---------------------------------------------------------------------------- CoreML layout


def test_coreml_bundle_opens_with_its_config(assets: Path, tmp_path: Path) -> None:
    root = make_coreml_dir(assets, tmp_path / "coreml")
    bundle = open_bundle(root)
    assert bundle.layout == "coreml"
    assert bundle.encoder == root / "encoder.mlmodelc"
    assert bundle.decoder == root / "decoder.mlmodelc"
    assert bundle.joiner == root / "joiner.mlmodelc"
    assert bundle.config is not None
    assert bundle.config["decoder"]["vocabSize"] == 500


@pytest.mark.parametrize("part", ["encoder", "decoder", "joiner"])
def test_coreml_missing_part_is_named(assets: Path, tmp_path: Path, part: str) -> None:
    root = make_coreml_dir(assets, tmp_path / "coreml")
    (root / f"{part}.mlmodelc").rmdir()
    with pytest.raises(ModelError) as info:
        open_bundle(root)
    assert f"{part}.mlmodelc" in str(info.value)
    assert "kwsd models pull" in str(info.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), (None, "config.json is missing")],
)
def test_coreml_bad_config_json(
    assets: Path, tmp_path: Path, content: str | None, expected: str
) -> None:
    root = make_coreml_dir(assets, tmp_path / "coreml")
    if content is None:
        (root / "config.json").unlink()
    else:
        (root / "config.json").write_text(content, encoding="utf-8")
    with pytest.raises(ModelError) as info:
        open_bundle(root)
    assert "config.json" in str(info.value)
    assert expected in str(info.value)


def test_coreml_vocabulary_mismatch_is_refused(assets: Path, tmp_path: Path) -> None:
    root = make_coreml_dir(assets, tmp_path / "coreml", vocab_size=5000)
    with pytest.raises(ModelError, match=r"vocabSize 5000 .* 500 tokens"):
        open_bundle(root)


def test_coreml_part_that_is_a_file_or_incomplete(assets: Path, tmp_path: Path) -> None:
    root = make_coreml_dir(assets, tmp_path / "coreml")
    (root / "joiner.mlmodelc").rmdir()
    (root / "joiner.mlmodelc").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"joiner\.mlmodelc must be a directory"):
        open_bundle(root)
    (root / "joiner.mlmodelc").unlink()
    (root / "joiner.mlmodelc").mkdir()
    (root / "joiner.mlmodelc" / "coremldata.bin").write_bytes(b"")
    with pytest.raises(ModelError, match=r"joiner\.mlmodelc is incomplete"):
        open_bundle(root)


def test_coreml_missing_tokens(assets: Path, tmp_path: Path) -> None:
    root = make_coreml_dir(assets, tmp_path / "coreml")
    (root / "tokens.txt").unlink()
    with pytest.raises(ModelError, match=r"tokens\.txt is missing"):
        open_bundle(root)


def test_encoder_override_is_refused_for_coreml(assets: Path, tmp_path: Path) -> None:
    root = make_coreml_dir(assets, tmp_path / "coreml")
    with pytest.raises(ModelError, match="only works with the ONNX layout"):
        open_bundle(root, encoder_override=assets / "standin" / "encoder-standin.onnx")
