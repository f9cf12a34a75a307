"""PSNR, structural checks and the Core ML prediction check."""

from __future__ import annotations

import math
import platform

import numpy as np
import pytest

from workers.specs import TensorSpec
from workers.validate import PackageContents, ValidationBars, coreml_check, psnr, psnr_check, structure_check


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
    assert [bars.for_bits(b) for b in (8, 6, 4, 2, 1)] == [35.0, 25.0, 15.0, 5.0, 0.0]
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

    from workers.validate import load_read_back, match_parameters

    module = torch.nn.Sequential(torch.nn.Linear(4, 3000), torch.nn.Linear(3000, 3000), torch.nn.Linear(3000, 3000))
    with torch.no_grad():
        module[1].bias.zero_()
        module[2].bias.zero_()
    weights = {f"{i}_weight": m.weight.detach().half().numpy() for i, m in enumerate(module)}
    weights["0_bias"] = module[0].bias.detach().half().numpy()
    weights["1_bias"] = np.zeros(3000, dtype=np.float16)  # the one copy of both zero biases
    mapping, check = match_parameters(module, weights, threshold=2048)
    assert check.status == "passed", check.detail
    assert mapping["2.bias"] == mapping["1.bias"] == "1_bias"
    weights["1_bias"] = np.ones(3000, dtype=np.float16)  # a package whose bias differs is still caught
    mapping, check = match_parameters(module, {k: v for k, v in weights.items()}, threshold=2048)
    assert check.failed and "2.bias" in check.detail
    load_read_back(module, weights, mapping)  # the package's values, in place; unmapped ones rounded
    assert torch.equal(module[2].bias, torch.zeros(3000))
    assert torch.equal(module[1].bias, torch.ones(3000)) and torch.equal(module[0].bias, module[0].bias.half().float())
