"""Exact weighted 1-D k-means of a float16 tensor, compiled with numba (machine code cached on disk).

The palettize step's kernel.  A float16 tensor has at most 65,536 distinct values, so the tensor is read
once into a histogram of its bit patterns, the optimal k-means of the (sorted) distinct values weighted by
their counts is found by dynamic programming, and the indices are written through a 65,536-entry table.

The dynamic programme is the classic one for 1-D k-means (clusters are contiguous in sorted order): layer
``j`` holds the least squared error of the first ``i`` values split into ``j + 1`` clusters.  Each layer is a
row-minimum problem over a Monge matrix (the squared error of a contiguous run satisfies the quadrangle
inequality), solved in linear time by SMAWK, so the whole solve is O(k·n) for n distinct values.  Every
kernel releases the GIL, so tensors can be palettized on several threads.
"""

from __future__ import annotations

import numba
import numpy as np

# every float16 bit pattern's value, as float64
FLOAT16_VALUES = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)

NONFINITE = -1  # status: the tensor holds NaN or ±inf


@numba.njit(cache=True, nogil=True, inline="always")
def _cell(prev, cw, cs, cq, big, i, m):
    # cost of the first i values when the last cluster is values m..i-1; past the diagonal, a large value
    # growing with the distance keeps the matrix Monge, so SMAWK never picks it
    if m >= i:
        return big * (m - i + 1)
    dw = cw[i] - cw[m]
    ds = cs[i] - cs[m]
    return prev[m] + (cq[i] - cq[m]) - ds * ds / dw


@numba.njit(cache=True, nogil=True)
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
    total = cq[n] - cs[n] * cs[n] / cw[n]
    big = 4.0 * abs(total) + 1.0
    prev = np.empty(n + 1)
    cur = np.empty(n + 1)
    prev[0] = 0.0
    for i in range(1, n + 1):
        prev[i] = cq[i] - cs[i] * cs[i] / cw[i]
    arg = np.zeros((k, n + 1), dtype=np.int32)
    cols = np.empty(2 * n + 64, dtype=np.int64)  # the reduced columns of every SMAWK level, one after another
    level_off = np.zeros(64, dtype=np.int64)
    level_len = np.zeros(64, dtype=np.int64)
    best_col = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, k):
        # rows i = j+1..n (r = i-j-1), columns m = j..n-1 (c = m-j); cell = prev[m] + cost(m, i)
        if j == k - 1:  # the last layer only needs its last row
            best = np.inf
            best_m = j
            for m in range(j, n):
                c = _cell(prev, cw, cs, cq, big, n, m)
                if c < best:
                    best = c
                    best_m = m
            arg[j, n] = best_m
            break
        rows = n - j
        # SMAWK, iteratively: level L keeps rows (t+1)*2^L - 1; REDUCE leaves at most as many columns as rows
        level = 0
        off = 0
        while (rows >> level) > 0:
            count = rows >> level
            step = 1 << level
            top = 0
            src_off = level_off[level - 1] if level > 0 else 0
            src_len = level_len[level - 1] if level > 0 else rows
            for p in range(src_len):
                col = cols[src_off + p] if level > 0 else p
                while top > 0:
                    r = top * step - 1
                    i = r + j + 1
                    if _cell(prev, cw, cs, cq, big, i, col + j) < \
                            _cell(prev, cw, cs, cq, big, i, cols[off + top - 1] + j):
                        top -= 1
                    else:
                        break
                if top < count:
                    cols[off + top] = col
                    top += 1
            level_off[level] = off
            level_len[level] = top
            off += top
            level += 1
        for level in range(level - 1, -1, -1):
            count = rows >> level
            step = 1 << level
            o = level_off[level]
            ln = level_len[level]
            start = 0
            for t in range(0, count, 2):
                r = (t + 1) * step - 1
                i = r + j + 1
                if t + 1 < count:
                    target = best_col[(t + 2) * step - 1]
                    stop = start
                    while cols[o + stop] != target:
                        stop += 1
                else:
                    stop = ln - 1
                bc = cols[o + start]
                best = _cell(prev, cw, cs, cq, big, i, bc + j)
                for p in range(start + 1, stop + 1):
                    v = _cell(prev, cw, cs, cq, big, i, cols[o + p] + j)
                    if v < best:
                        best = v
                        bc = cols[o + p]
                best_col[r] = bc
                start = stop
        for i in range(j + 1):
            cur[i] = np.inf
        for r in range(rows):
            i = r + j + 1
            m = best_col[r] + j
            cur[i] = _cell(prev, cw, cs, cq, big, i, m)
            arg[j, i] = m
        prev, cur = cur, prev
    starts = np.zeros(k, dtype=np.int64)
    end = n
    for j in range(k - 1, 0, -1):
        start = arg[j, end]
        starts[j] = start
        end = start
    return starts


@numba.njit(cache=True, nogil=True)
def histogram(bits):
    """Count of every float16 bit pattern in ``bits`` (uint16)."""
    counts = np.zeros(1 << 16, dtype=np.int64)
    for b in bits:
        counts[b] += 1
    return counts


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
    indices = np.empty(bits.shape[0], dtype=np.uint8)
    for i in range(bits.shape[0]):
        indices[i] = table[bits[i]]
    return lut, indices
