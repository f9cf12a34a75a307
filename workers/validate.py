"""Validate step: structural checks of a saved package and numeric checks against the torch original.

* structure: feature names, shapes and dtypes exactly as the spec; for palettized packages, a lookup
  table for every weight above the palettization threshold (embedding tables excepted).
* weights: every parameter of the export module is found in the saved package (by name, then by
  content) or shown folded away by coremltools as an identity (a scale of ones, a shift of zeros).
* program numbers (any OS): the saved ML program itself, run by :mod:`workers.executor` with float16
  activations, against the library's float32 module, as PSNR: what ships is what is measured.
* torch-side numbers (any OS): the export module with its weights **read back from the saved package**
  (float16 consts, or palettized lookup tables expanded) against the same reference: tells a wrong
  weight from a wrong operation when the program check fails.
* Core ML numbers (macOS only): the package's own prediction against the same float32 reference.

PSNR is Apple's: ``20 log10((max|candidate| + 1e-5) / (rmse + 1e-10))``.
"""

from __future__ import annotations

import gc
import math
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from workers.bars import PALETTIZED_BARS, ValidationBars  # noqa: F401 (re-exported: part of this API)
from workers.layout import CHECK_DATA_DIR
from workers.specs import TensorSpec

_FLOAT = (np.float16, np.float32, np.float64)


@dataclass
class Check:
    """One validation result as it appears in the report and the ✓/✗ table."""

    name: str
    status: str  # "passed", "failed" or "skipped"
    where: str  # "package", "program", "torch" or "coreml"
    value: float | None = None
    threshold: float | None = None
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def to_dict(self) -> dict:
        return asdict(self)


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

@dataclass
class PackageContents:
    """What a saved package declares and holds; ``program`` is its ML program, ready for the executor."""

    inputs: list[tuple[str, tuple[int, ...], str]]
    outputs: list[tuple[str, tuple[int, ...], str]]
    metadata: dict[str, str]
    weights: dict[str, np.ndarray] = field(repr=False)  # const name (suffixes stripped) -> dense value
    lut_ops: int = 0
    lut_sizes: set[int] = field(default_factory=set)
    unpalettized_large: list[str] = field(default_factory=list)  # float consts (rank > 1) > threshold, not LUT
    program: object = field(default=None, repr=False)
    expanded: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # constexpr output -> dense

    def release(self) -> None:
        """Drop the program and its weights now (its operations reference each other)."""
        self.program, self.weights, self.expanded = None, {}, {}
        gc.collect()


_ARRAY_DTYPES = {65552: "float16", 65568: "float32", 131104: "int32"}
_SUFFIXES = ("_palettized", "_to_fp16")


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name, changed = name[: -len(suffix)], True
    return name


def _features(features) -> list[tuple[str, tuple[int, ...], str]]:
    out = []
    for f in features:
        arr = f.type.multiArrayType
        out.append((f.name, tuple(int(d) for d in arr.shape), _ARRAY_DTYPES.get(arr.dataType, str(arr.dataType))))
    return out


