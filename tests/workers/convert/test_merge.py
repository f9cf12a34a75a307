"""The merge stage's fan-in of a job's conversion parts: mixed-bit recipes and their files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.convert.merge import merge_outputs
from workers.errors import OutputError
from workers.validate.report import Report

FILE = "coreml-x-mixed-bit/recipes/x_palettization_recipe.json"


def _part(folder: Path, widths: dict[str, int]) -> Path:
    report = Report({"id": "x", "sha": "a" * 40}, {"attentions": ["original"]}, {"latent_height": 8}, {},
                    {"float16": "coreml-x", "palettized": "coreml-x-mixed-bit"},
                    recipes={"unet": {"file": FILE, "bits": 4.5}})
    (folder / FILE).parent.mkdir(parents=True)
    (folder / FILE).write_text(json.dumps({"recipes": {"recipe_4.50_bit_mixedpalette": widths},
                                           "analysis": {"seconds": len(str(folder))}}))
    report.save(folder)
    return folder


def test_each_recipe_and_its_file_are_taken_once(tmp_path: Path) -> None:
    parts = [_part(tmp_path / name, {"conv_in": 8, "conv_out": 6}) for name in ("one", "two")]
    merged = merge_outputs(parts, tmp_path / "out")
    assert merged.recipes == {"unet": {"file": FILE, "bits": 4.5}}
    assert json.loads((tmp_path / "out" / FILE).read_text())["recipes"] == \
        {"recipe_4.50_bit_mixedpalette": {"conv_in": 8, "conv_out": 6}}
    assert Report.load(tmp_path / "out").recipes == merged.recipes


def test_parts_that_chose_different_widths_are_refused(tmp_path: Path) -> None:
    parts = [_part(tmp_path / "one", {"conv_in": 8}), _part(tmp_path / "two", {"conv_in": 4})]
    with pytest.raises(OutputError, match="mixed-bit recipes for unet differ"):
        merge_outputs(parts, tmp_path / "out")
