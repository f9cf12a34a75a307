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
operation stay within ``CHUNK_BYTES``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable, Literal

import numpy as np
import torch
import torch.nn.functional as F

Precision = Literal["float16", "float32"]
CHUNK_BYTES = 128 << 20  # float32 temporaries of one sliced operation


class ProgramError(RuntimeError):
    """The saved program cannot be executed: an unknown operation or attribute, or a shape it contradicts."""


# --- values ---------------------------------------------------------------------------------------

_INT_RANGES = {"int8": (8, True), "uint8": (8, False), "int16": (16, True), "uint16": (16, False),
               "int32": (32, True), "uint32": (32, False), "int64": (64, True)}


def _dtype_name(var) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)


def _storage(dtype: str, precision: Precision) -> torch.dtype:
    """How a value of the program's ``dtype`` is held."""
    if dtype == "fp16":
        return torch.float16 if precision == "float16" else torch.float32
    if dtype in ("fp32", "fp64"):
        return torch.float32
    if dtype == "bool":
        return torch.bool
    return torch.int64  # every integer type, wrapped to its width where a cast makes one


def _tensor(value: Any) -> torch.Tensor:
    array = np.asarray(value)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if not array.flags.writeable:
        array = array.copy() if array.size <= 4096 else array  # small attribute arrays; weights stay shared
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # read-only weight arrays are never written through the tensor
        return torch.from_numpy(array)


def _wrap(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """An integer tensor reduced to the range of a narrower integer type, as a C cast does."""
    bits, signed = _INT_RANGES[dtype]
    if bits == 64:
        return x
    x = x & ((1 << bits) - 1)
    if signed:
        x = torch.where(x >= (1 << (bits - 1)), x - (1 << bits), x)
    return x


# --- operation arguments ----------------------------------------------------------------------------

class _Args:
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


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _axes(a: _Args, name: str, rank: int) -> list[int] | None:
    axes = a.ints(name)
    return None if axes is None else sorted(_axis(i, rank) for i in axes)


def _sliced(fn: Callable[..., torch.Tensor], tensors: list[torch.Tensor], out_shape: tuple[int, ...],
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
        out[index] = _sliced(fn, parts, shape, out_dtype, keep)
    return out


# --- operations ---------------------------------------------------------------------------------------

OPS: dict[str, Callable[[_Args], Any]] = {}


def _op(*names: str):
    def register(fn):
        for name in names:
            OPS[name] = fn
        return fn
    return register


_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": torch.abs, "ceil": torch.ceil, "cos": torch.cos, "erf": torch.erf, "exp": torch.exp,
    "exp2": torch.exp2, "floor": torch.floor, "relu": torch.relu, "round": torch.round, "sign": torch.sign,
    "sigmoid": torch.sigmoid, "silu": F.silu, "sin": torch.sin, "sqrt": torch.sqrt, "square": torch.square,
    "tan": torch.tan, "tanh": torch.tanh, "logical_not": torch.logical_not,
}
def _native(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor) -> torch.Tensor:
    """One elementwise step on stored values: torch's float16 kernels compute in float32 and round once.

    Where torch has no float16 kernel for it, the step is computed in float32 and rounded by the caller.
    """
    try:
        return fn(*tensors)
    except (RuntimeError, NotImplementedError):
        return fn(*(t.float() if t.is_floating_point() else t for t in tensors))


# elementwise operations whose torch float16 kernel gives exactly the float32 result rounded once (checked
# against that on this project's CPUs); the others (sqrt, erf, gelu, …) are computed in float32 here
_EXACT_IN_FLOAT16 = {"abs", "ceil", "cos", "exp", "exp2", "floor", "relu", "round", "sign", "sigmoid", "silu",
                     "sin", "square", "tanh", "logical_not", "add", "sub", "mul", "real_div", "maximum", "minimum",
                     "equal", "not_equal", "greater", "greater_equal", "less", "less_equal", "logical_and",
                     "logical_or", "logical_xor"}


def _elementwise(fn: Callable[..., torch.Tensor], name: str, inputs: tuple[str, ...]) -> Callable[[_Args], torch.Tensor]:
    if name in _EXACT_IN_FLOAT16:
        return lambda a: _native(fn, *(a.r(i) for i in inputs))
    return lambda a: fn(*(a.t(i) for i in inputs))


for _name, _fn in _UNARY.items():
    OPS[_name] = _elementwise(_fn, _name, ("x",))

_BINARY: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "real_div": torch.true_divide,
    "floor_div": torch.floor_divide, "mod": torch.remainder, "pow": torch.pow, "maximum": torch.maximum,
    "minimum": torch.minimum, "equal": torch.eq, "not_equal": torch.ne, "greater": torch.gt,
    "greater_equal": torch.ge, "less": torch.lt, "less_equal": torch.le, "logical_and": torch.logical_and,
    "logical_or": torch.logical_or, "logical_xor": torch.logical_xor,
}
for _name, _fn in _BINARY.items():
    OPS[_name] = _elementwise(_fn, _name, ("x", "y"))


