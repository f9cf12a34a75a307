"""Benchmark: the mixed-bit analysis of a full-size SD 1.5- or SDXL-architecture UNet, its cost and how good its recipes
are.

    python bench/mixed_bit.py                 # SD 1.5 UNet, a 4.5-bit recipe
    python bench/mixed_bit.py --bits 4.0,4.5  # several targets
    python bench/mixed_bit.py --model sdxl    # SDXL base 1.0's UNet (2.6 B parameters), one sample at a time

Builds the SD 1.5 UNet of ``full_size.py`` in memory (random weights, the norms randomised; nothing is
downloaded) and runs, with wall time and peak resident memory:

- **the analysis** (``workers.compress.sensitivity.analyse``), as a conversion runs it: on a batch of two
  random latents at two timesteps with random text-encoder-like conditioning, layers above 100,000 weights;
- **the recipes** for each ``--bits`` target (``workers.compress.recipe.choose``), each measured in one more pass
  (the UNet computing with its weights palettized as the recipe says, against float32), beside: uniform 4-bit
  (the analysis' own pass), and a recipe of the same average chosen **without** the analysis (the largest
  layers get the fewest bits, by size alone);
- the predicted PSNR against the measured one for each recipe and for the analysis' held-out passes;
- the weight bytes of a package palettized that way against the uniform 6-bit package's (LUTs included; the
  6-bit one palettizes every tensor above 2,048 elements, as coremltools' default threshold).

The weights are random, not trained: how sensitive each layer is differs from a real model's, so the figures
say what the method costs and how well it predicts and allocates, not what a given checkpoint will reach.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from full_size import Memory, modules, xl_modules  # noqa: E402


def _size_only(sensitivity, bits: float) -> dict[str, int]:
    """A recipe of at most ``bits`` on average that ignores the analysis: every layer 8 bits, then the largest
    layers one width down at a time until the average fits."""
    widths = {layer.name: 8 for layer in sensitivity.layers}
    order = sorted(sensitivity.layers, key=lambda layer: -layer.weights)
    for down in (6, 4, 2, 1):
        for layer in order:
            if sensitivity.average_bits(widths) <= bits:
                return widths
            widths[layer.name] = down
    return widths


def _bytes(sensitivity, unet, widths: dict[str, int] | None, threshold: int = 2048) -> int:
    """Weight bytes of a package: each palettized tensor its indices and float16 palette, the rest float16.
    ``widths`` None: uniform 6 bits for every tensor above ``threshold`` elements."""
    chosen = {layer.name: layer for layer in sensitivity.layers}
    total = 0
    for name, module in unet.named_modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if weight is None:
            continue
        n = weight.numel()
        if widths is None:
            bits = 6 if n > threshold and weight.ndim > 1 else 16
        else:
            bits = widths.get(name, 16) if name in chosen else 16
        total += 2 * n if bits == 16 else math.ceil(n * bits / 8) + 2 * 2 ** bits
    return total


def main() -> None:
    import torch

    from workers.compress.recipe import Target, choose
    from workers.compress.sensitivity import analyse, candidates, measure_mse, psnr_of
    from workers.devtools.tiny import randomize_norms

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bits", default="4.5", help="comma-separated average widths to choose recipes for")
    parser.add_argument("--model", default="sd15", choices=("sd15", "sdxl"), help="whose UNet")
    args = parser.parse_args()
    targets = [float(b) for b in args.bits.split(",") if b.strip()]

    memory = Memory()
    torch.manual_seed(0)
    xl = args.model == "sdxl"
    if xl:
        unet, *others = xl_modules()
        del others  # the analysis is the UNet's; the job converts the rest in their own parts
    else:
        unet, *_ = modules("sd15")
    randomize_norms(unet)
    unet = unet.float().eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    side, width = (128, 2048) if xl else (64, 768)
    sample = torch.randn(2, 4, side, side, generator=gen)
    timestep = torch.tensor([981.0, 261.0])
    context = torch.randn(2, 77, width, generator=gen)
    added = {"text_embeds": torch.randn(2, 1280, generator=gen),
             "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 2)} if xl else None

    def run() -> torch.Tensor:
        if not xl:
            return unet(sample, timestep, context, return_dict=False)[0]
        # one sample at a time, as a conversion analyses an SDXL UNet (its attention holds gigabytes per sample)
        return torch.cat([unet(sample[i:i + 1], timestep[i:i + 1], context[i:i + 1], return_dict=False,
                               added_cond_kwargs={k: v[i:i + 1] for k, v in added.items()})[0] for i in range(2)])

    memory.reset()
    started = time.perf_counter()
    sensitivity = analyse(unet, run)
    seconds, peak = time.perf_counter() - started, memory.peak()
    print(f"analysis: {len(sensitivity.layers)} layers ({sum(x.weights for x in sensitivity.layers) / 1e6:.1f} M "
          f"weights; {sensitivity.other_weights / 1e6:.2f} M stay float16), {len(sensitivity.passes)} passes, "
          f"{seconds:.1f} s ({seconds / 60:.2f} min, target <= {45 if xl else 10} min), peak {peak / 2**30:.2f} GiB")
    print("analysis passes (bits per weight, predicted / measured PSNR):")
    for entry in sensitivity.passes:
        print(f"  {entry['recipe']:<10} {entry['bits']:5.2f} bits {entry['predicted']:6.2f} / {entry['measured']:6.2f} dB"
              f"{'' if entry['fitted'] else '  (held out)'}")
    layers, _ = candidates(unet)
    reference = sensitivity.reference
    uniform4 = next(p for p in sensitivity.passes if p["recipe"] == "uniform_4")
    six_bytes = _bytes(sensitivity, unet, None)
    for bits in targets:
        ours = choose(sensitivity, Target(bits=bits))
        naive = _size_only(sensitivity, bits)
        measured = psnr_of(sensitivity.peak, measure_mse(layers, run, reference, ours))
        naive_measured = psnr_of(sensitivity.peak, measure_mse(layers, run, reference, naive))
        predicted = sensitivity.predicted_psnr(ours)
        size = _bytes(sensitivity, unet, ours)
        print(f"recipe for {bits:g} bits: {sensitivity.average_bits(ours):.3f} bits per weight, measured "
              f"{measured:.2f} dB, predicted {predicted:.2f} dB (error {predicted - measured:+.2f} dB, target within 2)")
        print(f"  against uniform 4-bit ({uniform4['bits']:.2f} bits, {uniform4['measured']:.2f} dB): "
              f"{measured - uniform4['measured']:+.2f} dB (target >= +2)")
        print(f"  against a {sensitivity.average_bits(naive):.3f}-bit recipe by layer size alone "
              f"({naive_measured:.2f} dB): {measured - naive_measured:+.2f} dB (target > 0)")
        print(f"  weights {size / 1e6:.1f} MB against uniform 6-bit's {six_bytes / 1e6:.1f} MB = "
              f"{size / six_bytes:.3f}x (target <= 0.76x)")


if __name__ == "__main__":
    main()
