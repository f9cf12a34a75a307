"""The memory-lean conversion (meta-device trace, float16 weights, a float16 frontend) makes the program the normal
path makes: the same operations, the same float16 constants, bit-identical outputs when executed."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.convert.program import convert_lean, convert_module
from workers.errors import ConversionError
from workers.execute.executor import execute_program
from workers.convert.geometry import read_geometry
from workers.names import Attention
from workers.convert.lean import assign_weights, float16_graph, meta_tracing, trace_on_meta
from workers.validate.readback import read_package
from workers.convert.specs import spec_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sdxl_pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.devtools.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("sources") / "tiny-sdxl", style="sdxl", seed=3)


def _program(path: Path):
    contents = read_package(path)
    operations = Counter(op.op_type for op in contents.program.functions["main"].operations)
    constants = sorted(hashlib.sha1(np.ascontiguousarray(v).tobytes()).hexdigest() + str(v.dtype)
                       for v in contents.weights.values())
    return contents, operations, constants


def _half(module: torch.nn.Module) -> torch.nn.Module:
    for p in module.parameters():
        p.data = p.data.half()
    return module


@pytest.mark.parametrize("pipeline, attention", [("sdxl_pipeline", Attention.ORIGINAL),
                                                 ("sd2_pipeline", Attention.SPLIT_EINSUM_V2)])
def test_lean_conversion_makes_the_normal_paths_program(pipeline: str, attention: Attention, tmp_path: Path,
                                                        request: pytest.FixtureRequest) -> None:
    """SDXL's UNet (added conditioning), and an SD 2.x UNet at 576 tokens, where SPLIT_EINSUM_V2 runs its remainder
    chunk (SDXL's SPLIT_EINSUM_V2 UNet, the same layout code, matched the same way when this was written)."""
    source: Path = request.getfixturevalue(pipeline)
    g = read_geometry(source)
    spec = spec_for("unet", g)
    example, inputs, outputs = spec.sample_inputs(g, 0), spec.inputs(g), spec.outputs(g)

    normal = spec.export_module(spec.load(source, {}, True), attention)
    convert_module(normal, example, inputs, outputs, component="unet", target="iOS17").save(
        str(tmp_path / "normal.mlpackage"))
    meta = spec.export_module(spec.load_lean(source, {}, meta=True), attention)
    assert all(p.device.type == "meta" for p in meta.parameters())
    half = _half(spec.export_module(spec.load_lean(source, {}, meta=False), attention))
    convert_lean(meta, half, example, inputs, outputs, component="unet", target="iOS17").save(
        str(tmp_path / "lean.mlpackage"))

    a, a_ops, a_constants = _program(tmp_path / "normal.mlpackage")
    b, b_ops, b_constants = _program(tmp_path / "lean.mlpackage")
    assert (a.inputs, a.outputs) == (b.inputs, b.outputs)
    assert b.outputs[0][2] == "float32"  # the declared output type survives the float16 frontend
    assert a_ops == b_ops
    assert a_constants == b_constants
    check = spec.sample_inputs(g, 1)
    ours = execute_program(b.program, check, precision="float16", constants=b.expanded)
    theirs = execute_program(a.program, check, precision="float16", constants=a.expanded)
    for name in theirs:
        assert np.array_equal(ours[name], theirs[name]), name


def test_the_workarounds_are_undone_on_exit(sdxl_pipeline: Path) -> None:
    """Outside its context a meta-device trace fails again, and coremltools' builder is as it was."""
    from coremltools.converters.mil.frontend.torch import ops as torch_ops
    from coremltools.converters.mil.frontend.torch.converter import TorchConverter
    from coremltools.converters.mil.mil import Builder as mb

    before = (dict(vars(mb)), TorchConverter.convert, torch_ops.promote_input_dtypes)
    conv = torch.nn.Conv2d(4, 4, 3).to("meta")
    with meta_tracing():
        torch.jit.trace(conv, torch.zeros(1, 4, 8, 8, device="meta"))
    with pytest.raises(Exception):
        torch.jit.trace(conv, torch.zeros(1, 4, 8, 8, device="meta"))
    with pytest.raises(RuntimeError), float16_graph():
        assert TorchConverter.convert is not before[1]
        raise RuntimeError("a failed conversion")
    assert (dict(vars(mb)), TorchConverter.convert, torch_ops.promote_input_dtypes) == before


def test_a_trace_without_weights_is_refused(sdxl_pipeline: Path) -> None:
    g = read_geometry(sdxl_pipeline)
    spec = spec_for("unet", g)
    meta = spec.export_module(spec.load_lean(sdxl_pipeline, {}, meta=True), Attention.ORIGINAL)
    traced = trace_on_meta(meta, spec.sample_inputs(g, 0), "unet")
    half = _half(spec.export_module(spec.load_lean(sdxl_pipeline, {}, meta=False), Attention.ORIGINAL))
    del half.unet.conv_in.bias  # a tensor the weights do not have
    with pytest.raises(ConversionError, match="differ from the weights'.*conv_in.bias"):
        assign_weights(traced, half, "unet")
