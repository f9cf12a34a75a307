"""Deployment targets: defaults per precision, and a float16 program moved to iOS 17 equals a direct conversion."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from workers.errors import OptionsError
from workers.convert.targets import os_name, target_for


def test_defaults_per_precision_and_the_override() -> None:
    assert target_for(None, palettized=False) == "iOS16"
    assert target_for(None, palettized=True) == "iOS17"
    assert target_for(None, palettized=True, group_size=16) == "iOS18"
    assert target_for("macOS14", palettized=False) == target_for("macOS14", palettized=True) == "macOS14"
    assert os_name("iOS16") == os_name("macOS13") == "macOS 13 / iOS 16"
    with pytest.raises(OptionsError, match="unknown deployment target 'iOS99'"):
        target_for("iOS99", palettized=False)


def test_sdxl_packages_are_never_older_than_ios17() -> None:
    assert target_for(None, palettized=False, xl=True) == "iOS17"  # Swift's StableDiffusionXLPipeline
    assert target_for("macOS15", palettized=False, xl=True) == "macOS15"
    with pytest.raises(OptionsError, match="SDXL models need macOS 14 / iOS 17 or newer, not --deployment-target iOS16"):
        target_for("iOS16", palettized=False, xl=True)


def _canonical(program) -> list:
    """The program's operations in order, constants by content and values by the operation making them.

    Integer widths are not compared: a direct conversion narrows small indices to int16 where the values
    are known to fit (coremltools' ``add_int16_cast``), a storage choice that does not change any value;
    an operation repeating an earlier one on the same values (a second cast made by that narrowing) is
    the earlier one.
    """
    from coremltools.converters.mil.mil import types

    def dtype(var) -> str:
        return "int" if types.is_int(var.dtype) else types.builtin_to_string(var.dtype)

    function = program.functions["main"]
    where: dict[int, tuple] = {id(var): ("input", name) for name, var in function.inputs.items()}
    ops: list = []
    seen: dict = {}
    for op in function.operations:
        if op.op_type == "const":
            value = np.asarray(op.outputs[0].val)
            content = value.tobytes() if value.dtype != object else repr(value).encode()
            where[id(op.outputs[0])] = ("const", value.shape, hashlib.sha1(content).hexdigest())
            continue
        if op.op_type == "cast" and dtype(op.outputs[0]) == "int" and dtype(op.inputs["x"]) == "int":
            where[id(op.outputs[0])] = where[id(op.inputs["x"])]  # int32 <-> int16: the same values
            continue

        def ref(value):
            if isinstance(value, (list, tuple)):
                return tuple(ref(v) for v in value)
            return where[id(value)]

        inputs = {k: ref(v) for k, v in op.inputs.items()}
        if op.op_type == "cast":
            inputs["dtype"] = dtype(op.outputs[0])
        entry = (op.op_type, sorted(inputs.items()), [(dtype(o), tuple(o.shape)) for o in op.outputs])
        key = repr(entry)
        if key not in seen:
            ops.append(entry)
            seen[key] = len(ops) - 1
        for i, out in enumerate(op.outputs):
            where[id(out)] = ("op", seen[key], i)
    return ops + [("outputs", [where[id(v)] for v in function.outputs])]


@pytest.mark.parametrize("component, attention", [
    ("text_encoder", "original"), ("unet", "original"), ("unet", "split_einsum_v2"),
    ("vae_decoder", "original"), ("safety_checker", "original")])
def test_retargeted_program_equals_a_direct_ios17_conversion(sd1_pipeline: Path, tmp_path: Path,
                                                            component: str, attention: str) -> None:
    import coremltools as ct

    from workers.convert.program import convert_module
    from workers.validate.sequence import component_inputs
    from workers.convert.geometry import read_geometry
    from workers.names import Attention
    from workers.validate.readback import load_program
    from workers.convert.specs import SPECS
    from workers.convert.targets import retarget

    spec = SPECS[component]
    modules = spec.load(sd1_pipeline, {}, True)
    io = component_inputs(spec, read_geometry(sd1_pipeline, batch_size=2), modules, 0)
    export = spec.export_module(modules, Attention(attention))
    models = {}
    for target in ("iOS16", "iOS17"):
        model = convert_module(export, io.trace, io.inputs, io.outputs, component=component, target=target)
        model.save(str(tmp_path / f"{target}.mlpackage"))
        models[target] = ct.models.MLModel(str(tmp_path / f"{target}.mlpackage"), skip_model_load=True)
    assert models["iOS16"].get_spec().specificationVersion == 7

    moved = retarget(models["iOS16"], "iOS17", component=component)
    moved.save(str(tmp_path / "moved.mlpackage"))
    moved = ct.models.MLModel(str(tmp_path / "moved.mlpackage"), skip_model_load=True)
    assert moved.get_spec().specificationVersion == 8
    assert moved.get_spec().description.input == models["iOS17"].get_spec().description.input
    if component != "text_encoder":
        assert _canonical(load_program(moved)) == _canonical(load_program(models["iOS17"]))
    else:  # the direct conversion's indices are int16/uint16 where ours stay int32: the same values out
        from workers.execute.executor import execute_program

        ours = execute_program(load_program(moved), io.check)
        direct = execute_program(load_program(models["iOS17"]), io.check)
        assert ours.keys() == direct.keys() and all(np.array_equal(ours[k], direct[k]) for k in ours)
    # a package already written for the target is left as it is
    assert retarget(models["iOS17"], "iOS17") is models["iOS17"]
