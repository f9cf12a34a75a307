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
                             mixed_min_weights=2048, analyses=str(out.parent / "analyses"))
    return out, convert_pipeline(_pinned(resolve_source(str(sd1_pipeline))), out, options)


def _pinned(source):
    """A local source as if resolved at a Hub commit: its analysis is kept and read back by that commit."""
    from dataclasses import replace

    return replace(source, sha="5" * 40)


def test_a_reconversion_of_the_same_weights_reads_the_analysis_back(mixed_conversion, sd1_pipeline: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.compress import mixed
    from workers.convert.engine import convert_pipeline
    from workers.options import ConvertOptions
    from workers.source.resolve import resolve_source

    out, report = mixed_conversion
    analyses = out.parent / "analyses"
    assert report.recipes["unet"]["reused"] is False and len(list(analyses.glob("*.json"))) == 1

    def analyse(*args, **kwargs):
        raise AssertionError("analysed again")

    monkeypatch.setattr(mixed, "analyse", analyse)
    again = out.parent / "again"
    options = ConvertOptions(attentions=(Attention.ORIGINAL,), bits="mixed:4.5", components=("unet",),
                             mixed_min_weights=2048, analyses=str(analyses))
    second = convert_pipeline(_pinned(resolve_source(str(sd1_pipeline))), again, options)
    summary, first = second.recipes["unet"], report.recipes["unet"]
    assert summary["reused"] is True
    assert {k: summary[k] for k in ("bits", "widths", "predicted_psnr", "measured_psnr")} == \
        {k: first[k] for k in ("bits", "widths", "predicted_psnr", "measured_psnr")}
    assert read_recipe(again / summary["file"]) == read_recipe(out / first["file"])
    # another commit of the same repo is analysed afresh
    with pytest.raises(Exception, match="analysed again"):
        from dataclasses import replace

        convert_pipeline(replace(_pinned(resolve_source(str(sd1_pipeline))), sha="6" * 40), out.parent / "third",
                         options)


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
    # the plot of every recipe the analysis measured, a file beside the recipe that the card shows
    assert summary["plot"] == "coreml-tiny-sd1-mixed-bit/recipes/tiny-sd1_size_psnr.svg"
    assert "for every recipe the analysis measured](recipes/tiny-sd1_size_psnr.svg)" in card
    assert (out / summary["plot"]).read_text().count("<title>") == len(summary["passes"]) + 1
    float16 = render_card(report, kind="float16", repo_id="org/coreml-tiny-sd1", sibling_id=None,
                          variants=["original"], compiled=False)
    assert "Mixed-bit" not in float16


def test_a_stored_analysis_reads_back_whole_and_a_damaged_one_is_analysed_again(unet_analysis, tmp_path: Path) -> None:
    from workers.compress.mixed import analysis_key, stored_analysis

    sensitivity = unet_analysis[0]
    key = analysis_key({"sha": "a" * 40, "component": "unet"})
    assert key != analysis_key({"sha": "b" * 40, "component": "unet"})
    with stored_analysis(tmp_path, key) as (found, store):
        assert found is None
        store(sensitivity)
    with stored_analysis(tmp_path, key) as (found, _):
        assert found is not None and found.to_dict() == sensitivity.to_dict()
    (tmp_path / f"{key}.json").write_text('{"layers": [')
    with stored_analysis(tmp_path, key) as (found, _):
        assert found is None


def test_a_recipe_in_palettes_per_group_of_channels(mixed_conversion, tmp_path: Path) -> None:
    """``--bits mixed:… --group-size N``: every layer at its recipe's width, each in one palette per N output
    channels (iOS 18), the recipe's float16 layers left float16."""
    import coremltools as ct

    from workers.compress.palettize import palettize_package

    out, report = mixed_conversion
    (float16,) = [p for p in report.packages if p.precision == "float16"]
    (mixed,) = [p for p in report.packages if p.repo.endswith("-mixed-bit")]
    applied = {name: int(math.log2(size)) for name, size in read_package(out / mixed.path).palettes.items()}
    grouped = tmp_path / "grouped.mlpackage"
    palettize_package(out / float16.path, component="unet", group_size=4, target="iOS18", widths=applied).save(
        str(grouped))
    contents = read_package(grouped)
    assert recipe_check(contents, applied).status == "passed"
    assert not set(contents.palettes) - set(applied)  # nothing palettized the recipe leaves float16
    assert ct.models.MLModel(str(grouped), skip_model_load=True).get_spec().specificationVersion == 9
    luts = [op.inputs["lut"].val for op in contents.program.functions["main"].operations
            if op.op_type == "constexpr_lut_to_dense"]
    assert luts and max(lut.shape[0] for lut in luts) > 1  # several palettes per layer