@_op("rsqrt")
def _rsqrt(a: _Args) -> torch.Tensor:
    return torch.rsqrt(a.t("x") + a.v("epsilon", 1e-12))


@_op("inverse")
def _inverse(a: _Args) -> torch.Tensor:
    return 1.0 / (a.t("x") + a.v("epsilon", 1e-4))


@_op("log")
def _log(a: _Args) -> torch.Tensor:
    return torch.log(a.t("x") + a.v("epsilon", 1e-45))


@_op("clip")
def _clip(a: _Args) -> torch.Tensor:
    return _native(lambda x: torch.clamp(x, a.v("alpha"), a.v("beta")), a.r("x"))


@_op("gelu")
def _gelu(a: _Args) -> torch.Tensor:
    mode, x = a.v("mode", "EXACT"), a.t("x")
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise a.unsupported("mode", mode)


@_op("select")
def _select(a: _Args) -> torch.Tensor:
    return torch.where(a.r("cond").bool(), a.r("a"), a.r("b"))


@_op("cast")
def _cast(a: _Args) -> torch.Tensor:
    x, dtype = a.t("x"), a.v("dtype")
    if dtype in ("fp16", "fp32", "fp64"):
        return x.float()
    if dtype == "bool":
        return x != 0
    if dtype not in _INT_RANGES:
        raise a.unsupported("dtype", dtype)
    if x.is_floating_point():
        x = torch.trunc(x)  # numpy's (and coremltools') float-to-integer cast rounds towards zero
    return _wrap(x.to(torch.int64), dtype)


# shapes and layout

@_op("reshape")
def _reshape(a: _Args) -> torch.Tensor:
    x, shape = a.r("x"), a.ints("shape")
    # 0 copies the input's dimension at the same position counted from the right (iOS 17; the same as
    # iOS 15's rule where that one applies)
    dims = list(x.shape)
    for i, size in enumerate(shape):
        if size == 0:
            j = len(dims) - (len(shape) - i)
            shape[i] = dims[j] if j >= 0 else 1
    return x.reshape(shape)


@_op("transpose")
def _transpose(a: _Args) -> torch.Tensor:
    x = a.r("x")
    return x.permute([_axis(p, x.dim()) for p in a.ints("perm")])


@_op("expand_dims")
def _expand_dims(a: _Args) -> torch.Tensor:
    x = a.r("x")
    rank = x.dim() + len(a.ints("axes"))
    for axis in sorted(_axis(i, rank) for i in a.ints("axes")):
        x = x.unsqueeze(axis)
    return x


@_op("squeeze")
def _squeeze(a: _Args) -> torch.Tensor:
    x = a.r("x")
    axes = _axes(a, "axes", x.dim())
    if axes is None:
        return x.squeeze()
    for axis in reversed(axes):
        x = x.squeeze(axis)
    return x


@_op("concat")
def _concat(a: _Args) -> torch.Tensor:
    values = a.rs("values")
    axis = _axis(a.v("axis"), values[0].dim())
    if a.v("interleave", False):  # element i of each input, then element i+1 of each
        stacked = torch.stack(values, dim=axis + 1)
        shape = list(values[0].shape)
        shape[axis] = sum(v.shape[axis] for v in values)
        return stacked.reshape(shape)
    return torch.cat(values, dim=axis)


@_op("stack")
def _stack(a: _Args) -> torch.Tensor:
    values = a.rs("values")
    return torch.stack(values, dim=_axis(a.v("axis"), values[0].dim() + 1))