def load_program(model):
    """The MIL program of a saved (uncompiled) coremltools MLModel, weights included."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    spec = model.get_spec()
    return load_milproto(spec, spec.specificationVersion, model.weights_dir)


def nonfinite_constants(program) -> list[str]:
    """Names of float constants holding inf or NaN: attention masks, not weights."""
    names = []
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            value = op.outputs[0].val
            if isinstance(value, np.ndarray) and value.dtype in _FLOAT and not np.isfinite(value).all():
                names.append(op.name)
    return names


def read_package(path: Path, *, threshold: int = 2048) -> PackageContents:
    """Load a package's interface, its program and its weights as dense float16 arrays (no Core ML needed).

    Lookup tables are expanded once, here; the executor reuses them.  Call ``release()`` (or drop the
    result) when done: a full-size UNet's program holds its whole weight file.
    """
    import coremltools as ct

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    program = load_program(model)
    weights: dict[str, np.ndarray] = {}
    expanded: dict[str, np.ndarray] = {}
    lut_ops, lut_sizes = 0, set()
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            value = op.outputs[0].val
            if isinstance(value, np.ndarray) and value.dtype in _FLOAT and value.size > 1:
                weights[_strip(op.name)] = value
        elif op.op_type.startswith("constexpr_lut_to_dense"):
            lut_ops += 1
            lut = op.inputs["lut"].val  # iOS 16: (palette,); iOS 18: (groups…, palette, vector size)
            lut_sizes.add(int(lut.size if lut.ndim == 1 else lut.shape[-2]))
            expanded[op.outputs[0].name] = weights[_strip(op.name)] = op.materialized_val_inference()
    return PackageContents(_features(spec.description.input), _features(spec.description.output),
                           dict(spec.description.metadata.userDefined), weights, lut_ops, lut_sizes,
                           unpalettized_weights(program, threshold), program, expanded)


def unpalettized_weights(program, threshold: int = 2048) -> list[str]:
    """Names of plain float constants a palettizer should have replaced.

    Those above ``threshold`` elements, except vectors (coremltools never palettizes rank-1 constants:
    biases stay float16), embedding tables (``gather`` inputs) and constants holding inf or NaN (masks).
    """
    operations = program.functions["main"].operations
    gather_inputs = {v.name for op in operations if op.op_type.startswith("gather")
                     for v in op.inputs.values() if hasattr(v, "name")}
    names = []
    for op in operations:
        if op.op_type == "const":
            value = op.outputs[0].val
            if isinstance(value, np.ndarray) and value.dtype in _FLOAT and value.size > threshold \
                    and value.ndim > 1 and op.outputs[0].name not in gather_inputs and np.isfinite(value).all():
                names.append(op.name)
    return names


def structure_check(contents: PackageContents, inputs: list[TensorSpec], outputs: list[TensorSpec],
                    bits: int | None) -> Check:
    """Feature names, shapes and dtypes as specified; palettized packages fully palettized."""
    problems = []
    want_in = [(t.name, tuple(t.shape), t.dtype) for t in inputs]
    want_out = [(t.name, tuple(t.shape), t.dtype) for t in outputs]
    if contents.inputs != want_in:
        problems.append(f"inputs {contents.inputs} != {want_in}")
    if contents.outputs != want_out:
        problems.append(f"outputs {contents.outputs} != {want_out}")
    detail = f"{len(want_in)} inputs, {len(want_out)} outputs as specified"
    if bits is not None:
        if contents.lut_ops == 0:
            problems.append("no palettized weights")
        if contents.unpalettized_large:
            problems.append(f"{len(contents.unpalettized_large)} large weights not palettized "
                            f"(e.g. {contents.unpalettized_large[0]})")
        if contents.lut_sizes - {2 ** bits}:
            problems.append(f"lookup tables of sizes {sorted(contents.lut_sizes)}, expected {2 ** bits}")
        detail += f"; {contents.lut_ops} palettized weights ({bits}-bit)"
    if problems:
        return Check("structure", "failed", "package", detail="; ".join(problems))
    return Check("structure", "passed", "package", detail=detail)


def _key(param_name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", param_name)


@dataclass
class Accounting:
    """Where each parameter of a module is in a package: a constant's name, or folded as an identity."""

    mapping: dict[str, str] = field(default_factory=dict)  # parameter -> const name (suffixes stripped)
    folded: set[str] = field(default_factory=set)  # parameters coremltools removed as identities


def _identity(p: torch.Tensor) -> bool:
    """A scale of ones or a shift of zeros: coremltools removes the operation applying it."""
    return bool((p == 1).all() or (p == 0).all())


