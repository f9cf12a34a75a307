"""Palettize step: a float16 package in, an n-bit palettized package out (never a second conversion).

Each weight tensor gets the optimal 1-D k-means palette, as coremltools' k-means mode gives float16
tensors, but computed from the histogram of the tensor's float16 bit patterns (at most 65,536 distinct
values) instead of sorting the tensor, and plugged in through coremltools' public custom-palette API, so the
package format is coremltools' own.  Embedding tables
(``gather`` inputs) stay float16, and so do constants that are not weights (attention masks holding
-inf, which k-means cannot cluster).  Weights of at most ``WEIGHT_THRESHOLD`` elements stay float16 too.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from service.errors import ConversionError, OptionsError

SUPPORTED_BITS = (1, 2, 4, 6, 8)
DEFAULT_BITS = 6
WEIGHT_THRESHOLD = 2048  # coremltools' default: tensors of at most this many elements stay float16
# lookup-table weights arrived in iOS 16 / macOS 13; Apple ships 6-bit models for iOS 17 / macOS 14 and up
_LUT_TARGETS = {"iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"}
_SIX_BIT_TARGETS = {"iOS17", "iOS18", "macOS14", "macOS15"}


def check_bits(bits: int, target: str) -> None:
    """Refuse bit widths coremltools cannot palettize to, or targets that cannot run them."""
    if bits not in SUPPORTED_BITS:
        raise OptionsError(f"--bits {bits} is not supported",
                           hint=f"Use one of {', '.join(map(str, SUPPORTED_BITS))}.")
    if target not in _LUT_TARGETS:
        raise OptionsError(f"palettized weights need iOS16 / macOS13 or newer, not {target}",
                           hint="Pass --deployment-target iOS17 (the default), or --bits 0 for float16 only.")
    if bits == 6 and target not in _SIX_BIT_TARGETS:
        raise OptionsError(f"6-bit palettized weights need iOS17 / macOS14 or newer, not {target}",
                           hint="Pass --deployment-target iOS17, or another --bits.")


def _solve_kmeans_1d(x, w, k):  # pragma: no cover - compiled by numba
    # x sorted ascending, w > 0; returns the start index of each of the k clusters.
    n = x.shape[0]
    cw = np.zeros(n + 1)
    cs = np.zeros(n + 1)
    cq = np.zeros(n + 1)
    for i in range(n):
        cw[i + 1] = cw[i] + w[i]
        cs[i + 1] = cs[i] + w[i] * x[i]
        cq[i + 1] = cq[i] + w[i] * x[i] * x[i]
    prev = np.empty(n + 1)
    cur = np.empty(n + 1)
    for i in range(n + 1):
        if i == 0:
            prev[i] = 0.0
        else:
            s = cs[i]
            prev[i] = cq[i] - s * s / cw[i]
    arg = np.zeros((k, n + 1), dtype=np.int32)
    stack = np.empty((4 * (n + 2) + 64, 4), dtype=np.int64)
    for j in range(1, k):
        for i in range(n + 1):
            cur[i] = np.inf
        # divide and conquer over i in [j + 1, n]; the optimal split is monotone in i
        top = 0
        stack[0, 0] = j + 1
        stack[0, 1] = n
        stack[0, 2] = j
        stack[0, 3] = n - 1
        top = 1
        while top > 0:
            top -= 1
            lo = stack[top, 0]
            hi = stack[top, 1]
            olo = stack[top, 2]
            ohi = stack[top, 3]
            if lo > hi:
                continue
            mid = (lo + hi) // 2
            best = np.inf
            best_m = olo
            end = min(mid - 1, ohi)
            for m in range(olo, end + 1):
                dw = cw[mid] - cw[m]
                ds = cs[mid] - cs[m]
                c = prev[m] + (cq[mid] - cq[m]) - ds * ds / dw
                if c < best:
                    best = c
                    best_m = m
            cur[mid] = best
            arg[j, mid] = best_m
            stack[top, 0] = lo
            stack[top, 1] = mid - 1
            stack[top, 2] = olo
            stack[top, 3] = best_m
            top += 1
            stack[top, 0] = mid + 1
            stack[top, 1] = hi
            stack[top, 2] = best_m
            stack[top, 3] = ohi
            top += 1
        for i in range(n + 1):
            prev[i] = cur[i]
    starts = np.zeros(k, dtype=np.int64)
    end = n
    for j in range(k - 1, 0, -1):
        start = arg[j, end]
        starts[j] = start
        end = start
    return starts



def _kmeans_1d_numba():
    """Compile (once; numba caches the machine code on disk) the exact weighted 1-D k-means solver."""
    import numba

    return numba.njit(cache=True, nogil=True)(_solve_kmeans_1d)


_SOLVER = None


def optimal_kmeans_1d(values: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact weighted k-means of sorted 1-D ``values``: (centroids, cluster of each value).

    Dynamic programming over contiguous clusters with the divide-and-conquer optimisation, compiled with
    numba; values are centred first so the prefix sums lose no precision.
    """
    global _SOLVER
    if _SOLVER is None:
        _SOLVER = _kmeans_1d_numba()
    k = min(k, len(values))
    centre = float(np.average(values, weights=weights))
    starts = _SOLVER(values - centre, weights.astype(np.float64), k) if k > 1 else np.zeros(1, dtype=np.int64)
    clusters = np.zeros(len(values), dtype=np.int64)
    clusters[starts[1:]] = 1
    clusters = np.cumsum(clusters)
    totals = np.bincount(clusters, weights=weights, minlength=k)
    centroids = np.bincount(clusters, weights=weights * values, minlength=k) / totals
    return centroids, clusters


