"""Mixed-bit palettization of one component of a run: the analysis on the float32 module
(:mod:`workers.compress.sensitivity`), the recipe for the target (:mod:`workers.compress.recipe`), its file in
the repo's ``recipes/`` folder, and the width of every constant of a package it is applied to.

A recipe names torch modules (Apple's keys: ``down_blocks.0.attentions.0.proj_in``); a package names constants.
The two meet through where validation found each parameter in the float16 package
(:class:`workers.validate.readback.Accounting`), so a layout that renames or reshapes a layer (a linear layer
as a 1×1 convolution, a query projection with the softmax scale folded in) still gets its layer's width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from workers.compress.recipe import Target, choose, recipe_file_name, recipe_key, write_recipe
from workers.compress.sensitivity import MIN_WEIGHTS, Sensitivity, analyse, candidates, measure_mse, psnr_of
from workers.errors import ConversionError
from workers.validate.readback import Accounting

RECIPES_DIR = "recipes"  # in the mixed-bit repo, beside the variants


@dataclass
class MixedRecipe:
    """One component's recipe: the analysis it came from and each candidate layer's width."""

    component: str
    target: Target
    sensitivity: Sensitivity
    widths: dict[str, int]  # torch module name (the component's own, without the wrapper's prefix) -> bits
    prefix: str  # the export module's name for the component's network ("unet.")
    measured_psnr: float = 0.0  # the recipe palettized in torch, against the float32 output (one more pass)

    @property
    def average(self) -> float:
        return self.sensitivity.average_bits(self.widths)

    @property
    def precision(self) -> str:
        """The packages' precision label: ``mixed-4.50bit``."""
        return mixed_label(self.average)

    @property
    def predicted_psnr(self) -> float:
        return self.sensitivity.predicted_psnr(self.widths)

    def summary(self, file: str) -> dict:
        """What a report keeps of it: the target, the average, the predicted and measured PSNR, the analysis
        passes (uniform widths and random recipes, predicted against measured), its file and time."""
        counts: dict[str, int] = {}
        for bits in self.widths.values():
            counts[str(bits)] = counts.get(str(bits), 0) + 1
        return {"target": self.target.label, "bits": round(self.average, 3), "layers": len(self.widths),
                "widths": counts, "predicted_psnr": round(self.predicted_psnr, 2),
                "measured_psnr": self.measured_psnr, "passes": self.sensitivity.passes, "file": file,
                "seconds": round(self.sensitivity.seconds, 1)}

    def constant_widths(self, accounting: Accounting, reference: nn.Module, export: nn.Module) -> dict[str, int]:
        """Each candidate layer's width by the name of its weight's constant in a package: the layer found in
        ``export`` (the package's export module, built from the modules ``reference`` runs) by name or, where
        the layout renamed it, as the parameter sharing its weight's storage; then in the package through
        the float16 package's ``accounting``.  A layer the package does not hold is an error, never a float16
        layer by accident."""
        network, _ = _network(reference)
        exported = dict(export.named_parameters(remove_duplicate=False))
        by_storage = {_storage(p): name for name, p in reversed(list(exported.items()))}
        widths, missing = {}, []
        for name, bits in self.widths.items():
            parameter = f"{self.prefix}{name}.weight"
            if parameter not in exported:
                parameter = by_storage.get(_storage(network.get_submodule(name).weight), parameter)
            found = accounting.mapping.get(parameter)
            if found is None:
                missing.append(name)
            else:
                widths[found] = bits
        if missing:
            raise ConversionError(f"the recipe's layer {missing[0]} is not in the {self.component} package"
                                  + (f" ({len(missing) - 1} more)" if len(missing) > 1 else ""),
                                  component=self.component)
        return widths


def _storage(p: torch.Tensor) -> tuple[int, int, int]:
    """Where a tensor's values are: a view (a linear layer's weight as a 1×1 convolution's) is found by it."""
    return p.untyped_storage().data_ptr(), p.storage_offset(), p.numel()


def mixed_label(average: float) -> str:
    return f"mixed-{average:.2f}bit"


def _network(reference: nn.Module) -> tuple[nn.Module, str]:
    """The network a reference wrapper runs (its one child module) and the attribute it sits under."""
    children = list(reference.named_children())
    if len(children) != 1:
        return reference, ""
    name, child = children[0]
    return child, f"{name}."


def analyse_component(component: str, reference: nn.Module, run: Callable[[], torch.Tensor], target: Target, *,
                      min_weights: int = MIN_WEIGHTS, seed: int = 0) -> MixedRecipe | None:
    """The sensitivity of ``reference``'s network when ``run()`` gives its first output, and the recipe meeting
    ``target``; None when no layer is large enough to palettize (the component then ships float16)."""
    network, prefix = _network(reference)
    layers, _ = candidates(network, min_weights)
    if not layers:
        return None
    sensitivity = analyse(network, run, min_weights=min_weights, seed=seed)
    widths = choose(sensitivity, target)
    mse = measure_mse(layers, run, sensitivity.reference, widths)  # the chosen recipe's own pass
    return MixedRecipe(component, target, sensitivity, widths, prefix, round(psnr_of(sensitivity.peak, mse), 2))


def save_recipe(folder: Path, model: str, recipe: MixedRecipe, source_sha: str | None) -> Path:
    """``folder/recipes/<model>[_<component>]_palettization_recipe.json``: the recipe under Apple's key for its
    average, the uniform widths and the recipe as measured in the analysis (``baselines``), and the analysis."""
    name = model if recipe.component == "unet" else f"{model}_{recipe.component}"
    baselines = {entry["recipe"]: entry["measured"] for entry in recipe.sensitivity.passes
                 if entry["recipe"].startswith("uniform_")}
    baselines[recipe_key(recipe.average)] = recipe.measured_psnr
    return write_recipe(folder / RECIPES_DIR / recipe_file_name(name), model=model, source_sha=source_sha,
                        sensitivity=recipe.sensitivity, recipes={recipe_key(recipe.average): recipe.widths},
                        baselines=baselines)
