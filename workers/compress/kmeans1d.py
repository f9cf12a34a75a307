"""Exact weighted 1-D k-means of a float16 tensor, compiled with numba (machine code cached on disk).

The palettize step's kernel.  A float16 tensor has at most 65,536 distinct values, so the tensor is read
once into a histogram of its bit patterns, the optimal k-means of the (sorted) distinct values weighted by
their counts is found by dynamic programming, and the indices are written through a 65,536-entry table.

The dynamic programme is the classic one for 1-D k-means (clusters are contiguous in sorted order): layer
``j`` holds the least squared error of the first ``i`` values split into ``j + 1`` clusters.  The squared
error of a contiguous run satisfies the quadrangle inequality, so where the last cluster starts is monotone
in ``i`` and in ``j``: each layer is solved by divide and conquer (O(n log n)), every search also bounded by
the previous layer's split at the same row, and the two halves of each layer run on two threads.  (SMAWK's
O(n) per layer measured slower here: its bookkeeping outweighs log n at n ≈ 25,000.)  The kernels release
the GIL.
"""

from __future__ import annotations

import numba
import numpy as np

# every float16 bit pattern's value, as float64
FLOAT16_VALUES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)


@numba.njit(cache=True, nogil=True)
def _layer(prev, cur, arg, j, cw, cs, cq, lo, hi, olo, ohi, stack):
    # rows lo..hi of layer j, whose best split lies in olo..ohi: divide and conquer (the best split is
    # monotone in the row), each search also bounded below by the split of layer j - 1 at the same row
    stack[0, 0] = lo
    stack[0, 1] = hi
    stack[0, 2] = olo
    stack[0, 3] = ohi
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
        end = min(mid - 1, ohi)
        start = min(max(olo, arg[j - 1, mid]), end)  # never an empty search, even if rounding breaks a tie
        best = np.inf
        best_m = start
        for m in range(start, end + 1):
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


@numba.njit(cache=True, nogil=True, parallel=True)
def solve(x, w, k):
    """Start index of each of the ``k`` clusters of sorted ``x`` (weights ``w`` > 0), least squared error.

    ``x`` should be centred (mean 0) so the prefix sums lose no precision.  ``k`` ≤ len(x).
    """
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
    prev[0] = 0.0
    for i in range(1, n + 1):
        prev[i] = cq[i] - cs[i] * cs[i] / cw[i]
    arg = np.zeros((k, n + 1), dtype=np.int32)  # arg[j, i]: where the last cluster starts
    depth = 4 * (n + 2) + 64
    stacks = np.empty((2, depth, 4), dtype=np.int64)
    for j in range(1, k):
        if j == k - 1:  # the last layer only needs its last row
            _layer(prev, cur, arg, j, cw, cs, cq, n, n, j, n - 1, stacks[0])
        else:
            # the middle row first, then its two sides on two threads
            mid = (j + 1 + n) // 2
            _layer(prev, cur, arg, j, cw, cs, cq, mid, mid, j, n - 1, stacks[0])
            split = arg[j, mid]
            for half in numba.prange(2):
                if half == 0:
                    _layer(prev, cur, arg, j, cw, cs, cq, j + 1, mid - 1, j, split, stacks[0])
                else:
                    _layer(prev, cur, arg, j, cw, cs, cq, mid + 1, n, split, n - 1, stacks[1])
        prev, cur = cur, prev
    starts = np.zeros(k, dtype=np.int64)
    end = n
    for j in range(k - 1, 0, -1):
        start = arg[j, end]
        starts[j] = start
        end = start
    return starts


@numba.njit(cache=True, nogil=True, parallel=True)
def histogram(bits):
    """Count of every float16 bit pattern in ``bits`` (uint16), half the tensor on each of two threads."""
    n = bits.shape[0]
    parts = np.zeros((2, 1 << 16), dtype=np.int64)
    for half in numba.prange(2):
        for i in range(half * n // 2, (half + 1) * n // 2):
            parts[half, bits[i]] += 1
    return parts[0] + parts[1]


@numba.njit(cache=True, nogil=True, parallel=True)
def _lookup(bits, table):
    indices = np.empty(bits.shape[0], dtype=np.uint8)
    for i in numba.prange(bits.shape[0]):
        indices[i] = table[bits[i]]
    return indices


@numba.njit(cache=True, nogil=True)
def palettize(bits, k, values):
    """Palette (float64, ``k`` entries, unused ones 0) and uint8 indices of float16 bit patterns ``bits``.

    ``values`` is :data:`FLOAT16_VALUES`.  Returns an empty palette when the tensor holds NaN or ±inf.
    """
    counts = histogram(bits)
    for p in range(0x7C00, 0x8000):  # exponent all ones: ±inf and NaN
        if counts[p] > 0 or counts[p | 0x8000] > 0:
            return np.zeros(0), np.zeros(0, dtype=np.uint8)
    # distinct values in ascending order: negatives from the largest magnitude, one zero, then positives
    x = np.empty(1 << 16)
    w = np.empty(1 << 16)
    slot = np.full(1 << 16, -1, dtype=np.int64)  # bit pattern -> distinct value index
    n = 0
    for p in range(0xFBFF, 0x8000, -1):
        if counts[p] > 0:
            x[n] = values[p]
            w[n] = counts[p]
            slot[p] = n
            n += 1
    zeros = counts[0x0000] + counts[0x8000]
    if zeros > 0:
        x[n] = 0.0
        w[n] = zeros
        slot[0x0000] = n
        slot[0x8000] = n
        n += 1
    for p in range(0x0001, 0x7C00):
        if counts[p] > 0:
            x[n] = values[p]
            w[n] = counts[p]
            slot[p] = n
            n += 1
    x = x[:n]
    w = w[:n]
    kk = min(k, n)
    total = 0.0
    mean = 0.0
    for i in range(n):
        total += w[i]
        mean += w[i] * x[i]
    mean /= total
    starts = solve(x - mean, w, kk) if kk > 1 else np.zeros(1, dtype=np.int64)
    cluster = np.empty(n, dtype=np.int64)
    lut = np.zeros(k)
    c = 0
    sw = 0.0
    sx = 0.0
    for i in range(n):
        if c + 1 < kk and i == starts[c + 1]:
            lut[c] = sx / sw
            c += 1
            sw = 0.0
            sx = 0.0
        cluster[i] = c
        sw += w[i]
        sx += w[i] * x[i]
    lut[c] = sx / sw
    table = np.zeros(1 << 16, dtype=np.uint8)
    for p in range(1 << 16):
        if slot[p] >= 0:
            table[p] = cluster[slot[p]]
    return lut, _lookup(bits, table)
