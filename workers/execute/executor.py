"""Program executor: run a saved ML program's operations with torch, on any OS.

coremltools can write ML programs on Linux but cannot run them; Core ML itself exists only on Apple's
systems.  This module executes the program *as saved* (its operations, their attributes, its weight file,
lookup tables expanded) so that what ships is what is measured, on every worker.

Precision follows Core ML's GPU and Neural Engine: with ``precision="float16"`` every float16 value of the
program (inputs, weights, every intermediate) is stored in float16.  Each operation computes in float32
from those float16 values and rounds its result to float16, so a value beyond float16's range (65,504)
becomes inf and shows up in the result.  ``precision="float32"`` stores every float value in float32: a
diagnosis mode that separates the program's arithmetic from float16 rounding.

Operations are implemented one by one, honouring every attribute; an operation the executor does not know
raises :class:`ProgramError` naming it.  Nothing falls back to the torch module the program was made from.

Speed without changing a result: operations that move data (reshape, transpose, split, slice, …) work on
the stored values as they are; single elementwise operations, the plain reductions and softmax use torch's
float16 kernels, which compute in float32 and round once, exactly as specified; operations made of several
arithmetic steps (convolution, matmul, einsum, the normalisations, …) are computed in float32 from the
float16 values and rounded.  Large matmul results are computed in slices, so the float32 temporaries of one
operation stay within ``CHUNK_BYTES`` (:mod:`workers.execute.kernels_base`).

The kernels of single operations are in :mod:`workers.execute.kernels_math` (arithmetic) and
:mod:`workers.execute.kernels_shape` (data movement), what they share (``ProgramError``, value storage, an
operation's arguments) in :mod:`workers.execute.kernels_base`, and the fused attention chains in
:mod:`workers.execute.attention_chain`; this module walks the program.
"""


from __future__ import annotations

from typing import Any

import numpy as np
import torch

from workers.execute import kernels_math, kernels_shape
from workers.execute.attention_chain import _attention_chains, _run_attention_chain
from workers.execute.kernels_base import (Kernel, Precision, ProgramError, _Args, _dtype_name, _input_vars, _storage,
                                  _tensor)

OPS: dict[str, Kernel] = {**kernels_math.OPS, **kernels_shape.OPS}


# --- the program ----------------------------------------------------------------------------------

def operation_counts(program) -> dict[str, int]:
    """Operations of a program's main function by type (constants included)."""
    counts: dict[str, int] = {}
    for op in program.functions["main"].operations:
        counts[op.op_type] = counts.get(op.op_type, 0) + 1
    return counts


def _is_constant(op) -> bool:
    return op.op_type == "const" or op.op_type.startswith("constexpr_")


