"""The mixed-bit sensitivity analysis: each layer's own error at each width, gains fitted on a few passes, and a
prediction of whole recipes that the held-out passes check."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workers.compress.sensitivity import Sensitivity, candidates, palettized, palettized_layers, part_of

pytestmark = pytest.mark.slow


def test_the_prediction_holds_on_recipes_it_was_not_fitted_on(unet_analysis) -> None:
    sensitivity = unet_analysis[0]
    held_out = [p for p in sensitivity.passes if not p["fitted"]]
    assert len(held_out) == 3 and len(sensitivity.passes) == 15
    for entry in held_out:
        assert abs(entry["predicted"] - entry["measured"]) < 2.5, entry  # the bar: 2 dB, with margin
    uniform = {p["recipe"]: p["measured"] for p in sensitivity.passes if p["recipe"].startswith("uniform_")}
    assert uniform["uniform_2"] < uniform["uniform_4"] < uniform["uniform_6"] < uniform["uniform_8"]


def test_every_candidate_is_large_and_the_rest_is_counted(unet_analysis) -> None:
    sensitivity = unet_analysis[0]
    assert sensitivity.layers and all(layer.weights > 2048 for layer in sensitivity.layers)
    assert all(layer.noise[1] > layer.noise[2] > layer.noise[4] > layer.noise[6] > layer.noise[8] >= 0
               for layer in sensitivity.layers)
    assert sensitivity.average_bits({}) == 16.0  # nothing palettized: every weight float16
    assert {layer.part for layer in sensitivity.layers} >= {"down_blocks/resnet", "up_blocks/attention"}
    again = Sensitivity.from_dict(sensitivity.to_dict())
    widths = {layer.name: 4 for layer in sensitivity.layers}
    assert again.predicted_psnr(widths) == pytest.approx(sensitivity.predicted_psnr(widths))


def test_palettized_layers_compute_with_palettes_and_give_the_weights_back() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    layers, other = candidates(model, min_weights=1000)
    assert list(layers) == ["0", "2"] and other == 0
    x = torch.randn(8, 64)
    before = [p.clone() for p in model.parameters()]
    with torch.no_grad():
        plain = model(x)
        with palettized_layers(layers, {"0": 2}):
            rough = model(x)
            assert torch.equal(model[0].weight, before[0])  # swapped only while the layer runs
        expected = model[2](model[1](nn.functional.linear(x, palettized(model[0].weight, 2), model[0].bias)))
    assert torch.equal(rough, expected) and not torch.equal(rough, plain)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert palettized(model[0].weight, 2).unique().numel() <= 4


def test_parts_follow_the_unet_blocks() -> None:
    assert part_of("down_blocks.0.attentions.1.proj_in") == "down_blocks/attention"
    assert part_of("mid_block.resnets.0.conv1") == "mid_block/resnet"
    assert part_of("up_blocks.2.upsamplers.0.conv") == "up_blocks/other"
    assert part_of("conv_in") == "edge/other"
