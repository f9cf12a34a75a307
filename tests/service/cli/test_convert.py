"""`convert` on a single-file checkpoint: the same packages as the pipeline it was written from, its provenance
in the report and the card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from typer.testing import CliRunner

from service.cli import app
from workers.devtools.checkpoint import write_checkpoint
from workers.package.card import render_card
from workers.validate.output import read_report

COMMON = ["--attention", "original", "--bits", "0", "--components", "unet", "--source-id", "org/fine-tune"]


@pytest.fixture(scope="module")
def plain(sd1_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD1 pipeline's UNet, original layout, float16: what both kinds of source are compared with."""
    out = tmp_path_factory.mktemp("plain") / "out"
    result = CliRunner().invoke(app, ["convert", str(sd1_pipeline), "-o", str(out), *COMMON])
    assert result.exit_code == 0, result.output
    return out


def test_a_folder_with_one_checkpoint_converts_through_convert(sd1_pipeline: Path, plain: Path, tmp_path: Path) -> None:
    """`convert FOLDER --config PIPELINE`: the UNet package of the checkpoint is the pipeline's, byte for byte."""
    folder = tmp_path / "repo"
    write_checkpoint(sd1_pipeline, folder / "model.safetensors")
    (folder / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n# A fine-tune\n")
    ours = CliRunner().invoke(app, ["convert", str(folder), "--config", str(sd1_pipeline), "-o",
                                    str(tmp_path / "ours"), *COMMON])
    assert ours.exit_code == 0, ours.output
    weights = sorted((tmp_path / "ours").rglob("weight.bin"))
    assert weights and all(w.read_bytes() == (plain / w.relative_to(tmp_path / "ours")).read_bytes() for w in weights)
    report = json.loads((tmp_path / "ours" / "report.json").read_text())
    assert report["source"]["checkpoint"]["file"] == "model.safetensors"
    assert report["source"]["config"]["path"] == str(sd1_pipeline)
    card = render_card(read_report(tmp_path / "ours"), kind="float16", repo_id="org/coreml-fine-tune",
                       sibling_id=None, variants=["original"], compiled=False)
    assert f"Single-file checkpoint: `model.safetensors` (sha256 `{report['source']['checkpoint']['sha256']}`)" in card
    assert "Configs (`--config`, for the single-file checkpoint)" in card


def test_a_lora_changes_the_unet_a_package_without_it_fails_the_fused_reference(sd1_pipeline: Path, plain: Path,
                                                                                 tmp_path: Path) -> None:
    """`convert --lora` fuses before converting (its packages pass against the fused pipeline); the plain UNet
    package, held by `validate` to the report that names the LoRA, fails: `validate` fused it again."""
    from workers.devtools.lora import write_lora

    lora = write_lora(sd1_pipeline, tmp_path / "style" / "style.safetensors", kind="kohya")
    other = write_lora(sd1_pipeline, tmp_path / "detail" / "pytorch_lora_weights.safetensors", seed=1)
    runner = CliRunner()
    fused = runner.invoke(app, ["convert", str(sd1_pipeline), "--lora", f"{lora}:0.8", "--lora", f"{other.parent}:0.3",
                                "-o", str(tmp_path / "fused"), *COMMON])
    assert fused.exit_code == 0, fused.output
    report = read_report(tmp_path / "fused")
    assert report.source["lora0"]["scale"] == 0.8 and report.source["lora0"]["file"] == "style.safetensors"
    assert (report.source["lora1"]["scale"], report.source["lora1"]["path"]) == (0.3, str(other.parent))
    wrong = tmp_path / "plain"
    shutil.copytree(plain, wrong)
    shutil.copy(tmp_path / "fused" / "report.json", wrong / "report.json")
    result = runner.invoke(app, ["validate", str(wrong)])
    assert type(result.exception).__name__ == "ValidationError", result.output
    assert "unet (original, float16) psnr_torch" in str(result.exception)
