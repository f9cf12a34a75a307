"""Kernels of the operations that move data: reshape, transpose, concat, split, slice, gather, pad, ….

One function per operation of a saved ML program, entered in ``OPS`` by operation name; each works on the
stored values as they are (float16 stays float16), honours every attribute, and raises
:class:`~workers.execute.kernels_base.ProgramError` for one it does not implement.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from workers.execute.kernels_base import Kernel, Args, axes_of, normal_axis, registrar

OPS: dict[str, Kernel] = {}
_op = registrar(OPS)


# shapes and layout

@_op("reshape")
def _reshape(a: Args) -> torch.Tensor:
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
def _transpose(a: Args) -> torch.Tensor:
    x = a.r("x")
    return x.permute([normal_axis(p, x.dim()) for p in a.ints("perm")])


@_op("expand_dims")
def _expand_dims(a: Args) -> torch.Tensor:
    x = a.r("x")
    rank = x.dim() + len(a.ints("axes"))
    for axis in sorted(normal_axis(i, rank) for i in a.ints("axes")):
        x = x.unsqueeze(axis)
    return x


@_op("squeeze")
def _squeeze(a: Args) -> torch.Tensor:
    x = a.r("x")
    axes = axes_of(a, "axes", x.dim())
    if axes is None:
        return x.squeeze()
    for axis in reversed(axes):
        x = x.squeeze(axis)
    return x


@_op("concat")
def _concat(a: Args) -> torch.Tensor:
    values = a.rs("values")
    axis = normal_axis(a.v("axis"), values[0].dim())
    if a.v("interleave", False):  # element i of each input, then element i+1 of each
        stacked = torch.stack(values, dim=axis + 1)
        shape = list(values[0].shape)
        shape[axis] = sum(v.shape[axis] for v in values)
        return stacked.reshape(shape)
    return torch.cat(values, dim=axis)


@_op("stack")
def _stack(a: Args) -> torch.Tensor:
    values = a.rs("values")
    return torch.stack(values, dim=normal_axis(a.v("axis"), values[0].dim() + 1))


@_op("split")
def _split(a: Args) -> tuple[torch.Tensor, ...]:
    x = a.r("x")
    axis = normal_axis(a.v("axis"), x.dim())
    sizes = a.ints("split_sizes")
    if sizes is None:
        n = a.v("num_splits")
        size = -(-x.shape[axis] // n)
        sizes = [size] * (x.shape[axis] // size) + ([x.shape[axis] % size] if x.shape[axis] % size else [])
    if sum(sizes) != x.shape[axis]:
        raise a.unsupported("split_sizes", sizes)
    return tuple(torch.split(x, sizes, dim=axis))


@_op("tile")
def _tile(a: Args) -> torch.Tensor:
    return a.r("x").repeat(a.ints("reps"))


def _positions(begin: int | None, end: int | None, stride: int, size: int) -> range:
    return range(*slice(begin, end, stride).indices(size))


@_op("slice_by_index")
def _slice_by_index(a: Args) -> torch.Tensor:
    x = a.r("x")
    rank = x.dim()
    begin, end = a.ints("begin"), a.ints("end")
    stride = a.ints("stride") or [1] * rank
    begin_mask = a.v("begin_mask") if a.has("begin_mask") else [False] * rank
    end_mask = a.v("end_mask") if a.has("end_mask") else [False] * rank
    squeeze_mask = a.v("squeeze_mask") if a.has("squeeze_mask") else [False] * rank
    for d in range(rank):
        if squeeze_mask[d]:
            positions = range(normal_axis(begin[d], x.shape[d]), normal_axis(begin[d], x.shape[d]) + 1)
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
def _gather(a: Args) -> torch.Tensor:
    x, indices = a.r("x"), a.t("indices").to(torch.int64)
    axis = normal_axis(a.v("axis", 0), x.dim())
    if a.v("batch_dims", 0):
        raise a.unsupported("batch_dims", a.v("batch_dims"))
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    out = x.index_select(axis, indices.reshape(-1))
    return out.reshape(tuple(x.shape[:axis]) + tuple(indices.shape) + tuple(x.shape[axis + 1:]))


@_op("gather_nd")
def _gather_nd(a: Args) -> torch.Tensor:
    x, indices = a.r("x"), a.t("indices").to(torch.int64)
    if a.v("batch_dims", 0):
        raise a.unsupported("batch_dims", a.v("batch_dims"))
    k = indices.shape[-1]
    columns = [torch.where(indices[..., i] < 0, indices[..., i] + x.shape[i], indices[..., i]) for i in range(k)]
    return x[tuple(columns)]


@_op("pad")
def _pad(a: Args) -> torch.Tensor:
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
def _upsample_nearest(a: Args) -> torch.Tensor:
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
