"""Sensitivity analysis step for mixed-bit palettization: how much each layer's palettization at each width
degrades a component's output, measured cheaply enough to run on every conversion.

Apple's pre-analysis palettizes one layer at a time and runs the whole pipeline for every layer and width
(hours on a GPU).  Here the cost is a few forward passes of the one component:

1. **Each layer's own error.**  One forward pass in float32 records, per candidate layer (a ``Linear`` or
   ``Conv2d`` with more than ``min_weights`` weights, as Apple's ``PALETTIZE_MIN_SIZE``), the mean square of
   each input channel.  Palettized to ``b`` bits, the layer's weight error ``ΔW`` adds an output noise of
   about ``Σ ΔW² · E[x²]`` per output (palettization errors are uncorrelated with the inputs), so its noise at
   every width needs only the exact palette (:func:`histogram_kmeans`), no pass.
2. **How far each part's noise carries.**  Noise added at a layer reaches the output scaled by the rest of the
   network; layers in one part of it (down, mid and up blocks; attention, residual and other layers) share a
   gain.  A few passes with whole recipes palettized (uniform widths and random mixtures) measure the output's
   mean square error; the gains are fitted to them in the log domain (a least-squares fit of dB, lightly
   pulled towards one shared gain), so the prediction of a recipe is ``Σ gain(part) · noise_layer(width)``.
3. **How well that predicts**: held-out passes' predicted against measured PSNR, kept in the result.

Palettized weights are computed in a pre-forward hook while each layer runs and dropped after it: no second
copy of the component's weights is held.
"""

from __future__ import annotations

import math
import random
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from workers.compress.palettize import SUPPORTED_BITS as NBITS  # the widths the Neural Engine runs (Apple's NBITS)

MIN_WEIGHTS = 100_000  # layers with at most this many weights stay float16 (Apple's PALETTIZE_MIN_SIZE)
CALIBRATION_WIDTHS = (2, 4, 6, 8)  # what the calibration passes draw from (1 bit is kept out: too far off)


@dataclass
class Layer:
    """One candidate layer: its module name (a recipe's key), weights, part and own error per width."""

    name: str
    weights: int
    part: str
    noise: dict[int, float] = field(default_factory=dict)  # width -> mean square noise it adds to its own output


@dataclass
class Sensitivity:
    """The analysis of one component: its layers, the gains per part, the passes that fitted and tested them."""

    layers: list[Layer]
    other_weights: int  # weights of the layers that stay float16 (16 bits in every average)
    peak: float  # the reference output's largest magnitude (PSNR's peak)
    gains: dict[str, float] = field(default_factory=dict)
    passes: list[dict] = field(default_factory=list)  # {"recipe": name, "bits", "measured", "predicted", "fitted"}
    seconds: float = 0.0
    # the float32 output the passes were measured against (kept for more measurements; not written out)
    reference: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def total_weights(self) -> int:
        return self.other_weights + sum(layer.weights for layer in self.layers)

    def noise(self, layer: Layer, bits: int) -> float:
        """The output mean square error ``layer`` at ``bits`` is predicted to add."""
        return 0.0 if bits >= 16 else self.gains.get(layer.part, 1.0) * layer.noise[bits]

    def predicted_mse(self, widths: dict[str, int]) -> float:
        return sum(self.noise(layer, widths.get(layer.name, 16)) for layer in self.layers)

    def predicted_psnr(self, widths: dict[str, int]) -> float:
        return psnr_of(self.peak, self.predicted_mse(widths))

    def average_bits(self, widths: dict[str, int]) -> float:
        """Bits per weight over every weight of the candidate layers and the float16 rest."""
        bits = 16 * self.other_weights + sum(layer.weights * widths.get(layer.name, 16) for layer in self.layers)
        return bits / self.total_weights

    def to_dict(self) -> dict:
        return {"layers": [{"name": x.name, "weights": x.weights, "part": x.part,
                            "noise": {str(b): v for b, v in x.noise.items()}} for x in self.layers],
                "other_weights": self.other_weights, "peak": self.peak, "gains": self.gains,
                "passes": self.passes, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict) -> "Sensitivity":
        layers = [Layer(x["name"], x["weights"], x["part"], {int(b): v for b, v in x["noise"].items()})
                  for x in data["layers"]]
        return cls(layers, data["other_weights"], data["peak"], dict(data["gains"]), list(data["passes"]),
                   data.get("seconds", 0.0))


