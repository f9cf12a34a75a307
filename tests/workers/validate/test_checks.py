"""PSNR, structural checks and the Core ML prediction check."""

from __future__ import annotations

import math
import platform

import numpy as np
import pytest
import torch

from workers.convert.features import TensorSpec
from workers.validate.readback import PackageContents
from workers.validate.checks import coreml_check, psnr, psnr_check, structure_check
from workers.validate.thresholds import ValidationBars


def test_psnr_is_apples_formula() -> None:
    ref = np.array([0.0, 1.0, -2.0, 4.0])
    cand = np.array([0.1, 1.0, -2.0, 4.0])
    expected = 20 * math.log10((4.0 + 1e-5) / (math.sqrt(0.01 / 4) + 1e-10))
    assert psnr(ref, cand) == pytest.approx(expected)
    assert psnr(ref, ref) > 200


def test_psnr_check_takes_the_worst_output_and_fails_on_nan() -> None:
    ref = {"a": np.ones(4), "b": np.ones(4)}
    good = psnr_check("psnr_torch", "torch", ref, {"a": np.ones(4), "b": np.ones(4) * 1.1}, ["a", "b"], 15)
    assert good.status == "passed" and good.value == pytest.approx(20 * math.log10(1.1 / 0.1), abs=0.01)
    assert "a " in good.detail and "b " in good.detail
    nan = psnr_check("psnr_torch", "torch", ref, {"a": np.array([1, np.nan, 1, 1]), "b": np.ones(4)}, ["a", "b"], 15)
    assert nan.failed and "not finite" in nan.detail and nan.value is None


def test_bars_have_documented_defaults() -> None:
    bars = ValidationBars()
    assert (bars.layout, bars.float16, bars.coreml_float16) == (60.0, 45.0, 35.0)
    assert [bars.for_bits(b) for b in (8, 6, 4, 2, 1)] == [35.0, 25.0, 15.0, 10.0, 3.0]
    assert bars.shipped(None) == 35.0 and bars.shipped(6) == 25.0
    assert bars.for_bits(None) == 45.0


def _contents(**changes) -> PackageContents:
    base = dict(inputs=[("x", (1, 3), "float16")], outputs=[("y", (1, 3), "float32")], metadata={}, weights={},
                lut_ops=5, lut_sizes={64}, unpalettized_large=[])
    return PackageContents(**{**base, **changes})


def test_structure_check_catches_names_shapes_dtypes_and_missing_palettization() -> None:
    inputs, outputs = [TensorSpec("x", (1, 3), "float16", "")], [TensorSpec("y", (1, 3), "float32", "")]
    assert structure_check(_contents(), inputs, outputs, bits=6).status == "passed"
    assert structure_check(_contents(inputs=[("input", (1, 3), "float16")]), inputs, outputs, None).failed
    assert structure_check(_contents(outputs=[("y", (1, 4), "float32")]), inputs, outputs, None).failed
    assert structure_check(_contents(outputs=[("y", (1, 3), "float16")]), inputs, outputs, None).failed
    failed = structure_check(_contents(unpalettized_large=["w_to_fp16"]), inputs, outputs, bits=6)
    assert failed.failed and "1 large weights not palettized" in failed.detail
    assert "expected 16" in structure_check(_contents(), inputs, outputs, bits=4).detail
    assert "no palettized weights" in structure_check(_contents(lut_ops=0), inputs, outputs, bits=6).detail


@pytest.mark.skipif(platform.system() == "Darwin", reason="Core ML runs on macOS")
def test_core_ml_check_says_it_needs_macos_elsewhere(tmp_path) -> None:
    check = coreml_check(tmp_path / "x.mlpackage", {}, [], {}, [], 35.0)
    assert check.status == "skipped" and check.detail == "needs macOS" and check.threshold == 35.0


@pytest.mark.macos
def test_core_ml_prediction_reaches_apples_bar(sd1_conversion) -> None:
    _, report = sd1_conversion
    for package in report.packages:
        if package.precision != "float16" or package.shared_from:
            continue
        check = {c.name: c for c in package.checks}["psnr_coreml"]
        assert check.status == "passed" and check.value >= 35.0, package.path


