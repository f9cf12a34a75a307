"""Validate step: structural checks of a saved package and numeric checks against the torch original.

* structure: feature names, shapes and dtypes exactly as the spec; for palettized packages, a lookup
  table for every weight above the palettization threshold (embedding tables excepted).
* weights: every parameter of the export module is found in the saved package (by name, then by
  content) or shown folded away by coremltools as an identity (a scale of ones, a shift of zeros).
* program numbers (any OS): the saved ML program itself, run by :mod:`workers.execute.executor` with float16
  activations, against the library's float32 module, as PSNR: what ships is what is measured.
* torch-side numbers (any OS): the export module with its weights **read back from the saved package**
  (float16 consts, or palettized lookup tables expanded) against the same reference: tells a wrong
  weight from a wrong operation when the program check fails.
* Core ML numbers (macOS only): the package's own prediction against the same float32 reference.

PSNR is Apple's: ``20 log10((max|candidate| + 1e-5) / (rmse + 1e-10))``.
"""

from __future__ import annotations

import math
import platform
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from workers.validate.thresholds import ValidationBars
from workers.compress.palettize import SUPPORTED_BITS, WEIGHT_THRESHOLD
from workers.validate.readback import Accounting, PackageContents, account_parameters, load_read_back, read_package
from workers.validate.report import Check
from workers.convert.features import TensorSpec
from workers.convert.geometry import Geometry

if TYPE_CHECKING:
    from workers.convert.specs import ComponentSpec



def psnr(reference: np.ndarray, candidate: np.ndarray) -> float:
    """PSNR as Apple's converter defines it (peak from the candidate)."""
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    rmse = math.sqrt(float(np.mean((reference - candidate) ** 2)))
    peak = float(np.abs(candidate).max())
    return 20 * math.log10((peak + 1e-5) / (rmse + 1e-10))


def psnr_check(name: str, where: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
               outputs: Iterable[str], threshold: float) -> Check:
    """The worst PSNR over ``outputs``; NaN or inf anywhere fails."""
    values: dict[str, float] = {}
    for key in outputs:
        cand = np.asarray(candidate[key])
        values[key] = psnr(reference[key], cand) if np.isfinite(cand).all() else float("nan")
    worst_key = min(values, key=lambda k: (not math.isnan(values[k]), values[k]))
    worst = values[worst_key]
    detail = ", ".join(f"{k} {v:.1f} dB" for k, v in values.items())
    if math.isnan(worst):
        return Check(name, "failed", where, None, threshold, f"{worst_key} is not finite (NaN/inf)")
    status = "passed" if worst >= threshold else "failed"
    return Check(name, status, where, round(worst, 2), threshold, detail)


# --- reading a saved package -------------------------------------------------------------------------

def structure_check(contents: PackageContents, inputs: list[TensorSpec], outputs: list[TensorSpec],
                    bits: int | float | None) -> Check:
    """Feature names, shapes and dtypes as specified; palettized packages fully palettized (a mixed-bit one,
    ``bits`` its average, with palettes of the widths a recipe takes: which layer has which is :func:`recipe_check`'s)."""
    problems = []
    want_in = [(t.name, tuple(t.shape), t.dtype) for t in inputs]
    want_out = [(t.name, tuple(t.shape), t.dtype) for t in outputs]
    if contents.inputs != want_in:
        problems.append(f"inputs {contents.inputs} != {want_in}")
    if contents.outputs != want_out:
        problems.append(f"outputs {contents.outputs} != {want_out}")
    detail = f"{len(want_in)} inputs, {len(want_out)} outputs as specified"
    if bits is not None and contents.lut_ops == 0:
        problems.append("no palettized weights")
    if isinstance(bits, float):
        if contents.lut_sizes - {2 ** b for b in SUPPORTED_BITS}:
            problems.append(f"lookup tables of sizes {sorted(contents.lut_sizes)}, expected powers of two of "
                            f"{', '.join(map(str, SUPPORTED_BITS))} bits")
        detail += f"; {contents.lut_ops} palettized weights (mixed, {bits:.2f} bits on average)"
    elif bits is not None:
        if contents.unpalettized_large:
            problems.append(f"{len(contents.unpalettized_large)} large weights not palettized "
                            f"(e.g. {contents.unpalettized_large[0]})")
        if contents.lut_sizes - {2 ** bits}:
            problems.append(f"lookup tables of sizes {sorted(contents.lut_sizes)}, expected {2 ** bits}")
        detail += f"; {contents.lut_ops} palettized weights ({bits}-bit)"
    if problems:
        return Check("structure", "failed", "package", detail="; ".join(problems))
    return Check("structure", "passed", "package", detail=detail)


