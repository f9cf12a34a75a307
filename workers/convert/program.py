"""Convert step: trace one component's export module and convert it to a float16 ML program package."""

from __future__ import annotations

import gc
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from workers.errors import ConversionError
from workers.convert.features import TensorSpec
from workers.convert.targets import deployment_target

_DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass(frozen=True)
class PackageMetadata:
    """Provenance written into every package (user-defined metadata plus the standard fields)."""

    source_id: str
    source_sha: str | None
    component: str
    attention: str | None
    precision: str  # "float16", "palettized-6bit" or "palettized-6bit-group16"
    converter: str
    license: str | None
    description: str
    deployment_target: str

    def user_defined(self) -> dict[str, str]:
        fields = {
            "source_repo": self.source_id,
            "source_sha": self.source_sha or "unknown",
            "component": self.component,
            "attention_implementation": self.attention or "any",
            "precision": self.precision,
            "converter": self.converter,
            "deployment_target": self.deployment_target,
        }
        return fields


def apply_metadata(model, meta: PackageMetadata, inputs: list[TensorSpec],
                   outputs: list[TensorSpec]) -> None:
    """Write provenance and feature descriptions into a coremltools MLModel (in place)."""
    model.author = f"Converted from {meta.source_id} by {meta.converter}"
    model.license = meta.license or "unknown: see the source model's card"
    model.version = meta.source_id
    model.short_description = meta.description
    for key, value in meta.user_defined().items():
        model.user_defined_metadata[key] = value
    for t in inputs:
        model.input_description[t.name] = t.description
    for t in outputs:
        model.output_description[t.name] = t.description


def save_package(model, path: Path) -> None:
    """Save replacing any previous package at ``path`` (a half-written package is never left behind)."""
    tmp = path.with_name(".partial-" + path.name)  # coremltools insists on the .mlpackage suffix
    shutil.rmtree(tmp, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(tmp))
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def trace(module: nn.Module, example: tuple[torch.Tensor, ...], component: str) -> torch.jit.ScriptModule:
    """TorchScript-trace ``module`` on ``example`` inputs."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.trace(module, example, check_trace=False, strict=False)
    except Exception as e:  # tracing failures are model-specific and have many types
        raise ConversionError(f"tracing {component} failed: {e.__class__.__name__}: {e}",
                              component=component) from e


def convert_module(module: nn.Module, example: dict[str, torch.Tensor], inputs: list[TensorSpec],
                   outputs: list[TensorSpec], *, component: str, target: str,
                   variant: str | None = None, precision: str = "float16"):
    """Trace and convert to a float16 (or, with ``precision="float32"``, float32) ML program (not compiled:
    works on Linux).

    Returns the coremltools MLModel (unsaved).  Raises ConversionError.
    """
    traced = trace(module, tuple(example.values()), component)
    try:
        return convert_traced(traced, inputs, outputs, component=component, target=target, variant=variant,
                              precision=precision)
    finally:
        del traced
        gc.collect()


def convert_lean(meta_module: nn.Module, half_module: nn.Module, example: dict[str, torch.Tensor],
                 inputs: list[TensorSpec], outputs: list[TensorSpec], *, component: str, target: str,
                 variant: str | None = None):
    """A float16 ML program made without float32 weights (``workers.convert.lean``): ``meta_module`` is traced on the meta
    device, ``half_module`` (the same structure, float16 weights) gives the weights.  Raises ConversionError."""
    from workers.convert.lean import assign_weights, float16_graph, trace_on_meta

    traced = trace_on_meta(meta_module, example, component)
    try:
        assign_weights(traced, half_module, component)
        with float16_graph():
            return convert_traced(traced, inputs, outputs, component=component, target=target, variant=variant)
    finally:
        del traced
        gc.collect()


def convert_traced(traced: torch.jit.ScriptModule, inputs: list[TensorSpec], outputs: list[TensorSpec], *,
                   component: str, target: str, variant: str | None = None, precision: str = "float16"):
    """coremltools' conversion of a traced module to an ML program (unsaved).  Raises ConversionError."""
    import coremltools as ct

    from workers.convert.passes import validated_once

    try:
        with validated_once():
            return ct.convert(
                traced,
                convert_to="mlprogram",
                minimum_deployment_target=deployment_target(target),
                inputs=[ct.TensorType(name=t.name, shape=t.shape, dtype=_DTYPES[t.dtype]) for t in inputs],
                outputs=[ct.TensorType(name=t.name, dtype=_DTYPES[t.dtype]) for t in outputs],
                compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
                skip_model_load=True,
            )
    except Exception as e:  # coremltools raises many types; name the component and chain the cause
        raise ConversionError(f"coremltools could not convert {component}: {e.__class__.__name__}: {e}",
                              component=component, variant=variant) from e