@_op("split")
def _split(a: _Args) -> tuple[torch.Tensor, ...]:
    x = a.r("x")
    axis = _axis(a.v("axis"), x.dim())
    sizes = a.ints("split_sizes")
    if sizes is None:
        n = a.v("num_splits")
        size = -(-x.shape[axis] // n)
        sizes = [size] * (x.shape[axis] // size) + ([x.shape[axis] % size] if x.shape[axis] % size else [])
    if sum(sizes) != x.shape[axis]:
        raise a.unsupported("split_sizes", sizes)
    return tuple(torch.split(x, sizes, dim=axis))


@_op("tile")
def _tile(a: _Args) -> torch.Tensor:
    return a.r("x").repeat(a.ints("reps"))


def _positions(begin: int | None, end: int | None, stride: int, size: int) -> range:
    return range(*slice(begin, end, stride).indices(size))


@_op("slice_by_index")
def _slice_by_index(a: _Args) -> torch.Tensor:
    x = a.r("x")
    rank = x.dim()
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride") or [1] * rank
    begin_mask = a.v("begin_mask") if a.has("begin_mask") else [False] * rank
    end_mask = a.v("end_mask") if a.has("end_mask") else [False] * rank
    squeeze_mask = a.v("squeeze_mask") if a.has("squeeze_mask") else [False] * rank
    for d in range(rank):
        if squeeze_mask[d]:
            positions = range(_axis(begin[d], x.shape[d]), _axis(begin[d], x.shape[d]) + 1)
        else:
            positions = _positions(None if begin_mask[d] else begin[d], None if end_mask[d] else end[d],
                                   stride[d], x.shape[d])
        if positions.step == 1:
            x = x.narrow(d, positions.start, max(0, len(positions)))
        else:
            x = x.index_select(d, torch.tensor(list(positions), dtype=torch.int64))
    for d in reversed(range(rank)):
        if squeeze_mask[d]:
            x = x.squeeze(d)
    return x


@_op("gather")
def _gather(a: _Args) -> torch.Tensor:
    x, indices = a.r("x"), a.t("indices").to(torch.int64)
    axis = _axis(a.v("axis", 0), x.dim())
    if a.v("batch_dims", 0):
        raise a.unsupported("batch_dims", a.v("batch_dims"))
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    out = x.index_select(axis, indices.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(indices.shape) + tuple(x.shape[axis + 1:]))


@_op("gather_nd")
def _gather_nd(a: _Args) -> torch.Tensor:
    x, indices = a.r("x"), a.t("indices").to(torch.int64)
    if a.v("batch_dims", 0):
        raise a.unsupported("batch_dims", a.v("batch_dims"))
    k = indices.shape[-1]
    columns = [torch.where(indices[..., i] < 0, indices[..., i] + x.shape[i], indices[..., i]) for i in range(k)]
    return x[tuple(columns)]


@_op("pad")
def _pad(a: _Args) -> torch.Tensor:
    x, pad = a.r("x"), a.ints("pad")
    mode = a.v("mode", "constant")
    pairs = [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)]  # from the first padded dimension on
    torch_pad = [p for pair in reversed(pairs) for p in pair]  # torch: last dimension first
    if mode == "constant":
        return F.pad(x, torch_pad, value=float(a.v("constant_val", 0.0)))
    if mode in ("reflect", "replicate"):
        spatial = len(pairs)
        lead = x.shape[:x.dim() - spatial]
        flat = x.reshape((1, math.prod(lead)) + tuple(x.shape[x.dim() - spatial:]))
        out = F.pad(flat, torch_pad, mode=mode)
        return out.reshape(tuple(lead) + tuple(out.shape[2:]))
    raise a.unsupported("mode", mode)


@_op("upsample_nearest_neighbor")
def _upsample_nearest(a: _Args) -> torch.Tensor:
    x = a.r("x")
    scales = (float(a.v("scale_factor_height", 1.0)), float(a.v("scale_factor_width", 1.0)))
    if x.dim() == 4 and all(scale.is_integer() and scale >= 1 for scale in scales):
        return F.interpolate(x, scale_factor=scales, mode="nearest")  # source index floor(i / scale) exactly
    for d, scale in zip((x.dim() - 2, x.dim() - 1), scales):
        size = int(math.floor(x.shape[d] * scale))
        index = torch.clamp((torch.arange(size, dtype=torch.float64) / scale).floor().to(torch.int64),
                            max=x.shape[d] - 1)
        x = x.index_select(d, index)
    return x


# linear algebra

@_op("linear")
def _linear(a: _Args) -> torch.Tensor:
    return F.linear(a.t("x"), a.t("weight"), a.t("bias") if a.has("bias") else None)


@_op("matmul")
def _matmul(a: _Args) -> torch.Tensor:
    x, y = a.r("x"), a.r("y")
    if a.v("transpose_x", False) and x.dim() > 1:
        x = x.transpose(-1, -2)
    if a.v("transpose_y", False) and y.dim() > 1:
        y = y.transpose(-1, -2)
    if x.dim() < 3 or y.dim() < 3:
        return torch.matmul(x.float(), y.float())
    shape = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2]) + (x.shape[-2], y.shape[-1])
    x, y = x.expand(shape[:-2] + x.shape[-2:]), y.expand(shape[:-2] + y.shape[-2:])
    return _sliced(lambda p, q: torch.matmul(p.float(), q.float()), [x, y], shape, a.out_dtype,
                   keep=range(len(shape) - 2, len(shape)))


