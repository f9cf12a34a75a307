"""The program executor: saved ML programs run with torch, against the torch originals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.errors import ValidationError
from tests.helpers import scale_constants, set_operation_input
from workers.execute import executor, kernels_base
from workers.convert.engine import convert_pipeline
from workers.options import ConvertOptions
from workers.execute.executor import ProgramError, execute_program
from workers.names import Attention
from workers.source.resolve import resolve_source
from workers.convert.geometry import read_geometry
from workers.convert.specs import SPECS
from workers.validate.readback import account_parameters, read_package
from workers.validate.checks import program_check, psnr, run_module


def _reference(source: Path, component: str, latent_size=None, batch_size: int = 2, seed: int = 5):
    """(inputs, float32 reference outputs, compared output names, loaded modules) for one component."""
    spec = SPECS[component]
    geometry = read_geometry(source, latent_size=latent_size, batch_size=batch_size)
    modules = spec.load(source, {}, True)
    outputs = spec.resolved_outputs(geometry, modules)
    inputs = spec.sample_inputs(geometry, seed)
    reference = run_module(spec.reference(modules), inputs, [t.name for t in outputs])
    return inputs, reference, spec.compared(geometry), modules


def _float16_packages(out: Path, report) -> list:
    return [p for p in report.packages if p.precision == "float16" and not p.shared_from]


@pytest.mark.parametrize("fixture", ["sd1", "sd2"])
def test_float32_mode_matches_the_torch_original_for_every_component_and_layout(
        request: pytest.FixtureRequest, fixture: str) -> None:
    source = request.getfixturevalue(f"{fixture}_pipeline")
    out, report = request.getfixturevalue(f"{fixture}_conversion")
    seen = set()
    for package in _float16_packages(out, report):
        inputs, reference, compared, _ = _reference(source, package.component)
        contents = read_package(out / package.path)
        result = execute_program(contents.program, inputs, precision="float32")
        for name in compared:
            assert psnr(reference[name], result[name]) >= 60, (package.path, name)
        seen.add((package.component, package.variant))
    assert {c for c, _ in seen} >= {"text_encoder", "unet", "vae_decoder", "vae_encoder"}
    assert {("unet", "original"), ("unet", "split_einsum_v2")} <= seen


def test_every_layout_at_2304_tokens_runs_in_both_precisions(sd2_pipeline: Path, sd2_layouts_conversion) -> None:
    out, report = sd2_layouts_conversion
    inputs, reference, compared, _ = _reference(sd2_pipeline, "unet", latent_size=(48, 48), batch_size=1)
    assert {p.variant for p in report.packages} == {"original", "split_einsum", "split_einsum_v2"}
    for package in report.packages:
        contents = read_package(out / package.path)
        for precision, bar in (("float32", 60), ("float16", 35)):
            result = execute_program(contents.program, inputs, precision=precision)
            assert psnr(reference["noise_pred"], result["noise_pred"]) >= bar, (package.variant, precision)
        checks = {c.name: c for c in package.checks}
        assert checks["psnr_program"].status == "passed" and checks["psnr_program"].threshold == 35.0


def test_sliced_and_fused_attention_give_the_same_result(sd2_pipeline: Path, sd2_layouts_conversion,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Attention as the program writes it (three operations, scores in slices), or block by block of rows."""
    out, report = sd2_layouts_conversion
    inputs, _, _, _ = _reference(sd2_pipeline, "unet", latent_size=(48, 48), batch_size=1)
    package = next(p for p in report.packages if p.variant == "original")
    program = read_package(out / package.path).program
    operations = list(program.functions["main"].operations)
    softmaxes = sum(op.op_type == "softmax" for op in operations)
    assert len(executor.attention_chains(operations, {"noise_pred"})) == softmaxes == 8  # every attention
    fused = {p: execute_program(program, inputs, precision=p)["noise_pred"] for p in ("float32", "float16")}
    monkeypatch.setattr(executor, "attention_chains", lambda operations, outputs: {})
    monkeypatch.setattr(kernels_base, "CHUNK_BYTES", 64 << 10)  # scores of 2,304 x 2,304 in many slices
    for precision, bar in (("float32", 120), ("float16", 60)):
        sliced = execute_program(program, inputs, precision=precision)["noise_pred"]
        assert psnr(sliced, fused[precision]) >= bar, precision


def _copy(out: Path, report, component: str, variant: str, tmp_path: Path) -> Path:
    package = next(p for p in report.packages if p.component == component and p.variant == variant
                   and p.precision == "float16")
    target = tmp_path / Path(package.path).name
    shutil.copytree(out / package.path, target)
    return target


def test_a_changed_attribute_fails_psnr_program(sd1_pipeline: Path, sd1_conversion, tmp_path: Path) -> None:
    out, report = sd1_conversion
    inputs, reference, compared, _ = _reference(sd1_pipeline, "text_encoder")
    package = _copy(out, report, "text_encoder", "original", tmp_path)
    good = program_check(read_package(package), inputs, reference, compared, 35.0)
    assert good.status == "passed"
    set_operation_input(package, "softmax", "axis", [1])  # over the heads instead of the keys
    bad = program_check(read_package(package), inputs, reference, compared, 35.0)
    assert bad.failed, bad  # the causal mask alone makes whole columns -inf: NaN