def psnr_of(peak: float, mse: float) -> float:
    """PSNR from an output's peak and mean square error, as :func:`workers.validate.checks.psnr` defines it."""
    return 20 * math.log10((peak + 1e-5) / (math.sqrt(max(mse, 0.0)) + 1e-10))


def part_of(name: str) -> str:
    """The part of a UNet-like network a layer belongs to, which decides the gain its noise gets."""
    block = name.split(".", 1)[0]
    where = block if block in ("down_blocks", "mid_block", "up_blocks") else "edge"
    kind = "attention" if ".attentions." in f".{name}." else "resnet" if ".resnets." in f".{name}." else "other"
    return f"{where}/{kind}"


def candidates(root: nn.Module, min_weights: int = MIN_WEIGHTS) -> tuple[dict[str, nn.Module], int]:
    """The layers mixed-bit palettization chooses widths for (``Linear`` / ``Conv2d`` above ``min_weights``), and
    how many weights every other layer holds."""
    chosen, other = {}, 0
    for name, module in root.named_modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if weight is None:
            continue
        if isinstance(module, (nn.Linear, nn.Conv2d)) and weight.numel() > min_weights:
            chosen[name] = module
        else:
            other += weight.numel()
    return chosen, other


CACHED_BELOW = 1 << 20  # palettized weights of smaller layers are kept for the analysis' later passes


