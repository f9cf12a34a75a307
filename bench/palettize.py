"""Benchmark: our histogram palettizer against coremltools' k-means palettizer, measured side by side.

    python bench/palettize.py            # SD-1.5 UNet weight shapes, bits 2, 4, 6, 8
    python bench/palettize.py --unet     # also every weight of a full-size SD-1.5 UNet (random init, ~3.4 GB RAM)

Prints, per case, bit width and thread count, both times, the time ratio (coremltools / ours) and the
weight-space error ratio (ours / coremltools; ≤ 1.0001 means as exact), plus a read-once/write-once
baseline for the time (cast to bit patterns and write one uint8 per element).  Both palettizers run
through coremltools' own grouping code (``grouped_channelwise_compress``), as ``palettize_weights`` does.

    python bench/palettize.py --group-size 16 --bits 4   # one palette per 16 output channels (iOS 18)
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


def _sse(weight: np.ndarray, dense: np.ndarray) -> float:
    return float(np.sum((dense.astype(np.float64).reshape(-1) - weight.astype(np.float64).reshape(-1)) ** 2))


def _ours(bits: int, group_size: int):
    """Our palettizer on one tensor, through coremltools' grouping code as palettize_weights calls it."""
    from functools import partial

    from coremltools.optimize.coreml._quantization_passes import palettize_weights as passes

    from workers.compress.palettize import histogram_kmeans

    lut_function = partial(histogram_kmeans, nbits=bits)
    return lambda w: passes.grouped_channelwise_compress(w, "CUSTOM", None, 0, group_size, lut_function)


def _theirs(bits: int, group_size: int):
    """coremltools' k-means palettizer on one tensor, as its palettize_weights(mode="kmeans") calls it."""
    from coremltools.optimize.coreml._quantization_passes import palettize_weights as passes

    return lambda w: passes.grouped_channelwise_compress(w, "KMEANS", bits, 0, group_size)


def _dense(params) -> np.ndarray:
    from coremltools.optimize.coreml._quantization_passes import palettize_weights as passes

    return passes.decompress(params)


def compare(weights: list[np.ndarray], bits: int, threads: list[int], group_size: int = 0) -> dict:
    """Total seconds of coremltools, of ours at each thread count, of the baseline; the error ratio."""
    import numba

    theirs_fn, ours_fn = _theirs(bits, group_size), _ours(bits, group_size)
    out = {"theirs": 0.0, "base": 0.0, "ours": {n: 0.0 for n in threads}}
    ours_e = theirs_e = 0.0
    for w in weights:
        t, params = _time(theirs_fn, w)
        out["theirs"] += t
        theirs_e += _sse(w, _dense(params))
        for n in threads:
            numba.set_num_threads(n)
            t, params = _time(ours_fn, w)
            out["ours"][n] += t
        ours_e += _sse(w, _dense(params))
        t, _ = _time(lambda a: (a.reshape(-1).view(np.uint16) >> 8).astype(np.uint8), w)
        out["base"] += t
    out["error"] = ours_e / theirs_e if theirs_e else 1.0
    return out


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
    import numba

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet", action="store_true", help="also palettize a whole full-size SD-1.5 UNet")
    parser.add_argument("--bits", default="2,4,6,8", help="comma-separated bit widths")
    parser.add_argument("--threads", default=f"1,{numba.config.NUMBA_NUM_THREADS}",
                        help="comma-separated thread counts for ours (coremltools uses one)")
    parser.add_argument("--group-size", type=int, default=0,
                        help="one palette per this many output channels (iOS 18), both palettizers; 0: per tensor")
    args = parser.parse_args()
    bit_widths = [int(b) for b in args.bits.split(",")]
    threads = sorted({int(n) for n in args.threads.split(",")})
    from workers.compress.palettize import histogram_kmeans

    started = time.perf_counter()
    for n in threads:  # loads (or compiles) the numba kernels and starts their threads, once per process
        numba.set_num_threads(n)
        histogram_kmeans(realistic((64, 64, 3, 3), 0), 6)
    print(f"kernels loaded in {time.perf_counter() - started:.2f} s (once per process; not in the times below)")
    print(f"granularity: {f'one palette per {args.group_size} output channels' if args.group_size else 'per tensor'}; "
          f"speed-up = coremltools / ours; baseline = cast to bit patterns and write one byte per element")
    cases = [(name, [realistic(shape, i)]) for i, (name, shape) in enumerate(SHAPES)]
    if args.unet:
        weights = unet_weights()
        cases.append((f"whole SD-1.5 UNet ({len(weights)} tensors, {sum(w.size for w in weights) / 1e6:.0f} M)",
                      weights))
    print(f"{'case':<44} {'bits':>4} {'coremltools s':>13} {'threads':>7} {'ours s':>8} {'speed-up':>9} "
          f"{'ours/baseline':>13} {'error ratio':>12}")
    for name, weights in cases:
        for bits in bit_widths:
            r = compare(weights, bits, threads, args.group_size)
            for n in threads:
                print(f"{name:<44} {bits:>4} {r['theirs']:>13.3f} {n:>7} {r['ours'][n]:>8.3f} "
                      f"{r['theirs'] / r['ours'][n]:>8.1f}x {r['ours'][n] / r['base']:>12.1f}x {r['error']:>12.6f}")


if __name__ == "__main__":
    main()
