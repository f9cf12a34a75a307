"""Kernels of the operations that compute: elementwise, cast, linear algebra, normalisation, reductions.

One function per operation of a saved ML program, entered in ``OPS`` by operation name; each honours every
attribute and raises :class:`~workers.execute.kernels_base.ProgramError` for one it does not implement.  Single
elementwise steps, the plain reductions and softmax use torch's float16 kernels where those round once;
the rest compute in float32 from the stored values (:mod:`workers.execute.executor` rounds the results).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from workers.execute.kernels_base import INT_RANGES, Kernel, Args, axes_of, normal_axis, native, registrar, sliced, wrap

OPS: dict[str, Kernel] = {}
_op = registrar(OPS)


_UNARY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "abs": torch.abs, "ceil": torch.ceil, "cos": torch.cos, "erf": torch.erf, "exp": torch.exp,
    "exp2": torch.exp2, "floor": torch.floor, "relu": torch.relu, "round": torch.round, "sign": torch.sign,
    "sigmoid": torch.sigmoid, "silu": F.silu, "sin": torch.sin, "sqrt": torch.sqrt, "square": torch.square,
    "tan": torch.tan, "tanh": torch.tanh, "logical_not": torch.logical_not,
}


# elementwise operations whose torch float16 kernel gives exactly the float32 result rounded once (checked
# against that on this project's CPUs); the others (sqrt, erf, gelu, …) are computed in float32 here
_EXACT_IN_FLOAT16 = {"abs", "ceil", "cos", "exp", "exp2", "floor", "relu", "round", "sign", "sigmoid", "silu",
                     "sin", "square", "tanh", "logical_not", "add", "sub", "mul", "real_div", "maximum", "minimum",
                     "equal", "not_equal", "greater", "greater_equal", "less", "less_equal", "logical_and",
                     "logical_or", "logical_xor"}


def _elementwise(fn: Callable[..., torch.Tensor], name: str, inputs: tuple[str, ...]) -> Callable[[Args], torch.Tensor]:
    if name in _EXACT_IN_FLOAT16:
        return lambda a: native(fn, *(a.r(i) for i in inputs))
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
def _rsqrt(a: Args) -> torch.Tensor:
    return torch.rsqrt(a.t("x") + a.v("epsilon", 1e-12))


@_op("inverse")
def _inverse(a: Args) -> torch.Tensor:
    return 1.0 / (a.t("x") + a.v("epsilon", 1e-4))


@_op("log")
def _log(a: Args) -> torch.Tensor:
    return torch.log(a.t("x") + a.v("epsilon", 1e-45))


@_op("clip")
def _clip(a: Args) -> torch.Tensor:
    return native(lambda x: torch.clamp(x, a.v("alpha"), a.v("beta")), a.r("x"))


@_op("gelu")
def _gelu(a: Args) -> torch.Tensor:
    mode, x = a.v("mode", "EXACT"), a.t("x")
    if mode == "EXACT":
        return F.gelu(x)
    if mode == "TANH_APPROXIMATION":
        return F.gelu(x, approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return x * torch.sigmoid(1.702 * x)
    raise a.unsupported("mode", mode)


@_op("select")
def _select(a: Args) -> torch.Tensor:
    return torch.where(a.r("cond").bool(), a.r("a"), a.r("b"))


@_op("cast")
def _cast(a: Args) -> torch.Tensor:
    x, dtype = a.t("x"), a.v("dtype")
    if dtype in ("fp16", "fp32", "fp64"):
        return x.float()
    if dtype == "bool":
        return x != 0
    if dtype not in INT_RANGES:
        raise a.unsupported("dtype", dtype)
    if x.is_floating_point():
        x = torch.trunc(x)  # numpy's (and coremltools') float-to-integer cast rounds towards zero
    return wrap(x.to(torch.int64), dtype)


# linear algebra

@_op("linear")
def _linear(a: Args) -> torch.Tensor:
    return F.linear(a.t("x"), a.t("weight"), a.t("bias") if a.has("bias") else None)


@_op("matmul")
def _matmul(a: Args) -> torch.Tensor:
    x, y = a.r("x"), a.r("y")
    if a.v("transpose_x", False) and x.dim() > 1:
        x = x.transpose(-1, -2)
    if a.v("transpose_y", False) and y.dim() > 1:
        y = y.transpose(-1, -2)
    if x.dim() < 3 or y.dim() < 3:
        return torch.matmul(x.float(), y.float())
    shape = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2]) + (x.shape[-2], y.shape[-1])
    x, y = x.expand(shape[:-2] + x.shape[-2:]), y.expand(shape[:-2] + y.shape[-2:])
    return sliced(lambda p, q: torch.matmul(p.float(), q.float()), [x, y], shape, a.out_dtype,
                   keep=range(len(shape) - 2, len(shape)))


@_op("einsum")
def _einsum(a: Args) -> torch.Tensor:
    equation = a.v("equation")
    return torch.einsum(equation, *a.ts("values"))


def _conv_padding(a: Args, x: torch.Tensor, kernel: list[int], strides: list[int],
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
def _conv(a: Args) -> torch.Tensor:
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

@_op("batch_norm")
def _batch_norm(a: Args) -> torch.Tensor:
    x = a.t("x")
    return F.batch_norm(x, a.t("mean"), a.t("variance"), a.t("gamma") if a.has("gamma") else None,
                        a.t("beta") if a.has("beta") else None, False, 0.0, a.v("epsilon", 1e-5))


@_op("instance_norm")
def _instance_norm(a: Args) -> torch.Tensor:
    return F.instance_norm(a.t("x"), weight=a.t("gamma") if a.has("gamma") else None,
                           bias=a.t("beta") if a.has("beta") else None, eps=a.v("epsilon", 1e-5))


@_op("layer_norm")
def _layer_norm(a: Args) -> torch.Tensor:
    x = a.t("x")
    axes = axes_of(a, "axes", x.dim()) or list(range(x.dim()))
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
def _softmax(a: Args) -> torch.Tensor:
    x = a.r("x")
    axis = normal_axis(a.v("axis", -1), x.dim())
    if x.dtype == torch.float16 and a.out_dtype == torch.float16:
        return native(lambda t: torch.softmax(t, dim=axis), x)
    return sliced(lambda t: torch.softmax(t.float(), dim=axis), [x], tuple(x.shape), a.out_dtype, keep=[axis])


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


def _reduce(fn: Callable[[torch.Tensor, list[int], bool], torch.Tensor], one_step: bool) -> Callable[[Args], torch.Tensor]:
    def run(a: Args) -> torch.Tensor:
        x = a.r("x") if one_step else a.t("x")
        axes = axes_of(a, "axes", x.dim())
        axes = axes if axes is not None else list(range(x.dim()))
        keep = bool(a.v("keep_dims", False))
        return native(lambda t: fn(t, axes, keep), x) if one_step else fn(x, axes, keep)
    return run


for _name, _fn in _REDUCE.items():
    OPS[_name] = _reduce(_fn, _name in _ONE_STEP_REDUCTIONS)


@_op("reduce_argmax", "reduce_argmin")
def _reduce_arg(a: Args) -> torch.Tensor:
    x = a.t("x")
    axis = normal_axis(a.v("axis", -1), x.dim())
    fn = torch.argmax if a.op.op_type == "reduce_argmax" else torch.argmin
    return fn(x, dim=axis, keepdim=bool(a.v("keep_dims", False)))