def _static_shape(var) -> tuple[int, ...] | None:
    shape = tuple(var.shape) if var.shape is not None else None
    if shape is None or not all(isinstance(d, (int, np.integer)) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def execute_program(program, inputs: dict[str, Any], *, precision: Precision = "float16",
                    constants: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run the program's main function on ``inputs`` (feature name -> array); returns its outputs.

    ``constants`` may hold already-expanded values of ``constexpr_*`` operations by output name (as
    :func:`workers.validate.checks.read_package` keeps them); others are expanded when first used.  Each value
    is freed after its last use.  Outputs come back as numpy arrays in their declared type (float16
    values widened to float32).  Raises ProgramError.
    """
    if precision not in ("float16", "float32"):
        raise ValueError(f"precision must be float16 or float32, not {precision!r}")
    function = program.functions["main"]
    operations = list(function.operations)
    producers = {out.name: op for op in operations for out in op.outputs}
    last_use: dict[str, int] = {}
    for index, op in enumerate(operations):
        if op.blocks:
            raise ProgramError(f"operation {op.op_type} ({op.name}) has nested blocks, which the executor "
                               "does not implement")
        if not _is_constant(op) and op.op_type not in OPS:
            raise ProgramError(f"the program uses operation {op.op_type!r} ({op.name}), which the executor "
                               "does not implement")
        for var in _input_vars(op):
            last_use[var.name] = index
    outputs = [var.name for var in function.outputs]
    for name in outputs:
        last_use[name] = len(operations)

    env: dict[str, torch.Tensor] = {}
    for name, var in function.inputs.items():
        if name not in inputs:
            raise ProgramError(f"the program needs input {name!r}")
        value = inputs[name]
        tensor = value.detach() if isinstance(value, torch.Tensor) else _tensor(value)
        storage = _storage(_dtype_name(var), precision)
        env[name] = tensor.to(storage) if storage.is_floating_point else tensor.to(torch.int64)
        expected = _static_shape(var)
        if expected is not None and tuple(env[name].shape) != expected:
            raise ProgramError(f"input {name!r} has shape {tuple(env[name].shape)}, the program needs {expected}")
    constants = constants or {}

    def constant(var) -> torch.Tensor:
        op = producers[var.name]
        value = constants.get(var.name)
        if value is None:
            value = var.val if op.op_type == "const" else op.materialized_val_inference()
        if value is None:
            raise ProgramError(f"constant {var.name} ({op.op_type}) has no value")
        tensor = _tensor(value)
        if tensor.is_floating_point():
            return tensor.to(_storage(_dtype_name(var), precision))
        return tensor if tensor.dtype == torch.bool else tensor.to(torch.int64)

    def fetch(var) -> torch.Tensor:
        value = env.get(var.name)
        if value is not None:
            return value
        if var.name in producers and _is_constant(producers[var.name]):
            return constant(var)
        raise ProgramError(f"value {var.name} is used before it is computed")

    chains = _attention_chains(operations, set(outputs))
    fused: dict[int, int] = {}  # softmax / value matmul index -> its chain's first index
    for first, (j, k) in chains.items():
        fused[j] = fused[k] = first

    def args(op) -> _Args:
        return _Args(op, fetch, _storage(_dtype_name(op.outputs[0]), precision))

    for index, op in enumerate(operations):
        if _is_constant(op):
            continue
        if index in fused:  # computed with its chain; only what it was the last to use is freed here
            for var in _input_vars(op):
                if last_use.get(var.name) == index:
                    env.pop(var.name, None)
            continue
        storages = [_storage(_dtype_name(out), precision) for out in op.outputs]
        if index in chains:
            j, k = chains[index]
            op = operations[k]  # the chain's result is the value matmul's output
            storages = [_storage(_dtype_name(op.outputs[0]), precision)]
            result = _run_attention_chain(args(operations[index]), args(operations[j]), args(op), precision)
        else:
            result = OPS[op.op_type](_Args(op, fetch, storages[0]))
        results = result if isinstance(result, tuple) else (result,)
        if len(results) != len(op.outputs):
            raise ProgramError(f"operation {op.op_type} ({op.name}) gave {len(results)} outputs, "
                               f"the program declares {len(op.outputs)}")
        for out, value, storage in zip(op.outputs, results, storages):
            if storage == torch.int64 and not value.is_floating_point() and value.dtype != torch.bool:
                value = value.to(torch.int64)
            else:
                value = value.to(storage)
            expected = _static_shape(out)
            if expected is not None and tuple(value.shape) != expected:
                raise ProgramError(f"operation {op.op_type} ({op.name}) gave shape {tuple(value.shape)}, "
                                   f"the program declares {expected}")
            env[out.name] = value
        del result, results
        for var in _input_vars(operations[index]):
            if last_use.get(var.name) == index:
                env.pop(var.name, None)
    missing = [name for name in outputs if name not in env]
    if missing:
        raise ProgramError(f"the program never computes its outputs {', '.join(missing)}")
    return {name: env[name].float().numpy() if env[name].is_floating_point() else env[name].numpy()
            for name in outputs}
