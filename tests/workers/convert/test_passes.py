"""coremltools' pass pipelines validated once: the same packages as validating after every pass, a broken program
still refused, and the patch gone on exit."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from workers.compress.palettize import palettize_package
from workers.convert import passes
from workers.convert.geometry import read_geometry
from workers.convert.passes import validated_once
from workers.convert.program import convert_module
from workers.convert.specs import spec_for
from workers.names import Attention
from workers.package.files import fingerprints

pytestmark = pytest.mark.slow


def _convert_and_palettize(source: Path, out: Path) -> dict[str, str]:
    g = read_geometry(source)
    spec = spec_for("unet", g)
    export = spec.export_module(spec.load(source, {}, True), Attention.SPLIT_EINSUM_V2)
    model = convert_module(export, spec.sample_inputs(g, 0), spec.inputs(g), spec.outputs(g), component="unet",
                           target="iOS16")
    model.save(str(out / "float16" / "unet.mlpackage"))
    # from iOS16 to iOS17: the palettizer's passes and the retarget's
    palettize_package(out / "float16" / "unet.mlpackage", bits=4, component="unet", target="iOS17").save(
        str(out / "palettized" / "unet.mlpackage"))
    return fingerprints(out)


def test_validating_once_makes_the_same_packages(sd2_pipeline: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ours = _convert_and_palettize(sd2_pipeline, tmp_path / "once")
    monkeypatch.setattr(passes, "validated_once", contextlib.nullcontext)  # coremltools as it comes
    theirs = _convert_and_palettize(sd2_pipeline, tmp_path / "every")
    assert len(ours) == 4
    assert ours == theirs


def _program():
    from coremltools.converters.mil.mil import Builder as mb, types

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4), dtype=types.fp32)])
    def program(x):
        return mb.relu(x=mb.add(x=x, y=1.0))
    return program


def test_a_pass_that_breaks_the_program_still_fails_its_pipeline() -> None:
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipeline, PassPipelineManager
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY, register_pass

    calls = []

    class Breaks(AbstractGraphPass):
        def apply(self, prog) -> None:  # the add's output stops being an output of anything: relu reads a ghost
            calls.append(self)
            function = prog.functions["main"]
            add = next(op for op in function.operations if op.op_type == "add")
            function.operations.remove(add)

    if "test_passes::breaks" not in PASS_REGISTRY:
        register_pass(namespace="test_passes", override=True, name="breaks")(Breaks)
    program = _program()
    with validated_once(), pytest.raises(ValueError, match="not visible"):
        PassPipelineManager.apply_pipeline(program, PassPipeline(pass_names=["test_passes::breaks"]))
    assert calls  # the pass ran, and the pipeline's closing check refused what it left


def test_the_patch_is_scoped_and_reentrant() -> None:
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager
    from coremltools.converters.mil.mil.program import Program

    validate, apply = Program.validate, PassPipelineManager.__dict__["apply_pipeline"]
    with validated_once():
        patched = Program.validate
        assert patched is not validate
        with validated_once():
            assert Program.validate is patched
        assert Program.validate is patched  # the inner exit leaves the outer's patch
    assert Program.validate is validate
    assert PassPipelineManager.__dict__["apply_pipeline"] is apply