def recipe_check(contents: PackageContents, widths: dict[str, int]) -> Check:
    """Every layer of a mixed-bit recipe palettized to the width it names (16: left float16), by constant."""
    wrong = []
    for name, bits in sorted(widths.items()):
        size = contents.palettes.get(name)
        found = 16 if size is None else int(size).bit_length() - 1
        if found != bits:
            wrong.append(f"{name} {found} bits, recipe {bits}")
    detail = f"{len(widths)} layers as the recipe says"
    if wrong:
        return Check("recipe", "failed", "package", detail=f"{len(wrong)} of {len(widths)} layers differ from "
                     f"the recipe: {'; '.join(wrong[:3])}{' …' if len(wrong) > 3 else ''}")
    return Check("recipe", "passed", "package", detail=detail)


def program_check(contents: PackageContents, inputs: dict[str, torch.Tensor], reference: dict[str, np.ndarray],
                  outputs: list[str], threshold: float) -> Check:
    """The saved program, executed with float16 activations, against the float32 reference."""
    from workers.execute.executor import ProgramError, execute_program

    try:
        result = execute_program(contents.program, inputs, precision="float16", constants=contents.expanded)
    except ProgramError as e:
        return Check("psnr_program", "failed", "program", threshold=threshold, detail=str(e))
    return psnr_check("psnr_program", "program", reference, result, outputs, threshold)


def run_module(module: nn.Module, inputs: dict[str, torch.Tensor], names: list[str],
               params: dict[str, torch.Tensor] | None = None, *, per_sample: bool = False) -> dict[str, np.ndarray]:
    """Run ``module`` (optionally with substituted parameters) and name its outputs.

    ``per_sample`` runs the batch one sample at a time (when every input and output is batch-first), so the
    activations held at once are one sample's: a full-size SDXL UNet's attention over 4,096 tokens holds
    gigabytes of scores per sample."""
    batch = {t.shape[0] if t.ndim else 0 for t in inputs.values()} if per_sample else set()
    if len(batch) == 1 and batch.isdisjoint({0, 1}):
        parts = [run_module(module, {k: t[i:i + 1] for k, t in inputs.items()}, names, params)
                 for i in range(batch.pop())]
        return {name: np.concatenate([part[name] for part in parts]) for name in names}
    with torch.no_grad():
        args = tuple(inputs.values())
        out = torch.func.functional_call(module, params, args) if params else module(*args)
    return {name: o.detach().float().numpy() for name, o in zip(names, out)}


