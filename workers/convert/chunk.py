"""Chunk step: a saved float16 UNet program split into two programs of about equal weight, for iOS.

Apple's iOS repos ship ``UnetChunk1.mlmodelc`` and ``UnetChunk2.mlmodelc`` beside (or instead of)
``Unet.mlmodelc``: a float16 UNet is too large for the Neural Engine of an iPhone or iPad in one piece.
The Swift ``Unet(chunksAt:)`` feeds chunk 1 the UNet's inputs, feeds chunk 2 chunk 1's outputs merged
with those same inputs (by feature name), and reads chunk 2's first output.

The cut follows Apple's ``chunk_mlprogram`` rule: walking the program in order, an operation that is not
a constant, has one output and one consumer, where the weights used so far reach half of all the weights
(of such operations, the one closest to half; Apple counts them where they are declared, which is where they
are used in a program converted the usual way).  Every value computed before the cut and used after
it leaves chunk 1 as float32 (cast from float16: exact) and enters chunk 2 as an input of the same name,
cast back; chunk 2 keeps the UNet inputs it still uses and its single output ``noise_pred``.  A constant
used on both sides is in both chunks.  Nothing here converts the model again: both chunks are cut from the
saved program.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.errors import ConversionError

BALANCE = 0.10  # each chunk's weights within this fraction of half the whole UNet's


@dataclass
class Chunks:
    """The two chunk programs (unsaved coremltools MLModels)."""

    first: object
    second: object


def _weight_bytes(op) -> int:
    value = op.outputs[0].val if op.op_type == "const" else None
    return int(value.nbytes) if isinstance(value, np.ndarray) else 0


def split_index(operations: list) -> int:
    """Index of the operation after which the program is cut (Apple's rule, closest to half the weights).

    A constant's weights count where it is first used: a memory-lean conversion's program declares every
    constant at its start (``workers.convert.lean``), where declaration order would put the cut at the top."""
    position = {id(op): i for i, op in enumerate(operations)}
    used_at = [0] * len(operations)
    for i, op in enumerate(operations):
        size = _weight_bytes(op)
        if size:
            first = min((position.get(id(child), i) for child in op.outputs[0].child_ops), default=i)
            used_at[first] += size
    total = sum(used_at)
    best, best_gap, seen = None, None, 0
    for i, op in enumerate(operations[:-1]):
        seen += used_at[i]
        if op.op_type.startswith("const") or len(op.outputs) != 1 or len(op.outputs[0].child_ops) != 1:
            continue
        gap = abs(seen - total / 2)
        if best_gap is None or gap < best_gap:
            best, best_gap = i, gap
    if best is None:
        raise ValueError("the program has no operation to cut at")
    return best


def _boundary(operations: list, index: int) -> list:
    """Values made at or before ``index`` (not constants) that an operation after it uses, in program order."""
    position = {id(op): i for i, op in enumerate(operations)}
    crossing = []
    for op in operations[: index + 1]:
        if op.op_type.startswith("const"):
            continue
        for var in op.outputs:
            if var.val is None and any(position.get(id(child), -1) > index for child in var.child_ops):
                crossing.append(var)
    return crossing


def _first_chunk(program, index: int):
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY

    function = program.functions["main"]
    boundary = _boundary(list(function.operations), index)
    with function:
        outputs = []
        for var in boundary:
            if var.dtype == types.fp16:
                name = var.name
                var.set_name(f"{name}_fp16")
                outputs.append(mb.cast(x=var, dtype="fp32", name=name))
            else:
                outputs.append(var)
    function.set_outputs(outputs)
    PASS_REGISTRY["common::dead_code_elimination"](program)
    return program


def _second_chunk(program, index: int):
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.converters.mil.mil.program import Placeholder

    function = program.functions["main"]
    operations = list(function.operations)
    anchor = operations[index]
    with function:
        for var in _boundary(operations, index):
            half = var.dtype == types.fp16
            placeholder = Placeholder(sym_shape=var.shape, dtype=types.fp32 if half else var.dtype, name=var.name)
            function._input_dict[var.name] = placeholder.outputs[0]  # no public way to add a function input
            function.function_inputs = tuple(function._input_dict.values())
            value = mb.cast(x=placeholder.outputs[0], dtype="fp16", before_op=var.op) if half else placeholder.outputs[0]
            function.replace_uses_of_var_after_op(anchor_op=anchor, old_var=var, new_var=value, force_replace=True)
    PASS_REGISTRY["common::dead_code_elimination"](program)
    used = {name: var for name, var in function._input_dict.items() if var.child_ops}
    function._input_dict.clear()
    function._input_dict.update(used)
    function.function_inputs = tuple(used.values())
    return program


def _serialize(program, target):
    """An unsaved MLModel of a chunk's program, as it is (no graph passes: it was optimised as the whole UNet)."""
    import coremltools as ct

    return ct.convert(program, convert_to="mlprogram", minimum_deployment_target=target,
                      pass_pipeline=ct.PassPipeline.EMPTY, compute_precision=ct.precision.FLOAT32, skip_model_load=True)


def chunk_unet(package: Path, *, component: str = "unet") -> Chunks:
    """Cut the saved UNet package in two (see the module docstring).  Raises ConversionError."""
    import coremltools as ct

    from workers.validate.readback import load_program
    from workers.convert.targets import SPEC_VERSIONS, deployment_target

    model = ct.models.MLModel(str(package), skip_model_load=True)
    version = model.get_spec().specificationVersion
    target = deployment_target(next(t for t, v in SPEC_VERSIONS.items() if v == version and t.startswith("iOS")))
    try:
        program = load_program(model)
        index = split_index(list(program.functions["main"].operations))
        models = [_serialize(_first_chunk(program, index), target)]
        del program
        gc.collect()  # one program in memory at a time: each holds the weights it keeps
        second = _second_chunk(load_program(model), index)
        models.append(_serialize(second, target))
        del second
        gc.collect()
    except Exception as e:  # coremltools raises many types; name the component and chain the cause
        raise ConversionError(f"cutting {component} into chunks failed: {e.__class__.__name__}: {e}",
                              component=component) from e
    for chunk in models:  # coremltools' own keys name the original source
        for key, value in model.user_defined_metadata.items():
            chunk.user_defined_metadata[key] = value
    return Chunks(models[0], models[1])


def chunk_features(model, unet_inputs: list, unet_outputs: list) -> tuple[list, list]:
    """A chunk's declared inputs and outputs as TensorSpecs, described like the UNet's where they are its own."""
    from workers.convert.features import TensorSpec
    from workers.validate.readback import feature_list

    known = {t.name: t.description for t in unet_inputs + unet_outputs}
    spec = model.get_spec().description

    def specs(features) -> list:
        return [TensorSpec(name, shape, dtype, known.get(name, "An activation chunk 1 of the UNet computes for "
                                                               "chunk 2 (float32, cast from float16)"))
                for name, shape, dtype in feature_list(features)]

    return specs(spec.input), specs(spec.output)


def input_names(package: Path) -> list[str]:
    """The declared input features of a saved package, in order."""
    import coremltools as ct

    return [f.name for f in ct.utils.load_spec(str(package)).description.input]


def weight_file_bytes(package: Path) -> int:
    """Size of a package's weight file (0 when it has none)."""
    return sum(f.stat().st_size for f in package.glob("Data/com.apple.CoreML/weights/*") if f.is_file())


def _interface_problems(whole: list, first: list, first_out: list, second: list, second_out: list,
                        outputs: list) -> list[str]:
    """What the Swift chunk feeding (chunk 1 outputs merged with the UNet inputs, by name) would trip on."""
    problems = []
    unet_inputs = {name: (shape, dtype) for name, shape, dtype in whole}
    extra = [name for name, *_ in first if name not in unet_inputs]
    if extra or not first:
        problems.append(f"chunk 1 takes {', '.join(extra) or 'nothing'} beyond the UNet's inputs")
    if any((shape, dtype) != unet_inputs[name] for name, shape, dtype in first if name in unet_inputs):
        problems.append("chunk 1's inputs differ in shape or type from the UNet's")
    fed = {**unet_inputs, **{name: (shape, dtype) for name, shape, dtype in first_out}}  # outputs win, as in Swift
    for name, shape, dtype in second:
        if fed.get(name) != (shape, dtype):
            problems.append(f"chunk 2 input {name} {list(shape)} {dtype} is not fed by chunk 1 or the UNet inputs")
    if second_out != outputs:
        problems.append(f"chunk 2 outputs {second_out}, expected {outputs}")
    return problems


def validate_chunks(whole: Path | None, first: Path, second: Path, inputs: dict, reference: dict,
                    compared: list[str], threshold: float, *, features: tuple[list, list] | None = None
                    ) -> tuple[list, list]:
    """The checks of both saved chunks: interface, weight balance, and chunk 1 → chunk 2 executed.

    Chained through the program executor the chunks must give exactly what the whole UNet's program
    gives (``chain``), and reach ``threshold`` dB against the float32 ``reference`` (``psnr_program``).
    Without the ``whole`` package (chunks shipped instead of it) the UNet's ``features`` (inputs, outputs as
    read from a package) stand for its interface, the chunks' weights are held to half of their sum, and
    there is no ``chain`` check.  Returns the checks of chunk 1 and of chunk 2.
    """
    from workers.execute.executor import ProgramError, execute_program
    from workers.validate.readback import read_package
    from workers.validate.report import Check

    sizes = [weight_file_bytes(path) for path in (first, second)]
    total = weight_file_bytes(whole) if whole is not None else sum(sizes)
    balance = []
    for size in sizes:
        share = size / (total / 2) - 1 if total else 0.0
        balance.append(Check("balance", "passed" if abs(share) <= BALANCE else "failed", "package",
                             round(100 * share, 1), 100 * BALANCE,
                             f"weights {size / 1e6:.1f} MB, {share:+.1%} from half of {total / 1e6:.1f} MB"))
    expected = None
    try:
        if whole is not None:
            contents = read_package(whole)
            features = contents.inputs, contents.outputs
            expected = execute_program(contents.program, inputs, constants=contents.expanded)
            contents.release()
        one = read_package(first)
        first_in, first_out = one.inputs, one.outputs
        fed = {**inputs, **execute_program(one.program, {k: inputs[k] for k, *_ in one.inputs})}
        one.release()
        two = read_package(second)
        problems = _interface_problems(features[0], first_in, first_out, two.inputs, two.outputs, features[1])
        chained = execute_program(two.program, {k: fed[k] for k, *_ in two.inputs if k in fed})
        two.release()
    except (ProgramError, KeyError) as e:
        failed = Check("psnr_program", "failed", "program", threshold=threshold, detail=f"chunk 1 → chunk 2: {e}")
        return [balance[0], failed], [balance[1], failed]
    structure = Check("structure", "failed" if problems else "passed", "package",
                      detail="; ".join(problems) or f"{len(first_in)} inputs → {len(first_out)} values → "
                                                     f"{', '.join(n for n, *_ in features[1])}")
    checks = [structure]
    if expected is not None:
        differ = [k for k in expected if not np.array_equal(expected[k], chained.get(k))]
        checks.append(Check("chain", "failed" if differ else "passed", "program",
                            detail=f"{', '.join(differ)} differ from the whole UNet's program" if differ
                            else "chunk 1 → chunk 2 gives exactly the whole UNet's program output"))
    figure = _chained_figure(reference, chained, compared, threshold)
    return [structure, balance[0], *checks[1:], figure], [structure, balance[1], *checks[1:], figure]


def _chained_figure(reference: dict, chained: dict, compared: list[str], threshold: float):
    from workers.validate.checks import psnr_check

    figure = psnr_check("psnr_program", "program", reference, chained, compared, threshold)
    figure.detail = f"chunk 1 → chunk 2: {figure.detail}"
    return figure
