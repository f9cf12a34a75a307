"""Memory-lean conversion, every UNet's (first made for those too large to hold twice: the SDXL UNet has 2.6 B
parameters, 10.3 GB in float32; on the SD 1.5 UNet it is also about 2.5x faster than the float32 path).

The normal path traces the export module with its float32 weights and lets coremltools convert the float32
program, then cast it to float16: float32 weights, coremltools' float32 constants and their float16 copies
are resident together (over 19 GB for the SDXL UNet).  Here:

1. the export module is traced in float32 on PyTorch's ``meta`` device: the same graph, no weights
   (:func:`trace_on_meta`);
2. the weights are read as float16 tensor by tensor (the query projections stay float32 until the softmax
   scale is folded into them, as the normal path rounds them) and put into the traced module by name
   (:func:`assign_weights`);
3. coremltools converts that graph keeping it float16 from the start (:func:`float16_graph`): the float16
   inputs are not cast up, a float32 scalar or constant beside a float16 value becomes float16, and values
   are promoted to float16.  That is what its float16 pass would have made of the float32 program; the
   equivalence test (``tests/workers/test_lean.py``) shows the same operations, the same float16 constants
   and bit-identical executed outputs on tiny SDXL and SD UNets in every layout.

Both workarounds are scoped: PyTorch's meta kernels are re-registered only while tracing, coremltools' builder
is patched only while its torch frontend runs, and everything is restored in ``finally``.  They depend on the
pinned torch and coremltools versions (``pyproject.toml``); the equivalence test is what guards an upgrade.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from workers.errors import ConversionError

# ops whose Python meta kernels would stay as registered by torch: they recurse or are view ops (as in torch's
# own ``activate_meta``)
_KEEP = {"aten::empty_strided", "aten::clone", "aten::_to_copy", "aten::copy_", "aten::constant_pad_nd",
         "aten::rot90", "aten::as_strided_scatter"}


def _untraced(kernel: Any) -> Any:
    """A meta kernel run with the tracer off: traced shapes are tensors, which Python shape checks refuse."""
    def run(*args: Any, **kwargs: Any) -> Any:
        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            return kernel(*args, **kwargs)
        finally:
            torch._C._set_tracing_state(state)
    return run


def _convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    # the tracer records aten::_convolution (as it does on the CPU); a meta kernel of aten::convolution itself
    # would leave the output unrecorded, a constant without data
    return torch.ops.aten._convolution(input, weight, bias, stride, padding, dilation, transposed,
                                       output_padding, groups, False, False, True, True)


@contextlib.contextmanager
def meta_tracing() -> Iterator[None]:
    """While inside, ``torch.jit.trace`` works on ``meta`` tensors (restored on exit)."""
    from torch._decomp import global_decomposition_table
    from torch._ops import OpOverload

    kernels: dict[OpOverload, Any] = {}
    for kind in ("meta", "post_autograd", "pre_autograd"):  # torch's own precedence
        for op, kernel in global_decomposition_table[kind].items():
            kernels.setdefault(op, kernel)
    library = torch.library.Library("aten", "IMPL", "Meta")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel": on purpose, undone below
            for op, kernel in kernels.items():
                if not isinstance(op, OpOverload) or not op.name().startswith("aten::") or op.is_view \
                        or op.name() in _KEEP \
                        or torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CompositeImplicitAutograd"):
                    continue
                try:
                    library.impl(op, _untraced(kernel))
                except RuntimeError:
                    continue  # not overridable here (torch keeps a C++ meta kernel): it needs no help
            library.impl("convolution", _convolution)
        yield
    finally:
        library._destroy()


def trace_on_meta(module: nn.Module, example: dict[str, torch.Tensor], component: str) -> torch.jit.ScriptModule:
    """TorchScript-trace a float32 module built on the ``meta`` device, with ``example`` inputs moved there.

    Raises ConversionError when tracing fails or the trace holds a tensor that no recorded operation made (it
    would have no data).
    """
    inputs = tuple(t.to("meta") for t in example.values())
    try:
        with torch.no_grad(), warnings.catch_warnings(), meta_tracing():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, inputs, check_trace=False, strict=False)
    except Exception as e:  # tracing failures are model-specific and have many types
        raise ConversionError(f"tracing {component} on the meta device failed: {e.__class__.__name__}: {e}",
                              component=component) from e
    for node in traced.inlined_graph.nodes():
        value = node.output().toIValue() if node.kind() == "prim::Constant" and node.outputsSize() == 1 \
            and node.output().type().kind() == "TensorType" else None
        if isinstance(value, torch.Tensor) and value.device.type == "meta":
            raise ConversionError(f"tracing {component} on the meta device left a tensor without data "
                                  f"({node.output().debugName()}): an operation was not recorded",
                                  component=component)
    return traced


def assign_weights(traced: torch.jit.ScriptModule, module: nn.Module, component: str) -> None:
    """Put ``module``'s parameters and buffers into ``traced`` (traced from the same structure on ``meta``)
    under the same names.  Raises ConversionError if the names differ or any traced tensor is left on meta."""
    ours = dict(module.named_parameters()) | dict(module.named_buffers())
    theirs = dict(traced.named_parameters()) | dict(traced.named_buffers())
    if set(ours) != set(theirs):
        extra = sorted(set(ours) ^ set(theirs))
        raise ConversionError(f"{component}: the traced module's tensors differ from the weights' "
                              f"({', '.join(extra[:3])})", component=component)
    for name, tensor in ours.items():
        owner = traced
        *path, leaf = name.split(".")
        for part in path:
            owner = getattr(owner, part)
        value = tensor.detach()
        setattr(owner, leaf, nn.Parameter(value, requires_grad=False) if name in theirs and
                isinstance(theirs[name], nn.Parameter) else value)
    left = [n for n, t in list(traced.named_parameters()) + list(traced.named_buffers()) if t.device.type == "meta"]
    if left:
        raise ConversionError(f"{component}: {len(left)} traced tensors have no weights ({left[0]})",
                              component=component)


# Builder operations whose float operands must all share one type: a float32 scalar or constant beside a float16
# value becomes float16 (what coremltools' float16 pass would make of it)
_SAME_TYPE_OPS = ("add", "sub", "mul", "real_div", "floor_div", "pow", "maximum", "minimum", "equal", "not_equal",
                  "less", "less_equal", "greater", "greater_equal", "select", "clip", "layer_norm",
                  "instance_norm", "batch_norm", "fill", "elu", "leaky_relu", "linear_activation")


def _half(value: Any) -> Any:
    from coremltools.converters.mil.mil import Builder as mb, Var, types

    if isinstance(value, float) or isinstance(value, np.float32):
        return np.float16(value)
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        return value.astype(np.float16)
    if isinstance(value, Var) and value.dtype == types.fp32 and value.val is not None:
        return mb.const(val=np.asarray(value.val, dtype=np.float16))
    return value


def _is_half(value: Any) -> bool:
    from coremltools.converters.mil.mil import Var, types

    return isinstance(value, Var) and value.dtype == types.fp16 and value.val is None


@contextlib.contextmanager
def _frontend_float16() -> Iterator[None]:
    from coremltools.converters.mil.frontend.torch import ops as torch_ops
    from coremltools.converters.mil.mil import Builder as mb, Var, types

    raw = {name: vars(mb)[name] for name in ("cast",) + _SAME_TYPE_OPS}  # the classmethods, restored as they were
    saved = {name: getattr(mb, name) for name in raw}
    saved_promote = torch_ops.promote_input_dtypes

    def cast(*args: Any, **kwargs: Any) -> Any:
        x = kwargs.get("x", args[0] if args else None)
        if kwargs.get("dtype") == "fp32" and _is_half(x):
            return x  # a float16 input or value is not cast up: the graph stays float16
        return saved["cast"](*args, **kwargs)

    def same_type(name: str) -> Any:
        def build(*args: Any, **kwargs: Any) -> Any:
            if any(_is_half(v) for v in kwargs.values()):
                kwargs = {k: _half(v) for k, v in kwargs.items()}
            return saved[name](*args, **kwargs)
        return build

    def promote(values: list) -> list:
        dtypes = {v.dtype for v in values if isinstance(v, Var)}
        if types.fp16 in dtypes and dtypes <= {types.fp16, types.fp32}:
            return [_half(v if isinstance(v, Var) else mb.const(val=v)) for v in values]
        return saved_promote(values)

    mb.cast = cast
    for name in _SAME_TYPE_OPS:
        setattr(mb, name, same_type(name))
    torch_ops.promote_input_dtypes = promote
    try:
        yield
    finally:
        for name, original in raw.items():
            setattr(mb, name, original)
        torch_ops.promote_input_dtypes = saved_promote


@contextlib.contextmanager
def float16_graph() -> Iterator[None]:
    """While inside, coremltools' torch frontend builds a float16 program from float16 weights (restored on
    exit).  The passes that follow (outputs cast to their declared types included) run as they are, but for
    the batch norm that fuses a scale and shift: its mean and variance take the scale's type."""
    from coremltools.converters.mil.frontend.torch.converter import TorchConverter
    from coremltools.converters.mil.mil import Builder as mb

    original = TorchConverter.convert
    batch_norm = vars(mb)["batch_norm"]
    build_batch_norm = mb.batch_norm

    def convert(self, *args: Any, **kwargs: Any) -> Any:
        with _frontend_float16():
            return original(self, *args, **kwargs)

    def fused_batch_norm(*args: Any, **kwargs: Any) -> Any:
        # the pass fusing a scale and a shift into a batch norm writes its mean and variance as float32
        gamma = kwargs.get("gamma")
        if isinstance(gamma, np.ndarray) and gamma.dtype == np.float16:
            kwargs = {k: _half(v) if k in ("mean", "variance") else v for k, v in kwargs.items()}
        return build_batch_norm(*args, **kwargs)

    TorchConverter.convert = convert
    mb.batch_norm = fused_batch_norm
    try:
        yield
    finally:
        TorchConverter.convert = original
        mb.batch_norm = batch_norm