@contextmanager
def substituted_parameters(layers: Iterable[nn.Module],
                           replacement: Callable[[nn.Module], dict[str, torch.Tensor]]) -> Iterator[None]:
    """While inside, each of ``layers`` computes with ``replacement(layer)``'s tensors in place of those of its
    parameters they name: made when the layer runs and dropped after it, so no second copy of a network's
    weights is held at once.  Every layer has its own parameters back on exit, also one that raised."""
    kept: dict[int, tuple[nn.Module, dict]] = {}  # outside the layers: a Parameter attribute would register

    def swap(layer: nn.Module, args: Any) -> None:
        kept[id(layer)] = (layer, dict(layer._parameters))
        layer._parameters.update(replacement(layer))

    def restore(layer: nn.Module, args: Any, output: Any) -> None:
        layer._parameters.update(kept.pop(id(layer))[1])

    handles = []
    for layer in layers:
        handles += [layer.register_forward_pre_hook(swap), layer.register_forward_hook(restore)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer, parameters in kept.values():
            layer._parameters.update(parameters)


def float32_layers(module: nn.Module) -> AbstractContextManager[None]:
    """While inside, each layer of ``module`` holding float16 parameters computes with them widened to float32,
    only while that layer runs (exactly: widening is lossless).  A memory-lean conversion's torch module keeps
    its weights float16: widened as a whole, a full-size SDXL UNet would hold 10 GB of float32 copies beside
    the float16 ones its views share.  A module reading another layer's weights fails loudly (float16 beside
    float32), never silently."""
    def float16(layer: nn.Module) -> dict[str, torch.Tensor]:
        return {name: p for name, p in layer._parameters.items() if p is not None and p.dtype == torch.float16}

    return substituted_parameters([layer for layer in module.modules() if float16(layer)],
                                  lambda layer: {name: p.float() for name, p in float16(layer).items()})


def coreml_available() -> bool:
    """Core ML predictions need macOS (coremltools' native runtime is not built elsewhere)."""
    return platform.system() == "Darwin"


def input_dtypes(input_specs: list[TensorSpec]) -> dict[str, type]:
    """The numpy type each input feature is fed in."""
    return {t.name: np.float16 if t.dtype == "float16" else np.float32 for t in input_specs}


def coreml_check(package: Path, inputs: dict[str, torch.Tensor], input_specs: list[TensorSpec],
                 reference: dict[str, np.ndarray], outputs: list[str], threshold: float) -> Check:
    """Core ML prediction of the saved package against the float32 reference (macOS only)."""
    if not coreml_available():
        return Check("psnr_coreml", "skipped", "coreml", threshold=threshold, detail="needs macOS")
    import coremltools as ct

    dtypes = input_dtypes(input_specs)
    model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_AND_GPU)
    prediction = model.predict({k: v.numpy().astype(dtypes[k]) for k, v in inputs.items()})
    return psnr_check("psnr_coreml", "coreml", reference, prediction, outputs, threshold)


def validate_package(spec: ComponentSpec, geometry: Geometry, bars: ValidationBars, path: Path, export,
                     io: Any, *, bits: int | float | None, float16: Accounting | None,
                     widths: dict[str, int] | None = None,
                     stage: Callable[[str], Any] | None = None) -> tuple[list[Check], Accounting]:
    """Structure, weights, the executed program, the torch read-back and Core ML for one saved package.

    ``float16`` is where the parameters were found in the float16 package a palettized one was made from
    (None for a float16 package).  The program runs while the package is loaded; then its weights are
    read into ``export`` (in place) and the package is released before the module runs.  ``stage(name)``
    is entered around the program's execution (``execute``), to time and follow it.
    """
    compared = spec.compared(geometry)
    try:
        contents = read_package(path, threshold=WEIGHT_THRESHOLD)
    except Exception as e:  # a damaged package fails coremltools' reader in many ways; it fails its checks
        return [Check("structure", "failed", "package",
                      detail=f"the package cannot be read ({e.__class__.__name__}: {e})".splitlines()[0])], Accounting()
    checks = [structure_check(contents, io.inputs, io.outputs, bits)]
    if widths is not None:
        checks.append(recipe_check(contents, widths))
    accounting, weights_check = account_parameters(export, contents.weights, float16, palettized=bits is not None)
    checks.append(weights_check)
    with (stage or (lambda name: nullcontext()))("execute"):
        checks.append(program_check(contents, io.check, io.reference, compared, bars.shipped(bits)))
    load_read_back(export, contents.weights, accounting)
    contents.release()  # the program's weights go before the module runs
    with float32_layers(export):  # a memory-lean conversion's float16 weights (workers.convert.lean) computed in float32
        candidate = run_module(export, io.check, [t.name for t in io.outputs])
    checks.append(psnr_check("psnr_torch", "torch", io.reference, candidate, compared, bars.for_bits(bits)))
    checks.append(coreml_check(path, io.check, io.inputs, io.reference, compared, bars.shipped(bits)))
    return checks, accounting
