"""Core ML's own predictions with compiled models (macOS workers, in the compile stage), against the float32
reference the conversion kept beside its output (``_validation/<component>.npz``; an extra size's
``<component>@<W>x<H>.npz``): the check inputs in the
packages' input types, the reference outputs, and which outputs are compared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from workers.components import CHUNKED, whole_of
from workers.convert.chunk import input_names
from workers.errors import ValidationError
from workers.names import CHECK_DATA_DIR, check_data_name, compiled_file_name
from workers.validate.checks import coreml_available, input_dtypes, psnr_check
from workers.validate.report import Check, Report, precision_bits
from workers.validate.thresholds import ValidationBars
from workers.convert.features import TensorSpec

@dataclass
class CheckData:
    """One component's check inputs (in the package's input types), float32 reference and compared outputs."""

    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]
    compared: list[str]


def save_check_data(out: Path, component: str, inputs: dict[str, torch.Tensor], input_specs: list[TensorSpec],
                    reference: dict[str, np.ndarray], compared: list[str]) -> Path:
    """Keep what a component was checked with beside the output, so a compiled model can be checked later."""
    dtypes = input_dtypes(input_specs)
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
    return _worst(checks, compute_units, threshold)


def _worst(checks: list[Check], compute_units: list[str], threshold: float) -> Check:
    worst = next((c for c in checks if c.failed), None) or min(checks, key=lambda c: c.value)
    detail = "; ".join(f"{units}: {c.detail}" for units, c in zip(compute_units, checks))
    return Check("psnr_coreml", worst.status, "coreml", worst.value, threshold, detail)


def compiled_chain_check(first: Path, second: Path, second_inputs: list[str], data: CheckData, threshold: float,
                         compute_units: list[str], predict=None) -> Check:
    """Core ML's prediction through compiled UNet chunks, fed as the Swift pipeline feeds them (chunk 1's
    outputs merged with the UNet's inputs, by name), against the whole UNet's float32 reference."""
    predict = predict or _coreml_predict
    checks = []
    for units in compute_units:
        fed = {**data.inputs, **predict(first, data.inputs, units)}
        result = predict(second, {name: fed[name] for name in second_inputs}, units)
        checks.append(psnr_check("psnr_coreml", "coreml", data.reference, result, data.compared, threshold))
    check = _worst(checks, compute_units, threshold)
    check.detail = f"chunk 1 → chunk 2: {check.detail}"
    return check


def check_compiled(out: Path, report: Report, repo: str, variant: str, compiled_dir: Path, *,
                   predict: Callable | None = None, on_step: Callable[[str], None] | None = None) -> None:
    """Core ML predictions of one variant's compiled models against the float32 reference (``psnr_coreml``).

    Every compiled model, float16 and palettized, on the GPU and, for split_einsum layouts, on the Neural
    Engine.  Needs Core ML (macOS) unless ``predict`` stands in for it; elsewhere the packages keep their
    ``psnr_coreml: skipped``.  The figures replace that check in ``report`` and report.json; a model below
    its bar fails the package, the report and this call (ValidationError).
    """
    if predict is None and not coreml_available():
        return
    bars = ValidationBars.from_dict(report.options["bars"])
    packages = report.packages_of(repo, variant)
    failures, chained = [], {}  # per chunked UNet: the chained check of its pair
    for package in packages:
        whole = whole_of(package.component)
        # chunks are checked chained, as their UNet; each size has its own check data
        data = load_check_data(out, check_data_name(whole or package.component, variant))
        if data is None:
            continue  # converted before check data was kept: nothing to compare with
        (on_step or (lambda m: None))(f"predicting with {repo}/{variant} {package.component}")
        threshold, units = bars.shipped(precision_bits(package.precision)), compute_units_for(variant)
        if whole:
            if whole not in chained:
                first, second = (compiled_dir / compiled_file_name(c) for c in CHUNKED[whole])
                second_inputs = input_names(out / next(p.path for p in packages if p.component == CHUNKED[whole][1]))
                chained[whole] = compiled_chain_check(first, second, second_inputs, data, threshold, units,
                                                      predict=predict)
            check = chained[whole]
        else:
            check = compiled_check(compiled_dir / compiled_file_name(package.component, report.source["id"]), data,
                                   threshold, units,
                                   predict=predict)
        package.checks = [c for c in package.checks if c.name != "psnr_coreml"] + [check]
        if check.failed:
            figure = f"{check.value} dB < {check.threshold} dB" if check.value is not None else check.detail
            failures.append(f"{package.component} ({variant}, {package.precision}) compiled psnr_coreml: {figure}")
    report.save(out)
    if failures:
        raise ValidationError(failures, hint="Nothing is published; report.json has every figure.")