def test_negated_normalisation_constants_fail_weights_and_psnr_program(sd1_pipeline: Path, sd1_conversion,
                                                                        tmp_path: Path) -> None:
    out, report = sd1_conversion
    inputs, reference, compared, modules = _reference(sd1_pipeline, "unet")
    package = _copy(out, report, "unet", "original", tmp_path)
    export = SPECS["unet"].export_module(modules, Attention.ORIGINAL)
    _, weights = account_parameters(export, read_package(package).weights)
    assert weights.status == "passed"
    changed = scale_constants(package, ("batch_norm", "layer_norm"), ("gamma", "beta"), -1.0)
    assert len(changed) >= 40
    contents = read_package(package)
    _, weights = account_parameters(export, contents.weights)
    assert weights.failed and "norm" in weights.detail, weights
    program = program_check(contents, inputs, reference, compared, 35.0)
    assert program.failed, program


def test_float16_overflow_in_attention_fails_only_the_program(sd1_pipeline: Path, tmp_path: Path) -> None:
    """Self-attention logits beyond float16's 65,504: exact in float32, inf in float16.

    One channel of every self-attention's normalised input is shifted by 250 and feeds only the keys (through
    key weights of 200): each query's logits gain the same large amount for every key, which softmax
    ignores in float32, while in float16 the logits overflow.
    """
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention import BasicTransformerBlock

    source = tmp_path / "overflow"
    shutil.copytree(sd1_pipeline, source)
    unet = UNet2DConditionModel.from_pretrained(source / "unet")
    with torch.no_grad():
        for block in unet.modules():
            if isinstance(block, BasicTransformerBlock):
                block.norm1.bias[0] = 250.0
                block.attn1.to_q.weight[:, 0] = 0.0
                block.attn1.to_v.weight[:, 0] = 0.0
                block.attn1.to_k.weight[:, 0] = 200.0
    unet.save_pretrained(source / "unet", safe_serialization=True)
    options = ConvertOptions(components=("unet",), bits=None)
    with pytest.raises(ValidationError) as caught:
        convert_pipeline(resolve_source(str(source)), tmp_path / "out", options)
    assert len(caught.value.report.packages) == 2
    for package in caught.value.report.packages:
        checks = {c.name: c for c in package.checks}
        assert checks["psnr_layout"].status == checks["psnr_torch"].status == "passed", package.checks
        assert checks["weights"].status == "passed"
        assert checks["psnr_program"].failed and "not finite" in checks["psnr_program"].detail
    assert sorted(f.split(":")[0] for f in caught.value.failures) == [
        "unet (original, float16) psnr_program", "unet (split_einsum_v2, float16) psnr_program"]


def test_an_unknown_operation_is_named_in_one_line(tmp_path: Path) -> None:
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.cumsum(x=x, axis=1, name="running_total")

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                       skip_model_load=True)
    model.save(str(tmp_path / "cumsum.mlpackage"))
    contents = read_package(tmp_path / "cumsum.mlpackage")
    name = next(iter(contents.program.functions["main"].inputs))
    with pytest.raises(ProgramError) as caught:
        execute_program(contents.program, {name: np.ones((2, 3), np.float32)})
    message = str(caught.value)
    assert "'cumsum'" in message and "does not implement" in message and "\n" not in message
    check = program_check(contents, {name: torch.ones(2, 3)}, {"running_total": np.ones((2, 3))},
                          ["running_total"], 35.0)
    assert check.failed and check.detail == message


def test_initial_ones_and_zeros_convert_and_pass_and_a_changed_one_fails(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.convert import component
    from workers.devtools.tiny import build_tiny_pipeline

    source = build_tiny_pipeline(tmp_path / "fresh-norms", style="sd1", seed=4, initial_norms=True)
    report = convert_pipeline(resolve_source(str(source)), tmp_path / "out", ConvertOptions())
    assert report.passed
    unet = next(p for p in report.packages if p.component == "unet" and p.precision == "float16")
    assert "folded as identities" in {c.name: c for c in unet.checks}["weights"].detail

    real_save = component.save_package

    def save_then_change_one(model, path: Path) -> None:
        real_save(model, path)
        assert scale_constants(path, ("layer_norm",), ("gamma",), 3.0, limit=1)

    monkeypatch.setattr(component, "save_package", save_then_change_one)
    options = ConvertOptions(components=("text_encoder",), bits=None, attentions=(Attention.ORIGINAL,))
    with pytest.raises(ValidationError) as caught:
        convert_pipeline(resolve_source(str(source)), tmp_path / "changed", options)
    assert any(f.startswith("text_encoder (original, float16) psnr_program") for f in caught.value.failures)