def account_parameters(module: nn.Module, weights: dict[str, np.ndarray], float16: Accounting | None = None,
                       *, palettized: bool = False) -> tuple[Accounting, Check]:
    """Find every parameter of ``module`` in a package's constants, or show it folded as an identity.

    For a float16 package (``float16`` is None) each parameter is looked up by its traced name, then by
    identical float16 content (coremltools renames constants it reshapes or folds, and stores equal
    tensors once), and otherwise accepted as folded only when it is an identity (a scale of ones, a
    shift of zeros: coremltools drops the operation, so no constant remains).  A palettized package is
    checked against its own constants: each parameter must be there under the name the float16 package
    had it under, and the folded ones must be identities.  The check fails naming the parameters that
    are neither; whether a folded identity really was harmless is shown by executing the program.
    ``palettized`` without ``float16`` (a palettized package whose float16 package is not at hand): a
    parameter found neither by name nor by content is matched to the unclaimed constant of its size
    nearest to it, when that is within half the parameter's own magnitude (root mean square).
    """
    by_size: dict[int, list[str]] = {}
    for key, value in weights.items():
        by_size.setdefault(value.size, []).append(key)
    accounting, missing = Accounting(), []
    claimed: set[str] = set()
    parameters = list(module.named_parameters(remove_duplicate=True))
    for name, p in parameters:
        if float16 is not None:
            key = float16.mapping.get(name, _key(name))
        else:
            key = _key(name)
        value = weights.get(key)
        if value is not None and value.size == p.numel():
            accounting.mapping[name] = key
            claimed.add(key)
    for name, p in parameters:
        if name in accounting.mapping:
            continue
        if float16 is None:  # by content: equal tensors all map to coremltools' one copy
            rounded = p.detach().half().numpy().ravel()
            same = [k for k in by_size.get(rounded.size, ()) if weights[k].dtype == np.float16
                    and np.array_equal(weights[k].ravel(), rounded)]
            match = next((k for k in same if k not in claimed), same[0] if same else None)
            if match is None and palettized:
                match = _nearest(p, [k for k in by_size.get(p.numel(), ()) if k not in claimed], weights)
            if match is not None:
                accounting.mapping[name] = match
                claimed.add(match)
                continue
        if _identity(p) and (float16 is None or name in float16.folded):
            accounting.folded.add(name)
        else:
            missing.append(name)
    detail = (f"{len(accounting.mapping)} of {len(parameters)} weights read back"
              + (f", {len(accounting.folded)} folded as identities" if accounting.folded else ""))
    if missing:
        return accounting, Check("weights", "failed", "package", detail=f"{detail}; not found in package: "
                                 f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
    return accounting, Check("weights", "passed", "package", detail=detail)


def _nearest(p: torch.Tensor, keys: list[str], weights: dict[str, np.ndarray]) -> str | None:
    """The constant closest to ``p`` (root mean square), if within half of ``p``'s own root mean square."""
    values = p.detach().double().numpy().ravel()
    scale = float(np.sqrt(np.mean(values ** 2)))
    best, distance = None, 0.5 * scale
    for key in keys:
        d = float(np.sqrt(np.mean((weights[key].astype(np.float64).ravel() - values) ** 2)))
        if d < distance:
            best, distance = key, d
    return best


def load_read_back(module: nn.Module, weights: dict[str, np.ndarray], accounting: Accounting) -> None:
    """Overwrite ``module``'s parameters, in place, with what a package holds.

    Folded identities keep their (exact) values; a parameter that was not accounted for keeps its own
    value, and the weights check has already failed the package.  In place, so validating a full-size
    UNet needs no second float32 copy of its weights; the caller must not need the original values
    afterwards (see ``engine._convert_component``).
    """
    with torch.no_grad():
        for name, p in module.named_parameters(remove_duplicate=True):
            value = weights.get(accounting.mapping.get(name, ""))
            if value is not None and value.size == p.numel():
                p.copy_(torch.from_numpy(np.asarray(value)).reshape(p.shape))


def program_check(contents: PackageContents, inputs: dict[str, torch.Tensor], reference: dict[str, np.ndarray],
                  outputs: list[str], threshold: float) -> Check:
    """The saved program, executed with float16 activations, against the float32 reference."""
    from workers.executor import ProgramError, execute_program

    try:
        result = execute_program(contents.program, inputs, precision="float16", constants=contents.expanded)
    except ProgramError as e:
        return Check("psnr_program", "failed", "program", threshold=threshold, detail=str(e))
    return psnr_check("psnr_program", "program", reference, result, outputs, threshold)


def run_module(module: nn.Module, inputs: dict[str, torch.Tensor], names: list[str],
               params: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Run ``module`` (optionally with substituted parameters) and name its outputs."""
    with torch.no_grad():
        args = tuple(inputs.values())
        out = torch.func.functional_call(module, params, args) if params else module(*args)
    return {name: o.detach().float().numpy() for name, o in zip(names, out)}


def coreml_available() -> bool:
    """Core ML predictions need macOS (coremltools' native runtime is not built elsewhere)."""
    return platform.system() == "Darwin"


def _input_dtypes(input_specs: list[TensorSpec]) -> dict[str, type]:
    """The numpy type each input feature is fed in."""
    return {t.name: np.float16 if t.dtype == "float16" else np.float32 for t in input_specs}


def coreml_check(package: Path, inputs: dict[str, torch.Tensor], input_specs: list[TensorSpec],
                 reference: dict[str, np.ndarray], outputs: list[str], threshold: float) -> Check:
    """Core ML prediction of the saved package against the float32 reference (macOS only)."""
    if not coreml_available():
        return Check("psnr_coreml", "skipped", "coreml", threshold=threshold, detail="needs macOS")
    import coremltools as ct

    dtypes = _input_dtypes(input_specs)
    model = ct.models.MLModel(str(package), compute_units=ct.ComputeUnit.CPU_AND_GPU)
    prediction = model.predict({k: v.numpy().astype(dtypes[k]) for k, v in inputs.items()})
    return psnr_check("psnr_coreml", "coreml", reference, prediction, outputs, threshold)


# --- Core ML predictions of compiled models (macOS workers, compile stage) -------------------------

@dataclass
class CheckData:
    """One component's check inputs (in the package's input types), float32 reference and compared outputs."""

    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    compared: list[str]


def save_check_data(out: Path, component: str, inputs: dict[str, torch.Tensor], input_specs: list[TensorSpec],
                    reference: dict[str, np.ndarray], compared: list[str]) -> Path:
    """Keep what a component was checked with beside the output, so a compiled model can be checked later."""
    dtypes = _input_dtypes(input_specs)
    arrays = {f"input:{k}": v.numpy().astype(dtypes[k]) for k, v in inputs.items()}
    arrays |= {f"reference:{k}": np.asarray(v, np.float32) for k, v in reference.items()}
    arrays["compared"] = np.array(compared)
    path = out / CHECK_DATA_DIR / f"{component}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_check_data(out: Path, component: str) -> CheckData | None:
    """What :func:`save_check_data` kept for ``component``, or None for outputs made without it."""
    path = out / CHECK_DATA_DIR / f"{component}.npz"
    if not path.is_file():
        return None
    with np.load(path) as data:
        return CheckData({k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("input:")},
                         {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith("reference:")},
                         [str(x) for x in data["compared"]])


def compute_units_for(variant: str) -> list[str]:
    """Where a compiled model of a variant runs in the apps: the GPU, and the Neural Engine for split_einsum*."""
    return ["CPU_AND_GPU"] + (["CPU_AND_NE"] if variant.startswith("split_einsum") else [])


def _coreml_predict(model: Path, inputs: dict[str, np.ndarray], compute_units: str) -> dict[str, np.ndarray]:
    import coremltools as ct

    compiled = ct.models.CompiledMLModel(str(model), compute_units=getattr(ct.ComputeUnit, compute_units))
    return compiled.predict(inputs)


def compiled_check(model: Path, data: CheckData, threshold: float, compute_units: list[str],
                   predict=None) -> Check:
    """Core ML's prediction with a compiled model on each compute unit, against the float32 reference.

    ``predict(model, inputs, compute_units)`` defaults to Core ML itself (macOS); the worst figure counts.
    """
    predict = predict or _coreml_predict
    checks = [psnr_check("psnr_coreml", "coreml", data.reference, predict(model, data.inputs, units),
                         data.compared, threshold) for units in compute_units]
    worst = next((c for c in checks if c.failed), None) or min(checks, key=lambda c: c.value)
    detail = "; ".join(f"{units}: {c.detail}" for units, c in zip(compute_units, checks))
    return Check("psnr_coreml", worst.status, "coreml", worst.value, threshold, detail)