@_op("einsum")
def _einsum(a: _Args) -> torch.Tensor:
    equation = a.v("equation")
    return torch.einsum(equation, *a.ts("values"))


def _conv_padding(a: _Args, x: torch.Tensor, kernel: list[int], strides: list[int],
                  dilations: list[int]) -> list[int]:
    """(before, after) per spatial dimension, in dimension order."""
    pad_type = a.v("pad_type", "valid")
    spatial = x.shape[2:]
    if pad_type == "valid":
        return [0] * (2 * len(kernel))
    if pad_type == "custom":
        return a.ints("pad")
    if pad_type in ("same", "same_lower"):
        pads = []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            pads += [small, large] if pad_type == "same" else [large, small]
        return pads
    raise a.unsupported("pad_type", pad_type)


@_op("conv")
def _conv(a: _Args) -> torch.Tensor:
    x, weight = a.t("x"), a.t("weight")
    n = weight.dim() - 2
    strides = a.ints("strides") or [1] * n
    dilations = a.ints("dilations") or [1] * n
    groups = int(a.v("groups", 1))
    pads = _conv_padding(a, x, list(weight.shape[2:]), strides, dilations)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(n)
    if conv is None:
        raise a.unsupported("rank", weight.dim())
    before, after = pads[0::2], pads[1::2]
    if before == after:
        padding = before
    else:
        x = F.pad(x, [p for i in reversed(range(n)) for p in (before[i], after[i])])
        padding = [0] * n
    bias = a.t("bias") if a.has("bias") else None
    return conv(x, weight, bias, stride=strides, padding=padding, dilation=dilations, groups=groups)


# normalisation and reductions

