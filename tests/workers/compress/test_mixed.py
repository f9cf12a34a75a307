"""A mixed-bit conversion: the -mixed-bit repo, its recipe file, every layer at its recipe's width, and a
package held to a recipe it was not made with failing."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from workers.compress.recipe import read_recipe
from workers.names import Attention
from workers.validate.checks import recipe_check
from workers.validate.readback import read_package

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mixed_conversion(sd1_pipeline: Path, tmp_path_factory: pytest.TempPathFactory):
    from workers.convert.engine import convert_pipeline
    from workers.options import ConvertOptions
    from workers.source.resolve import resolve_source

    out = tmp_path_factory.mktemp("mixed-out")
    options = ConvertOptions(attentions=(Attention.ORIGINAL,), bits="mixed:4.5", components=("unet",),
                             mixed_min_weights=2048)
    return out, convert_pipeline(resolve_source(str(sd1_pipeline)), out, options)


def test_the_mixed_bit_repo_holds_packages_palettized_as_its_recipe_says(mixed_conversion) -> None:
    out, report = mixed_conversion
    assert report.repos == {"float16": "coreml-tiny-sd1", "palettized": "coreml-tiny-sd1-mixed-bit"}
    (mixed,) = [p for p in report.packages if p.repo.endswith("-mixed-bit")]
    summary = report.recipes["unet"]
    assert mixed.status == "passed" and mixed.precision == f"mixed-{summary['bits']:.2f}bit"
    assert abs(summary["bits"] - 4.5) <= 0.05 and abs(summary["predicted_psnr"] - summary["measured_psnr"]) < 2.5
    assert {c.name: c.status for c in mixed.checks}["recipe"] == "passed"
    file = out / summary["file"]
    assert file.parent.name == "recipes" and file.name == "tiny-sd1_palettization_recipe.json"
    widths = read_recipe(file)
    assert sum(widths.values()) and json.loads(file.read_text())["model_version"] == "tiny-sd1"

    contents = read_package(out / mixed.path)
    assert contents.lut_sizes <= {2 ** b for b in (1, 2, 4, 6, 8)} and len(contents.lut_sizes) > 1
    direct = 0  # layers whose constant keeps the module's name: their palettes have the recipe's sizes
    for name, bits in widths.items():
        key = "unet_" + name.replace(".", "_") + "_weight"
        if key in contents.weights:
            direct += 1
            assert contents.palettes.get(key, 2 ** 16) == 2 ** bits, name
    assert direct > len(widths) // 2


def test_a_package_held_to_a_recipe_it_was_not_made_with_fails(mixed_conversion) -> None:
    out, report = mixed_conversion
    (mixed,) = [p for p in report.packages if p.repo.endswith("-mixed-bit")]
    contents = read_package(out / mixed.path)
    applied = {name: int(math.log2(size)) for name, size in contents.palettes.items()}
    assert recipe_check(contents, applied).status == "passed"
    low, high = min(applied, key=applied.get), max(applied, key=applied.get)
    swapped = {**applied, low: applied[high], high: applied[low]}
    check = recipe_check(contents, swapped)
    assert check.status == "failed" and "2 of" in check.detail and low in check.detail


def test_the_card_says_what_the_recipe_is_and_what_it_measured(mixed_conversion) -> None:
    from workers.package.card import render_card

    out, report = mixed_conversion
    card = render_card(report, kind="palettized", repo_id="org/coreml-tiny-sd1-mixed-bit", sibling_id=None,
                       variants=["original"], compiled=False)
    summary = report.recipes["unet"]
    assert "# Core ML tiny-sd1 (mixed-bit)" in card and "- mixed-bit" in card
    assert "## Mixed-bit palettization" in card and "`mixed:4.5`" in card
    assert "[`recipes/tiny-sd1_palettization_recipe.json`](recipes/tiny-sd1_palettization_recipe.json)" in card
    assert f"| **this recipe** | **{summary['bits']:.2f}** | **{summary['measured_psnr']:.1f} dB**" in card
    uniform4 = next(p for p in summary["passes"] if p["recipe"] == "uniform_4")
    assert f"| uniform 4-bit | {uniform4['bits']:.2f} | {uniform4['measured']:.1f} dB |" in card
    float16 = render_card(report, kind="float16", repo_id="org/coreml-tiny-sd1", sibling_id=None,
                          variants=["original"], compiled=False)
    assert "Mixed-bit" not in float16
