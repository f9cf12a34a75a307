"""Recipe step for mixed-bit palettization: the width of each layer that reaches a target, and the recipe file.

A target is an average width (``mixed:4.5``: bits per weight over the whole component, the layers kept float16
counted at 16, as Apple counts them) or an output quality (``mixed:psnr=40``: the smallest recipe whose
predicted PSNR reaches it).  The choice minimises the predicted output error (:mod:`workers.compress.sensitivity`)
within the bit budget: a Lagrangian search over the price of a bit gives every layer the width that balances
its noise against its size, then the budget left is spent greedily on the best upgrades per bit.

The file is written in the shape of Apple's pre-analysis output (``<name>_palettization_recipe.json`` with a
``recipes`` entry ``recipe_<bits>_bit_mixedpalette`` mapping torch module names to widths, and ``baselines``),
so Apple's apply script and people who know it can read it; our own entries (the analysis, the source's sha)
sit beside those keys.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from workers.compress.sensitivity import NBITS, Sensitivity
from workers.errors import OptionsError

WIDTHS = NBITS + (16,)  # 16: the layer stays float16
_TARGET = re.compile(r"^mixed:(?:(?P<bits>\d+(?:\.\d+)?)|psnr=(?P<psnr>\d+(?:\.\d+)?))$")
LOWEST_BITS, HIGHEST_BITS = 2.0, 8.0  # an average outside this is refused


@dataclass(frozen=True)
class Target:
    """What a mixed-bit recipe aims for: an average width, or a predicted PSNR."""

    bits: float | None = None
    psnr: float | None = None

    @property
    def label(self) -> str:
        return f"mixed:{self.bits:g}" if self.bits is not None else f"mixed:psnr={self.psnr:g}"


def parse_target(text: str) -> Target:
    """``mixed:4.5`` or ``mixed:psnr=40``; anything else is refused in one line."""
    found = _TARGET.match(text.strip())
    if not found:
        what = "not a mixed-bit target" if text.strip().startswith("mixed") else \
            "neither a palettization width nor a mixed-bit target"
        raise OptionsError(f"--bits {text} is {what}",
                           hint="Pass --bits 6 (or 1, 2, 4, 8), --bits mixed:4.5 (average bits per weight) or "
                                "--bits mixed:psnr=40 (dB).")
    if found["bits"] is not None:
        bits = float(found["bits"])
        if not LOWEST_BITS <= bits <= HIGHEST_BITS:
            raise OptionsError(f"--bits {text}: a mixed-bit average must be between {LOWEST_BITS:g} and "
                               f"{HIGHEST_BITS:g} bits", hint="Pass e.g. --bits mixed:4.5.")
        return Target(bits=bits)
    return Target(psnr=float(found["psnr"]))


def _price(sensitivity: Sensitivity, price: float) -> dict[str, int]:
    """Each layer's width minimising its predicted noise plus ``price`` per bit it takes."""
    return {layer.name: min(WIDTHS, key=lambda b: sensitivity.noise(layer, b) + price * layer.weights * b)
            for layer in sensitivity.layers}


def _search(sensitivity: Sensitivity, holds, *, cheap: bool) -> dict[str, int]:
    """The widths at the price of a bit where ``holds(widths)`` stops holding, on the side where it holds: the
    lowest price (the most bits) when it holds for cheap recipes (``cheap``: a bit budget), the highest price
    (the fewest bits) when it holds for rich ones (a PSNR target).  Bisection on a log scale: the bits a price
    buys fall as it rises.  When it holds nowhere, the recipe at the end it would hold at."""
    low, high = -80.0, 40.0  # log10 of the price: from every layer at 16 bits to every one at 1
    best = _price(sensitivity, 10 ** (high if cheap else low))
    if not holds(best):
        return best
    for _ in range(60):
        middle = (low + high) / 2
        widths = _price(sensitivity, 10 ** middle)
        if holds(widths) == cheap:
            high = middle
        else:
            low = middle
        if holds(widths):
            best = widths
    return best


def _upgrades(sensitivity: Sensitivity, widths: dict[str, int], allowed) -> dict[str, int]:
    """Spend what the target leaves: one layer up to its next width at a time, the largest noise saved per bit
    first, while ``allowed(widths)`` holds."""
    widths = dict(widths)
    while True:
        best, gain = None, 0.0
        for layer in sensitivity.layers:
            now = widths[layer.name]
            if now == 16:
                continue
            up = WIDTHS[WIDTHS.index(now) + 1]
            saved = sensitivity.noise(layer, now) - sensitivity.noise(layer, up)
            per_bit = saved / (layer.weights * (up - now))
            trial = {**widths, layer.name: up}
            if per_bit > gain and allowed(trial):
                best, gain = trial, per_bit
        if best is None:
            return widths
        widths = best


def choose(sensitivity: Sensitivity, target: Target) -> dict[str, int]:
    """The width of every candidate layer for ``target`` (see the module's docstring).  An average within reach
    is met from below, as closely as the layers' sizes allow; a PSNR target beyond any recipe's reach keeps every
    layer float16 (the widest recipe there is)."""
    if target.bits is not None:
        budget = target.bits

        def within(widths: dict[str, int]) -> bool:
            return sensitivity.average_bits(widths) <= budget + 1e-9

        return _upgrades(sensitivity, _search(sensitivity, within, cheap=True), within)

    def reaches(widths: dict[str, int]) -> bool:
        return sensitivity.predicted_psnr(widths) >= target.psnr

    return _search(sensitivity, reaches, cheap=False)


def recipe_key(bits: float) -> str:
    """Apple's name for a recipe of that average width."""
    return f"recipe_{bits:.2f}_bit_mixedpalette"


def recipe_file_name(name: str) -> str:
    """Apple's file name for a model's recipes (``<model_version with / as ->_palettization_recipe.json``)."""
    return f"{name.replace('/', '-')}_palettization_recipe.json"


def write_recipe(path: Path, *, model: str, source_sha: str | None, sensitivity: Sensitivity,
                 recipes: dict[str, dict[str, int]], baselines: dict[str, float]) -> Path:
    """The recipe file: Apple's keys (``model_version``, ``recipes``, ``baselines``) and ours (the analysis)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"model_version": model, "source_sha": source_sha, "recipes": recipes, "baselines": baselines,
            "analysis": sensitivity.to_dict()}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def read_recipe(path: Path, key: str | None = None) -> dict[str, int]:
    """One recipe of a recipe file (``key``, or its only one), checked: every width one Apple's tools take."""
    try:
        recipes = json.loads(path.read_text())["recipes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OptionsError(f"{path} is not a palettization recipe file ({e.__class__.__name__})",
                           hint="Pass the *_palettization_recipe.json a mixed-bit conversion wrote.") from e
    if key is None and len(recipes) != 1:
        raise OptionsError(f"{path} holds {len(recipes)} recipes", hint=f"Name one of {', '.join(sorted(recipes))}.")
    recipe = recipes[key] if key is not None else next(iter(recipes.values()))
    bad = {name: bits for name, bits in recipe.items() if bits not in WIDTHS}
    if bad:
        name = sorted(bad)[0]
        raise OptionsError(f"{path}: layer {name} has width {bad[name]}, not one of {', '.join(map(str, WIDTHS))}",
                           hint="Fix or regenerate the recipe file.")
    return {name: int(bits) for name, bits in recipe.items()}