def _affine(a: _Args, out: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """``out`` scaled by the operation's ``gamma`` and shifted by its ``beta`` (each optional), as ``shape``."""
    if a.has("gamma"):
        out = out * a.t("gamma").reshape(shape)
    if a.has("beta"):
        out = out + a.t("beta").reshape(shape)
    return out


def _channels(x: torch.Tensor) -> list[int]:
    return [1, -1] + [1] * (x.dim() - 2)


@_op("batch_norm")
def _batch_norm(a: _Args) -> torch.Tensor:
    x = a.t("x")
    return F.batch_norm(x, a.t("mean"), a.t("variance"), a.t("gamma") if a.has("gamma") else None,
                        a.t("beta") if a.has("beta") else None, False, 0.0, a.v("epsilon", 1e-5))


@_op("instance_norm")
def _instance_norm(a: _Args) -> torch.Tensor:
    return F.instance_norm(a.t("x"), weight=a.t("gamma") if a.has("gamma") else None,
                           bias=a.t("beta") if a.has("beta") else None, eps=a.v("epsilon", 1e-5))


@_op("layer_norm")
def _layer_norm(a: _Args) -> torch.Tensor:
    x = a.t("x")
    axes = _axes(a, "axes", x.dim()) or list(range(x.dim()))
    gamma = a.t("gamma") if a.has("gamma") else None
    beta = a.t("beta") if a.has("beta") else None
    eps = a.v("epsilon", 1e-5)
    if axes == list(range(x.dim() - len(axes), x.dim())):  # the trailing dimensions: torch's own kernel
        shape = x.shape[x.dim() - len(axes):]
        return F.layer_norm(x, shape, None if gamma is None else gamma.reshape(shape),
                            None if beta is None else beta.reshape(shape), eps)
    centred = x - x.mean(dim=axes, keepdim=True)
    out = centred * torch.rsqrt((centred * centred).mean(dim=axes, keepdim=True) + eps)
    shape = [x.shape[d] if d in axes else 1 for d in range(x.dim())]
    if gamma is not None:
        out = out * gamma.reshape(shape)
    return out if beta is None else out + beta.reshape(shape)


@_op("softmax")
def _softmax(a: _Args) -> torch.Tensor:
    x = a.r("x")
    axis = _axis(a.v("axis", -1), x.dim())
    if x.dtype == torch.float16 and a.out_dtype == torch.float16:
        return _native(lambda t: torch.softmax(t, dim=axis), x)
    return _sliced(lambda t: torch.softmax(t.float(), dim=axis), [x], tuple(x.shape), a.out_dtype, keep=[axis])


_REDUCE: dict[str, Callable[[torch.Tensor, list[int], bool], torch.Tensor]] = {
    "reduce_mean": lambda x, d, k: x.mean(dim=d, keepdim=k),
    "reduce_sum": lambda x, d, k: x.sum(dim=d, keepdim=k),
    "reduce_prod": lambda x, d, k: _each(x, d, k, torch.prod),
    "reduce_max": lambda x, d, k: x.amax(dim=d, keepdim=k),
    "reduce_min": lambda x, d, k: x.amin(dim=d, keepdim=k),
    "reduce_l1_norm": lambda x, d, k: x.abs().sum(dim=d, keepdim=k),
    "reduce_l2_norm": lambda x, d, k: torch.sqrt((x * x).sum(dim=d, keepdim=k)),
    "reduce_sum_square": lambda x, d, k: (x * x).sum(dim=d, keepdim=k),
    "reduce_log_sum": lambda x, d, k: torch.log(x.sum(dim=d, keepdim=k)),
    "reduce_log_sum_exp": lambda x, d, k: torch.logsumexp(x, dim=d, keepdim=k),
}


def _each(x: torch.Tensor, dims: list[int], keep: bool, fn: Callable) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = fn(x, dim=d, keepdim=keep)
    return x


_ONE_STEP_REDUCTIONS = ("reduce_mean", "reduce_sum", "reduce_max", "reduce_min")  # float32 accumulation inside


def _reduce(fn: Callable[[torch.Tensor, list[int], bool], torch.Tensor], one_step: bool) -> Callable[[_Args], torch.Tensor]:
    def run(a: _Args) -> torch.Tensor:
        x = a.r("x") if one_step else a.t("x")
        axes = _axes(a, "axes", x.dim())
        axes = axes if axes is not None else list(range(x.dim()))
        keep = bool(a.v("keep_dims", False))
        return _native(lambda t: fn(t, axes, keep), x) if one_step else fn(x, axes, keep)
    return run


for _name, _fn in _REDUCE.items():
    OPS[_name] = _reduce(_fn, _name in _ONE_STEP_REDUCTIONS)


@_op("reduce_argmax", "reduce_argmin")
def _reduce_arg(a: _Args) -> torch.Tensor:
    x = a.t("x")
    axis = _axis(a.v("axis", -1), x.dim())
    fn = torch.argmax if a.op.op_type == "reduce_argmax" else torch.argmin
    return fn(x, dim=axis, keepdim=bool(a.v("keep_dims", False)))


# --- the program ----------------------------------------------------------------------------------

def operation_counts(program) -> dict[str, int]:
    """Operations of a program's main function by type (constants included)."""
    counts: dict[str, int] = {}
    for op in program.functions["main"].operations:
        counts[op.op_type] = counts.get(op.op_type, 0) + 1
    return counts


def _is_constant(op) -> bool:
    return op.op_type == "const" or op.op_type.startswith("constexpr_")


def _input_vars(op) -> list:
    out = []
    for value in op.inputs.values():
        if isinstance(value, (list, tuple)):
            out.extend(value)
        elif value is not None:
            out.append(value)
    return out


def _static_shape(var) -> tuple[int, ...] | None:
    shape = tuple(var.shape) if var.shape is not None else None
    if shape is None or not all(isinstance(d, (int, np.integer)) for d in shape):
        return None
    return tuple(int(d) for d in shape)


_ROW_BLOCK_BYTES = 4 << 20  # float32 scores of one block of query rows in a fused attention chain


def _attention_chains(operations: list, outputs: set[str]) -> dict[int, tuple[int, int]]:
    """Score matmul index -> (softmax index, value matmul index) for each ``matmul → softmax → matmul``.

    Taken only where the scores and probabilities feed nothing else, the softmax runs over the last axis,
    and the value matmul's other input exists before the chain starts: then the three can run one block of
    query rows at a time, each value rounded exactly as the program says, without holding all the scores.
    """
    index_of = {op.outputs[0].name: i for i, op in enumerate(operations) if len(op.outputs) == 1}
    consumers: dict[str, list[int]] = {}
    for i, op in enumerate(operations):
        for var in _input_vars(op):
            consumers.setdefault(var.name, []).append(i)

    def sole_user(op, op_type: str) -> int | None:
        """The index of the one operation using ``op``'s output, if it is an ``op_type`` and nothing else is."""
        name = op.outputs[0].name
        users = consumers.get(name, [])
        if len(users) != 1 or name in outputs or operations[users[0]].op_type != op_type:
            return None
        return users[0]

    chains = {}
    for i, op in enumerate(operations):
        if op.op_type != "matmul" or len(op.outputs) != 1 or op.outputs[0].rank < 3:
            continue
        j = sole_user(op, "softmax")
        if j is None:
            continue
        softmax = operations[j]
        axis = softmax.inputs["axis"].val if softmax.inputs.get("axis") is not None else -1
        if axis is None or int(axis) not in (-1, op.outputs[0].rank - 1):
            continue
        k = sole_user(softmax, "matmul")
        if k is None:
            continue
        probabilities = softmax.outputs[0].name
        value_op = operations[k]
        if value_op.inputs["x"].name != probabilities or value_op.inputs["y"].name == probabilities \
                or (value_op.inputs.get("transpose_x") is not None and value_op.inputs["transpose_x"].val):
            continue
        if index_of.get(value_op.inputs["y"].name, -1) > i:
            continue  # the values are computed inside the chain: run it as written
        chains[i] = (j, k)
    return chains


def _run_attention_chain(first: _Args, softmax: _Args, second: _Args, precision: Precision) -> torch.Tensor:
    """``matmul(softmax(matmul(q, k)), v)`` block by block of query rows, every step rounded as declared."""
    score_dtype = _storage(_dtype_name(first.op.outputs[0]), precision)
    probability_dtype = _storage(_dtype_name(softmax.op.outputs[0]), precision)
    q, k, v = first.r("x"), first.r("y"), second.r("y")
    if first.v("transpose_x", False):
        q = q.transpose(-1, -2)
    if first.v("transpose_y", False):
        k = k.transpose(-1, -2)
    if second.v("transpose_y", False):
        v = v.transpose(-1, -2)
    batch = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    rows, keys, width = q.shape[-2], k.shape[-1], v.shape[-1]
    q = q.expand(batch + q.shape[-2:]).reshape((-1,) + q.shape[-2:])
    k = k.expand(batch + k.shape[-2:]).reshape((-1,) + k.shape[-2:])
    v = v.expand(batch + v.shape[-2:]).reshape((-1,) + v.shape[-2:])
    out = torch.empty((q.shape[0], rows, width), dtype=second.out_dtype)
    block = max(1, _ROW_BLOCK_BYTES // (4 * keys))
    for n in range(q.shape[0]):
        kn, vn = k[n].float(), v[n].float()
        for start in range(0, rows, block):
            scores = torch.matmul(q[n, start:start + block].float(), kn).to(score_dtype)
            if scores.dtype == torch.float16 and probability_dtype == torch.float16:
                probabilities = _native(lambda t: torch.softmax(t, dim=-1), scores)
            else:
                probabilities = torch.softmax(scores.float(), dim=-1)
            out[n, start:start + block] = torch.matmul(probabilities.to(probability_dtype).float(), vn)
    return out.reshape(batch + (rows, width))


def execute_program(program, inputs: dict[str, Any], *, precision: Precision = "float16",
                    constants: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run the program's main function on ``inputs`` (feature name -> array); returns its outputs.

    ``constants`` may hold already-expanded values of ``constexpr_*`` operations by output name (as
    :func:`workers.validate.read_package` keeps them); others are expanded when first used.  Each value
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
