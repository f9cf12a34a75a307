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
from workers.execute.attention_chain import attention_chains, run_attention_chain
from workers.execute.kernels_base import (Args, Kernel, Precision, ProgramError, dtype_name, input_vars, storage_dtype,
                                          to_tensor)

OPS: dict[str, Kernel] = {**kernels_math.OPS, **kernels_shape.OPS}


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
    :func:`workers.validate.readback.read_package` keeps them); others are expanded when first used.  Each
    value is freed after its last use.  Outputs come back as numpy arrays in their declared type (float16
    values widened to float32).  Raises ProgramError.
    """
    if precision not in ("float16", "float32"):
        raise ValueError(f"precision must be float16 or float32, not {precision!r}")
    run = _Execution(program.functions["main"], precision, constants or {})
    run.bind(inputs)
    for index, op in enumerate(run.operations):
        if not _is_constant(op):
            run.step(index, op)
    return run.results()


class _Execution:
    """One run of a program's main function: the values computed so far, and when each can be freed."""

    def __init__(self, function, precision: Precision, constants: dict[str, np.ndarray]) -> None:
        self.function, self.precision, self.constants = function, precision, constants
        self.operations = list(function.operations)
        self.producers = {out.name: op for op in self.operations for out in op.outputs}
        self.last_use: dict[str, int] = {}
        for index, op in enumerate(self.operations):
            if op.blocks:
                raise ProgramError(f"operation {op.op_type} ({op.name}) has nested blocks, which the executor "
                                   "does not implement")
            if not _is_constant(op) and op.op_type not in OPS:
                raise ProgramError(f"the program uses operation {op.op_type!r} ({op.name}), which the executor "
                                   "does not implement")
            for var in input_vars(op):
                self.last_use[var.name] = index
        self.outputs = [var.name for var in function.outputs]
        for name in self.outputs:
            self.last_use[name] = len(self.operations)
        self.chains = attention_chains(self.operations, set(self.outputs))
        self.fused: dict[int, int] = {}  # softmax / value matmul index -> its chain's first index
        for first, (j, k) in self.chains.items():
            self.fused[j] = self.fused[k] = first
        self.env: dict[str, torch.Tensor] = {}

    def bind(self, inputs: dict[str, Any]) -> None:
        """The program's inputs, stored as their declared types, checked against their declared shapes."""
        for name, var in self.function.inputs.items():
            if name not in inputs:
                raise ProgramError(f"the program needs input {name!r}")
            value = inputs[name]
            tensor = value.detach() if isinstance(value, torch.Tensor) else to_tensor(value)
            storage = storage_dtype(dtype_name(var), self.precision)
            self.env[name] = tensor.to(storage) if storage.is_floating_point else tensor.to(torch.int64)
            expected = _static_shape(var)
            if expected is not None and tuple(self.env[name].shape) != expected:
                raise ProgramError(f"input {name!r} has shape {tuple(self.env[name].shape)}, the program needs "
                                   f"{expected}")

    def constant(self, var) -> torch.Tensor:
        """A constant's value (expanded now unless given already), stored as its declared type."""
        op = self.producers[var.name]
        value = self.constants.get(var.name)
        if value is None:
            value = var.val if op.op_type == "const" else op.materialized_val_inference()
        if value is None:
            raise ProgramError(f"constant {var.name} ({op.op_type}) has no value")
        tensor = to_tensor(value)
        if tensor.is_floating_point():
            return tensor.to(storage_dtype(dtype_name(var), self.precision))
        return tensor if tensor.dtype == torch.bool else tensor.to(torch.int64)

    def fetch(self, var) -> torch.Tensor:
        value = self.env.get(var.name)
        if value is not None:
            return value
        if var.name in self.producers and _is_constant(self.producers[var.name]):
            return self.constant(var)
        raise ProgramError(f"value {var.name} is used before it is computed")

    def args(self, op) -> Args:
        return Args(op, self.fetch, storage_dtype(dtype_name(op.outputs[0]), self.precision))

    def step(self, index: int, op) -> None:
        """Run one operation (a fused attention chain at its first one), then free what it used last."""
        if index not in self.fused:
            storages = [storage_dtype(dtype_name(out), self.precision) for out in op.outputs]
            if index in self.chains:
                j, k = self.chains[index]
                result = run_attention_chain(self.args(op), self.args(self.operations[j]),
                                             self.args(self.operations[k]), self.precision)
                produced = self.operations[k]  # the chain's result is the value matmul's output
                storages = [storage_dtype(dtype_name(produced.outputs[0]), self.precision)]
            else:
                result, produced = OPS[op.op_type](Args(op, self.fetch, storages[0])), op
            self.store(produced, result, storages)
        for var in input_vars(op):  # a fused operation frees only what it was the last to use
            if self.last_use.get(var.name) == index:
                self.env.pop(var.name, None)

    def store(self, op, result, storages: list[torch.dtype]) -> None:
        """An operation's results as its declared types, checked against its declared shapes."""
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
            self.env[out.name] = value

    def results(self) -> dict[str, np.ndarray]:
        missing = [name for name in self.outputs if name not in self.env]
        if missing:
            raise ProgramError(f"the program never computes its outputs {', '.join(missing)}")
        return {name: self.env[name].float().numpy() if self.env[name].is_floating_point() else self.env[name].numpy()
                for name in self.outputs}
