"""Mixed-bit palettization of one component of a run: the analysis on the float32 module
(:mod:`workers.compress.sensitivity`), the recipe for the target (:mod:`workers.compress.recipe`), its file in
the repo's ``recipes/`` folder, and the width of every constant of a package it is applied to.

A recipe names torch modules (Apple's keys: ``down_blocks.0.attentions.0.proj_in``); a package names constants.
The two meet through where validation found each parameter in the float16 package
(:class:`workers.validate.readback.Accounting`), so a layout that renames or reshapes a layer (a linear layer
as a 1×1 convolution, a query projection with the softmax scale folded in) still gets its layer's width.

The analysis is the costly part (minutes at full size; the recipe for a target is chosen from it in
milliseconds), so it is kept in a folder of analyses (:func:`analysis_key`, :func:`stored_analysis`) by what
determines it: the weights (the source's commit and every other source it takes weights from), the component, the
inputs (seed and geometry) and the analysis's own version.  A re-conversion of the same weights (a retried job,
another target, the other layout's part of the same job) reads it instead of analysing again; a source without
a commit (a local folder) is always analysed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from workers.compress.recipe import Target, choose, recipe_file_name, recipe_key, write_recipe
from workers.compress.sensitivity import MIN_WEIGHTS, Sensitivity, analyse, candidates, measure_mse, psnr_of
from workers.errors import ConversionError
from workers.validate.readback import Accounting

RECIPES_DIR = "recipes"  # in the mixed-bit repo, beside the variants
ANALYSIS_VERSION = 1  # raised whenever the analysis would measure differently: older stored analyses are not read


@dataclass
class MixedRecipe:
    """One component's recipe: the analysis it came from and each candidate layer's width."""

    component: str
    target: Target
    sensitivity: Sensitivity
    widths: dict[str, int]  # torch module name (the component's own, without the wrapper's prefix) -> bits
    prefix: str  # the export module's name for the component's network ("unet.")
    measured_psnr: float = 0.0  # the recipe palettized in torch, against the float32 output (one more pass)
    reused: bool = False  # the analysis was read from an earlier conversion of the same weights

    @property
    def average(self) -> float:
        return self.sensitivity.average_bits(self.widths)

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
                "seconds": round(self.sensitivity.seconds, 1), "reused": self.reused,
                "weights": self.sensitivity.total_weights}

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


def _network(reference: nn.Module) -> tuple[nn.Module, str]:
    """The network a reference wrapper runs (its one child module) and the attribute it sits under."""
    children = list(reference.named_children())
    if len(children) != 1:
        return reference, ""
    name, child = children[0]
    return child, f"{name}."


def analyse_component(component: str, reference: nn.Module, run: Callable[[], torch.Tensor], target: Target, *,
                      min_weights: int = MIN_WEIGHTS, seed: int = 0,
                      analysed: Sensitivity | None = None) -> MixedRecipe | None:
    """The sensitivity of ``reference``'s network when ``run()`` gives its first output (or ``analysed``, the
    same analysis read back), and the recipe meeting ``target``; None when no layer is large enough to palettize
    (the component then ships float16)."""
    network, prefix = _network(reference)
    layers, _ = candidates(network, min_weights)
    if not layers:
        return None
    if analysed is not None and {x.name for x in analysed.layers} != set(layers):
        raise ConversionError(f"the stored analysis of {component} names other layers than its network has",
                              component=component)
    sensitivity = analysed or analyse(network, run, min_weights=min_weights, seed=seed)
    if sensitivity.reference is None:  # read back: the float32 output is not stored
        with torch.no_grad():
            sensitivity.reference = run().detach()
    widths = choose(sensitivity, target)
    mse = measure_mse(layers, run, sensitivity.reference, widths)  # the chosen recipe's own pass
    return MixedRecipe(component, target, sensitivity, widths, prefix, round(psnr_of(sensitivity.peak, mse), 2),
                       reused=analysed is not None)


def analysis_key(identity: dict) -> str:
    """The name an analysis is stored under: a digest of what determines it (``identity``: the weights' commits,
    the component, the inputs) and of :data:`ANALYSIS_VERSION`."""
    text = json.dumps({"version": ANALYSIS_VERSION, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@contextlib.contextmanager
def stored_analysis(folder: Path, key: str) -> Iterator[tuple[Sensitivity | None, Callable[[Sensitivity], None]]]:
    """The analysis stored under ``key`` in ``folder`` (None if there is none, or it cannot be read) and a function
    that stores one.  The key is held locked while inside, so a second conversion of the same weights on this
    host waits for the first one's analysis and reads it instead of making its own."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    with open(folder / f"{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            found = None
            try:
                found = Sensitivity.from_dict(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                pass  # none yet, or damaged: analysed again and stored over it

            def store(sensitivity: Sensitivity) -> None:
                partial = path.with_name(f".{path.name}.{os.getpid()}")
                partial.write_text(json.dumps(sensitivity.to_dict()))
                os.replace(partial, path)  # readers see the whole file or none

            yield found, store
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