def test_equal_parameters_stored_once_are_all_read_back() -> None:
    """coremltools keeps one copy of identical constants (zero-initialised biases); each is matched to it."""
    import torch

    from workers.validate.readback import account_parameters, load_read_back

    module = torch.nn.Sequential(torch.nn.Linear(4, 3000), torch.nn.Linear(3000, 3000), torch.nn.Linear(3000, 3000))
    with torch.no_grad():
        module[1].bias.uniform_(0.1, 0.2)
        module[2].bias.copy_(module[1].bias)
    weights = {f"{i}_weight": m.weight.detach().half().numpy() for i, m in enumerate(module)}
    weights["0_bias"] = module[0].bias.detach().half().numpy()
    weights["1_bias"] = module[1].bias.detach().half().numpy()  # the one copy of both equal biases
    accounting, check = account_parameters(module, weights)
    assert check.status == "passed", check.detail
    assert accounting.mapping["2.bias"] == accounting.mapping["1.bias"] == "1_bias"
    weights["1_bias"] = np.ones(3000, dtype=np.float16)  # a package whose bias differs is still caught
    accounting, check = account_parameters(module, weights)
    assert check.failed and "2.bias" in check.detail
    load_read_back(module, weights, accounting)  # the package's values, in place
    assert torch.equal(module[1].bias, torch.ones(3000))


def test_identities_count_as_folded_and_nothing_else_does() -> None:
    """A scale of ones or a shift of zeros may be gone from the package; any other value must be there."""
    import torch

    from workers.validate.readback import account_parameters

    norm = torch.nn.LayerNorm(8)  # initial ones and zeros
    accounting, check = account_parameters(norm, {})
    assert check.status == "passed" and accounting.folded == {"weight", "bias"}
    assert "2 folded as identities" in check.detail
    with torch.no_grad():
        norm.weight[3] = 2.0
    accounting, check = account_parameters(norm, {})
    assert check.failed and "not found in package: weight" in check.detail and accounting.folded == {"bias"}
    # a palettized package must have each parameter under the float16 package's name
    float16, _ = account_parameters(norm, {"w": norm.weight.detach().half().numpy()})
    assert float16.mapping == {"weight": "w"}
    _, palettized = account_parameters(norm, {"w": np.zeros(8, np.float16)}, float16)
    assert palettized.status == "passed"
    _, palettized = account_parameters(norm, {"other": norm.weight.detach().half().numpy()}, float16)
    assert palettized.failed and "weight" in palettized.detail


def test_float32_layers_compute_float16_weights_exactly_in_float32_and_restore_them() -> None:
    """The lean read-back: each layer's float16 weights widened only while it runs give the float32 module's
    result exactly; afterwards (also after a failure) the layers hold their own float16 parameters again."""
    import copy

    from workers.validate.checks import float32_layers

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.SiLU(),
                                 torch.nn.Conv2d(8, 4, 1)).half()
    widened = copy.deepcopy(module).float()
    x = torch.randn(2, 3, 9, 9)
    before = {name: p for name, p in module.named_parameters()}
    with float32_layers(module):
        out = module(x)
    assert torch.equal(out, widened(x))
    assert {name: p for name, p in module.named_parameters()} == before
    assert all(p.dtype == torch.float16 for p in module.parameters())
    with pytest.raises(RuntimeError), float32_layers(module):
        module(torch.randn(2, 5, 9, 9))  # the wrong channel count: the first layer raises
    assert {name: p for name, p in module.named_parameters()} == before
    with pytest.raises(RuntimeError):  # outside, float16 weights meet float32 inputs as before
        module(x)


def test_a_batch_run_one_sample_at_a_time_gives_the_batchs_outputs() -> None:
    from workers.validate.checks import run_module

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(8, 4)

        def forward(self, x, t):
            self.seen = x.shape[0]
            return self.layer(x) * t[:, None], x.sum(dim=1)

    torch.manual_seed(0)
    module = Pair()
    inputs = {"x": torch.randn(3, 8), "t": torch.tensor([1.0, 2.0, 3.0])}
    whole = run_module(module, inputs, ["y", "s"])
    assert module.seen == 3
    one_by_one = run_module(module, inputs, ["y", "s"], per_sample=True)
    assert module.seen == 1
    for name in ("y", "s"):
        assert one_by_one[name].shape == whole[name].shape and np.allclose(one_by_one[name], whole[name], atol=1e-6)
    uneven = {"x": torch.randn(3, 8), "t": torch.tensor([2.0])}  # batches differ: the whole batch at once
    run_module(module, uneven, ["y", "s"], per_sample=True)
    assert module.seen == 3
