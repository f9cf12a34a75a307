"""Benchmark: our histogram palettizer against coremltools' k-means palettizer, measured side by side.

    python bench/palettize.py            # SD-1.5 UNet weight shapes, bits 2, 4, 6, 8
    python bench/palettize.py --unet     # also every weight of a full-size SD-1.5 UNet (random init, ~3.4 GB RAM)

Prints, per case and bit width, both times, the time ratio (coremltools / ours) and the weight-space error
ratio (ours / coremltools; ≤ 1.0001 means as exact), plus a read-once/write-once baseline for the time
(cast to bit patterns and write one uint8 per element).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

# (name, shape) of representative SD-1.5 UNet weights
SHAPES = [
    ("conv 320x320x3x3", (320, 320, 3, 3)),
    ("conv 640x640x3x3", (640, 640, 3, 3)),
    ("conv 1280x1280x3x3", (1280, 1280, 3, 3)),
    ("attn2.to_k 320x768", (320, 768)),
    ("ff.proj 10240x1280", (10240, 1280)),
]


def realistic(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Heavy-tailed weights scaled like a trained layer's (Student-t, std 1/sqrt(fan_in)), in float16."""
    rng = np.random.default_rng(seed)
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_t(4, size=shape) / np.sqrt(2 * fan_in)).astype(np.float16)


def _time(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def _sse(weight: np.ndarray, lut: np.ndarray, indices: np.ndarray) -> float:
    lut = np.asarray(lut).reshape(-1).astype(np.float16).astype(np.float64)
    return float(np.sum((lut[np.asarray(indices).reshape(-1).astype(np.int64)] - weight.astype(np.float64).reshape(-1)) ** 2))


def compare(weights: list[np.ndarray], bits: int) -> tuple[float, float, float, float]:
    """Total seconds (ours, coremltools, baseline) and the error ratio over a list of tensors."""
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight

    from workers.palettize import histogram_kmeans

    ours_t = theirs_t = base_t = ours_e = theirs_e = 0.0
    for w in weights:
        t, (lut, idx) = _time(histogram_kmeans, w, bits)
        ours_t += t
        ours_e += _sse(w, lut, idx)
        t, (lut, idx) = _time(_get_kmeans_lookup_table_and_weight, bits, w)
        theirs_t += t
        theirs_e += _sse(w, lut, idx)
        t, _ = _time(lambda a: (a.reshape(-1).view(np.uint16) >> 8).astype(np.uint8), w)
        base_t += t
    return ours_t, theirs_t, base_t, ours_e / theirs_e if theirs_e else 1.0


def unet_weights() -> list[np.ndarray]:
    """Every palettizable weight (> 2,048 elements) of a full-size SD-1.5 UNet, random init, float16."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    weights = [p.detach().half().numpy() for p in unet.parameters() if p.numel() > 2048]
    del unet
    return weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", action="store_true", help="also palettize a whole full-size SD-1.5 UNet")
    parser.add_argument("--bits", default="2,4,6,8", help="comma-separated bit widths")
    args = parser.parse_args()
    bit_widths = [int(b) for b in args.bits.split(",")]
    cases = [(name, [realistic(shape, i)]) for i, (name, shape) in enumerate(SHAPES)]
    if args.unet:
        weights = unet_weights()
        cases.append((f"whole SD-1.5 UNet ({len(weights)} tensors, {sum(w.size for w in weights) / 1e6:.0f} M)",
                      weights))
    print(f"{'case':<44} {'bits':>4} {'ours s':>8} {'coremltools s':>14} {'speed-up':>9} "
          f"{'ours/baseline':>13} {'error ratio':>12}")
    for name, weights in cases:
        for bits in bit_widths:
            ours, theirs, base, error = compare(weights, bits)
            print(f"{name:<44} {bits:>4} {ours:>8.3f} {theirs:>14.3f} {theirs / ours:>8.1f}x "
                  f"{ours / base:>12.1f}x {error:>12.6f}")


if __name__ == "__main__":
    main()