def histogram_kmeans(weight: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """Optimal 1-D k-means palette of a float16 tensor, from the histogram of its bit patterns.

    The same optimum coremltools' k-means mode finds for float16 tensors (an exact weighted 1-D k-means
    of the distinct values and their counts), without sorting the tensor.  Returns the lookup table (``2**nbits`` float16 entries; unused
    entries are 0) and one uint8 index per element.  Raises ValueError for NaN or infinite values.
    """
    values16 = np.ascontiguousarray(weight).reshape(-1)
    if values16.dtype != np.float16:
        values16 = values16.astype(np.float16)
    bits = values16.view(np.uint16)
    counts = np.bincount(bits, minlength=1 << 16)
    present = np.flatnonzero(counts).astype(np.uint16)
    values = present.view(np.float16).astype(np.float64)
    if not np.isfinite(values).all():
        raise ValueError("the tensor holds NaN or infinite values, which cannot be palettized")
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]  # +0 and -0 are one value, as in np.unique
    group = np.cumsum(first) - 1
    distinct = ordered[first]
    weights = np.bincount(group, weights=counts[present][order])
    centroids, clusters = optimal_kmeans_1d(distinct, weights, 1 << nbits)
    lut = np.zeros(1 << nbits, dtype=np.float64)
    lut[:len(centroids)] = centroids
    table = np.zeros(1 << 16, dtype=np.uint8)
    table[present[order]] = clusters.astype(np.uint8)[group]
    return lut.astype(np.float16), table[bits]


def palettize_package(package: Path, *, bits: int = DEFAULT_BITS, component: str = "",
                      threshold: int = WEIGHT_THRESHOLD):
    """Palettize every weight of a saved float16 package to ``bits`` bits (optimal 1-D k-means).

    Returns the new coremltools MLModel (unsaved).  Raises ConversionError.
    """
    import coremltools as ct
    from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

    from workers.validate import load_program, nonfinite_constants

    model = ct.models.MLModel(str(package), skip_model_load=True)
    config = OptimizationConfig(
        global_config=OpPalettizerConfig(mode="custom", lut_function=partial(histogram_kmeans, nbits=bits),
                                         weight_threshold=threshold),
        op_type_configs={"gather": None},  # embedding tables stay float16, as Apple's are
        op_name_configs={name: None for name in nonfinite_constants(load_program(model))},
    )
    try:
        return palettize_weights(model, config)
    except Exception as e:  # coremltools raises many types; name the component and chain the cause
        raise ConversionError(f"palettizing {component} to {bits} bits failed: {e}",
                              component=component) from e
