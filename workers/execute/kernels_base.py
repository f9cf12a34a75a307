"""What every kernel of the program executor (:mod:`workers.execute.executor`) builds on.

:class:`ProgramError`; how the program's values are stored (``Precision``, float16 or float32); an
operation's resolved inputs (``Args``); the two ways a step is computed without changing its result (on
the stored float16 values where torch's kernel rounds once, or in float32 slices within ``CHUNK_BYTES``);
and the registry decorator the kernel modules fill their ``OPS`` tables with.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch

Precision = Literal["float16", "float32"]
CHUNK_BYTES = 128 << 20  # float32 temporaries of one sliced operation


class ProgramError(RuntimeError):
    """The saved program cannot be executed: an unknown operation or attribute, or a shape it contradicts."""


# --- values ---------------------------------------------------------------------------------------

INT_RANGES = {"int8": (8, True), "uint8": (8, False), "int16": (16, True), "uint16": (16, False),
               "int32": (32, True), "uint32": (32, False), "int64": (64, True)}


def dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)


def storage_dtype(dtype: str, precision: Precision) -> torch.dtype:
    """How a value of the program's ``dtype`` is held."""
    if dtype == "fp16":
        return torch.float16 if precision == "float16" else torch.float32
    if dtype in ("fp32", "fp64"):
        return torch.float32
    if dtype == "bool":
        return torch.bool
    return torch.int64  # every integer type, wrapped to its width where a cast makes one


def to_tensor(value: Any) -> torch.Tensor:
    array = np.asarray(value)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if not array.flags.writeable:
        array = array.copy() if array.size <= 4096 else array  # small attribute arrays; weights stay shared
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only weight arrays are never written through the tensor
        return torch.from_numpy(array)


def wrap(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """An integer tensor reduced to the range of a narrower integer type, as a C cast does."""
    bits, signed = INT_RANGES[dtype]
    if bits == 64:
        return x
    x = x & ((1 << bits) - 1)
    if signed:
        x = torch.where(x >= (1 << (bits - 1)), x - (1 << bits), x)
    return x


# --- operation arguments ----------------------------------------------------------------------------

class Args:
    """The resolved inputs of one operation: tensors for computation, plain values for attributes."""

    def __init__(self, op, fetch: Callable[[Any], torch.Tensor], out_dtype: torch.dtype) -> None:
        self.op, self._fetch, self.out_dtype = op, fetch, out_dtype

    def has(self, name: str) -> bool:
        return self.op.inputs.get(name) is not None

    def t(self, name: str) -> torch.Tensor:
        """A tensor input, floats as float32 (exact for float16 values)."""
        value = self._fetch(self.op.inputs[name])
        return value.float() if value.is_floating_point() else value

    def ts(self, name: str) -> list[torch.Tensor]:
        return [v.float() if v.is_floating_point() else v for v in self.rs(name)]

    def r(self, name: str) -> torch.Tensor:
        """A tensor input as stored (float16 values stay float16)."""
        return self._fetch(self.op.inputs[name])

    def rs(self, name: str) -> list[torch.Tensor]:
        return [self._fetch(v) for v in self.op.inputs[name]]

    def v(self, name: str, default: Any = None) -> Any:
        """An attribute: the constant's value as Python / numpy data."""
        var = self.op.inputs.get(name)
        if var is None:
            return default
        if var.val is not None:
            value = var.val
        else:  # computed at run time (a shape from another operation, say)
            value = self._fetch(var).numpy()
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value.item()
        elif isinstance(value, np.generic):
            value = value.item()
        return value

    def ints(self, name: str, default: Any = None) -> list[int] | None:
        value = self.v(name, default)
        if value is None:
            return None
        return [int(i) for i in np.asarray(value).reshape(-1)]

    def unsupported(self, attribute: str, value: Any) -> ProgramError:
        return ProgramError(f"operation {self.op.op_type} ({self.op.name}) has {attribute}={value!r}, "
                            "which the executor does not implement")


def normal_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def axes_of(a: Args, name: str, rank: int) -> list[int] | None:
    axes = a.ints(name)
    return None if axes is None else sorted(normal_axis(i, rank) for i in axes)


def sliced(fn: Callable[..., torch.Tensor], tensors: list[torch.Tensor], out_shape: tuple[int, ...],
            out_dtype: torch.dtype, keep: Iterable[int] = ()) -> torch.Tensor:
    """``fn(*tensors)`` rounded to ``out_dtype``, computed in slices so its float32 temporaries stay small.

    Every tensor has ``out_shape``'s rank, with its size or 1 (broadcast) in each dimension; ``keep`` are the
    dimensions ``fn`` works across, which are never sliced.  Slices go over the first dimension that can
    be sliced, then, where one slice is still too large, over the next.
    """
    keep = set(keep)
    total = math.prod(out_shape) * 4
    dim = next((d for d in range(len(out_shape)) if d not in keep and out_shape[d] > 1), None)
    if total <= CHUNK_BYTES or dim is None:
        return fn(*tensors).to(out_dtype)
    out = torch.empty(out_shape, dtype=out_dtype)
    step = max(1, CHUNK_BYTES * out_shape[dim] // total)
    for start in range(0, out_shape[dim], step):
        index = (slice(None),) * dim + (slice(start, start + step),)
        parts = [t[index] if t.shape[dim] > 1 else t for t in tensors]
        shape = out_shape[:dim] + (min(step, out_shape[dim] - start),) + out_shape[dim + 1:]
        out[index] = sliced(fn, parts, shape, out_dtype, keep)
    return out


def native(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
    """One elementwise step on stored values: torch's float16 kernels compute in float32 and round once.

    Where torch has no float16 kernel for it, the step is computed in float32 and rounded by the caller.
    """
    try:
        return fn(*tensors)
    except (RuntimeError, NotImplementedError):
        return fn(*(t.float() if t.is_floating_point() else t for t in tensors))


def input_vars(op) -> list:
    out = []
    for value in op.inputs.values():
        if isinstance(value, (list, tuple)):
            out.extend(value)
        elif value is not None:
            out.append(value)
    return out


# --- the kernel registry ------------------------------------------------------------------------------

Kernel = Callable[[Args], Any]


def registrar(table: dict[str, Kernel]) -> Callable[..., Callable[[Kernel], Kernel]]:
    """A decorator ``_op(*names)`` entering the decorated kernel in ``table`` under each operation name."""
    def _op(*names: str):
        def register(fn):
            for name in names:
                table[name] = fn
            return fn
        return register
    return _op