class Palettes:
    """Weights as their palettization to a width gives them back (float16 palette, exact k-means), in float32.

    A small layer's are kept for the passes after the first (their solve costs more than their memory); a large
    layer's are made again each time, so the analysis never holds a second copy of a network's big weights."""

    def __init__(self) -> None:
        self.kept: dict[tuple[int, int], torch.Tensor] = {}

    def __call__(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        key = (id(weight), bits)
        if key in self.kept:
            return self.kept[key]
        value = palettized(weight, bits)
        if weight.numel() < CACHED_BELOW:
            self.kept[key] = value
        return value


def palettized(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``weight`` as its ``bits``-bit palettization gives it back (float16 palette, exact k-means), in float32."""
    from workers.compress.palettize import histogram_kmeans

    values = weight.detach().to(torch.float16).numpy()
    lut, indices = histogram_kmeans(values, bits)
    return torch.from_numpy(lut[indices.reshape(-1)].reshape(values.shape).astype(np.float32))


def palettized_layers(layers: dict[str, nn.Module], widths: dict[str, int],
                      palettes: Palettes | None = None) -> AbstractContextManager[None]:
    """While inside, each layer given a width below 16 computes with its weight palettized to it (made when the
    layer runs, dropped after: no copy of the network's large weights is held)."""
    from workers.validate.checks import substituted_parameters

    palettes = palettes or Palettes()
    bits = {id(layer): widths[name] for name, layer in layers.items() if widths.get(name, 16) < 16}
    return substituted_parameters(
        [layer for layer in layers.values() if id(layer) in bits],
        lambda layer: {"weight": nn.Parameter(palettes(layer._parameters["weight"], bits[id(layer)]),
                                              requires_grad=False)})


def _record(layers: dict[str, nn.Module], run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """One float32 pass: the output, and per layer the mean square of each input channel."""
    stats: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def hook(name: str) -> Callable:
        def record(layer: nn.Module, args: tuple, output: torch.Tensor) -> None:
            x = args[0].detach().double()
            dims = [d for d in range(x.ndim) if d != (1 if isinstance(layer, nn.Conv2d) else x.ndim - 1)]
            calls[name] = calls.get(name, 0) + 1  # a batch run a sample at a time calls each layer per sample
            mean = x.pow(2).mean(dim=dims)
            stats[name] = mean if name not in stats else stats[name] + (mean - stats[name]) / calls[name]
        return record

    handles = [layer.register_forward_hook(hook(name)) for name, layer in layers.items()]
    try:
        with torch.no_grad():
            out = run()
    finally:
        for handle in handles:
            handle.remove()
    return out, stats


def _own_error(layer: nn.Module, channel_ms: torch.Tensor, bits: int, palettes: Palettes) -> float:
    """The mean square noise ``layer``'s palettization to ``bits`` adds to its output: ``mean_o Σ_j ΔW[o, j]²
    E[x_j²]`` (for a convolution, ``j`` runs over input channels and kernel positions)."""
    weight = layer.weight
    error = (palettes(weight, bits).double() - weight.detach().double()).pow(2)
    per_input = error.sum(dim=0)  # Linear: (in,); Conv2d: (in, kh, kw)
    if per_input.ndim > 1:
        per_input = per_input.flatten(1).sum(dim=1)
    return float((per_input * channel_ms).sum()) / weight.shape[0]


def analyse(root: nn.Module, run: Callable[[], torch.Tensor], *, min_weights: int = MIN_WEIGHTS,
            seed: int = 0, calibration: int = 8, held_out: int = 3) -> Sensitivity:
    """The sensitivity of the network ``root`` (whose layers are looked up) when ``run()`` computes its output
    (the component's module on the check inputs): every candidate layer's own error at every width, the
    gains fitted on ``calibration`` recipe passes plus the four uniform ones, and ``held_out`` more passes kept to
    test the prediction.  Raises ValueError when no layer is large enough to palettize."""
    import time

    started = time.perf_counter()
    layers, other = candidates(root, min_weights)
    if not layers:
        raise ValueError(f"no layer has more than {min_weights:,} weights to palettize")
    reference, stats = _record(layers, run)
    palettes = Palettes()
    result = Sensitivity([Layer(name, layer.weight.numel(), part_of(name)) for name, layer in layers.items()],
                         other, float(reference.detach().abs().max()), reference=reference.detach())
    for entry in result.layers:
        entry.noise = {bits: _own_error(layers[entry.name], stats[entry.name], bits, palettes) for bits in NBITS}
    rng = random.Random(seed)
    recipes = [(f"uniform_{b}", {x.name: b for x in result.layers}) for b in CALIBRATION_WIDTHS]
    for i in range(calibration + held_out):
        weights = [rng.random() for _ in CALIBRATION_WIDTHS]
        recipes.append((f"random_{i}", {x.name: rng.choices(CALIBRATION_WIDTHS, weights)[0] for x in result.layers}))
    measured = []
    for name, widths in recipes:
        measured.append((name, widths, measure_mse(layers, run, reference, widths, palettes)))
    fit = measured[:len(measured) - held_out]
    result.gains = fit_gains(result, [(w, mse) for _, w, mse in fit])
    for i, (name, widths, mse) in enumerate(measured):
        result.passes.append({"recipe": name, "bits": round(result.average_bits(widths), 3),
                              "measured": round(psnr_of(result.peak, mse), 2),
                              "predicted": round(result.predicted_psnr(widths), 2),
                              "fitted": i < len(fit)})
    result.seconds = time.perf_counter() - started
    return result


def measure_mse(layers: dict[str, nn.Module], run: Callable[[], torch.Tensor], reference: torch.Tensor,
                widths: dict[str, int], palettes: Palettes | None = None) -> float:
    """The output's mean square error against ``reference`` with ``widths`` palettized (one pass)."""
    with palettized_layers(layers, widths, palettes), torch.no_grad():
        out = run()
    return float((out.detach().double() - reference.detach().double()).pow(2).mean())


def fit_gains(result: Sensitivity, observed: list[tuple[dict[str, int], float]], ridge: float = 0.3) -> dict[str, float]:
    """Per-part gains that make ``Σ gain · noise`` match the measured errors, fitted on their logarithms (dB),
    each part's gain pulled towards the common one by ``ridge`` (parts with few layers stay near it)."""
    from scipy.optimize import least_squares

    parts = sorted({layer.part for layer in result.layers})
    features = np.zeros((len(observed), len(parts)))
    for k, (widths, _) in enumerate(observed):
        for layer in result.layers:
            bits = widths.get(layer.name, 16)
            if bits < 16:
                features[k, parts.index(layer.part)] += layer.noise[bits]
    target = np.log(np.maximum([mse for _, mse in observed], 1e-30))

    def residuals(theta: np.ndarray) -> np.ndarray:
        predicted = np.log(np.maximum(features @ np.exp(theta), 1e-30))
        return np.concatenate([predicted - target, ridge * (theta - theta.mean())])

    start = np.full(len(parts), float(np.median(target - np.log(np.maximum(features.sum(axis=1), 1e-30)))))
    theta = least_squares(residuals, start).x
    return {part: float(math.exp(t)) for part, t in zip(parts, theta)}
