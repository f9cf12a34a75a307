"""`convert` on a single-file checkpoint: the same packages as the pipeline it was written from, its provenance
in the report and the card."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from service.cli import app
from workers.devtools.checkpoint import write_checkpoint
from workers.package.card import render_card
from workers.validate.output import read_report


def test_a_folder_with_one_checkpoint_converts_through_convert(sd1_pipeline: Path, tmp_path: Path) -> None:
    """`convert FOLDER --config PIPELINE`: the UNet package of the checkpoint is the pipeline's, byte for byte."""
    folder = tmp_path / "repo"
    write_checkpoint(sd1_pipeline, folder / "model.safetensors")
    (folder / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n# A fine-tune\n")
    common = ["--attention", "original", "--bits", "0", "--components", "unet"]
    runner = CliRunner()
    ours = runner.invoke(app, ["convert", str(folder), "--config", str(sd1_pipeline), "--source-id",
                               "org/fine-tune", "-o", str(tmp_path / "ours"), *common])
    assert ours.exit_code == 0, ours.output
    theirs = runner.invoke(app, ["convert", str(sd1_pipeline), "--source-id", "org/fine-tune", "-o",
                                 str(tmp_path / "theirs"), *common])
    assert theirs.exit_code == 0, theirs.output
    weights = sorted((tmp_path / "ours").rglob("weight.bin"))
    assert weights and all(w.read_bytes() == (tmp_path / "theirs" / w.relative_to(tmp_path / "ours")).read_bytes()
                           for w in weights)
    report = json.loads(next((tmp_path / "ours").rglob("report.json")).read_text())
    assert report["source"]["checkpoint"]["file"] == "model.safetensors"
    assert report["source"]["config"]["path"] == str(sd1_pipeline)
    card = render_card(read_report(tmp_path / "ours"), kind="float16", repo_id="org/coreml-fine-tune",
                       sibling_id=None, variants=["original"], compiled=False)
    assert f"Single-file checkpoint: `model.safetensors` (sha256 `{report['source']['checkpoint']['sha256']}`)" in card
    assert "Configs (`--config`, for the single-file checkpoint)" in card
