"""Mixed-bit recipes: the widths that reach an average or a PSNR, better than ignoring the analysis, and the
recipe file in the shape of Apple's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.compress.recipe import (Target, choose, parse_target, read_recipe, recipe_file_name, recipe_key,
                                     write_recipe)
from workers.compress.sensitivity import measure_mse, psnr_of
from workers.errors import OptionsError


@pytest.mark.slow
@pytest.mark.parametrize("bits", [3.0, 4.5, 6.0])
def test_a_recipe_meets_its_average_from_below(unet_analysis, bits: float) -> None:
    sensitivity = unet_analysis[0]
    widths = choose(sensitivity, Target(bits=bits))
    assert bits - 0.05 <= sensitivity.average_bits(widths) <= bits + 1e-9
    assert set(widths.values()) <= {1, 2, 4, 6, 8, 16}


@pytest.mark.slow
def test_the_analysed_recipe_beats_one_width_everywhere_at_the_same_size(unet_analysis) -> None:
    sensitivity, layers, run, reference = unet_analysis
    uniform = {layer.name: 4 for layer in sensitivity.layers}
    ours = choose(sensitivity, Target(bits=sensitivity.average_bits(uniform)))
    assert sensitivity.average_bits(ours) <= sensitivity.average_bits(uniform)

    def measured(widths: dict[str, int]) -> float:
        return psnr_of(sensitivity.peak, measure_mse(layers, run, reference, widths))

    assert measured(ours) > measured(uniform) + 1.0


@pytest.mark.slow
def test_a_psnr_target_takes_the_smallest_recipe_predicted_to_reach_it(unet_analysis) -> None:
    sensitivity = unet_analysis[0]
    widths = choose(sensitivity, Target(psnr=35.0))
    assert sensitivity.predicted_psnr(widths) >= 35.0
    lower = choose(sensitivity, Target(psnr=30.0))
    assert sensitivity.average_bits(lower) < sensitivity.average_bits(widths)


@pytest.mark.slow
def test_the_recipe_file_reads_back(unet_analysis, tmp_path: Path) -> None:
    sensitivity = unet_analysis[0]
    widths = choose(sensitivity, Target(bits=4.5))
    key = recipe_key(sensitivity.average_bits(widths))
    path = write_recipe(tmp_path / recipe_file_name("org/model"), model="org/model", source_sha="abc",
                        sensitivity=sensitivity, recipes={key: widths}, baselines={key: 31.0})
    assert path.name == "org-model_palettization_recipe.json" and key.startswith("recipe_4.")
    data = json.loads(path.read_text())
    assert data["model_version"] == "org/model" and data["baselines"] == {key: 31.0}
    assert read_recipe(path) == widths == read_recipe(path, key)
    data["recipes"][key][next(iter(widths))] = 3
    path.write_text(json.dumps(data))
    with pytest.raises(OptionsError, match="width 3, not one of"):
        read_recipe(path)
    path.write_text("{}")
    with pytest.raises(OptionsError, match="is not a palettization recipe file"):
        read_recipe(path)


@pytest.mark.parametrize("text, expected", [("mixed:4.5", Target(bits=4.5)), ("mixed:psnr=40", Target(psnr=40.0)),
                                            (" mixed:6 ", Target(bits=6.0))])
def test_targets_parse(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize("text, message", [("mixed", "not a mixed-bit target"), ("mixed:1.5", "between 2 and 8"),
                                           ("mixed:psnr=", "not a mixed-bit target"), ("mixed:9", "between 2 and 8")])
def test_bad_targets_are_refused_in_one_line(text: str, message: str) -> None:
    with pytest.raises(OptionsError, match=message) as caught:
        parse_target(text)
    assert "\n" not in str(caught.value) and caught.value.hint
