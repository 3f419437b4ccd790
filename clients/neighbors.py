"""Neighbours within a radius via a uniform cell list (numba): O(N + pairs), never all pairs.

`neighbor_lists(positions, radius)` returns a CSR structure: the neighbours of agent i are
``indices[indptr[i]:indptr[i + 1]]`` (in cell order, not sorted; i itself excluded, distance <= radius).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _cell_list(pos, radius):
    """Bin agents into square cells of side h >= radius. Returns (h, x0, y0, ncx, ncy, cell_start, order)."""
    n = pos.shape[0]
    x0, y0, x1, y1 = math.inf, math.inf, -math.inf, -math.inf
    for i in range(n):
        x0 = min(x0, pos[i, 0])
        y0 = min(y0, pos[i, 1])
        x1 = max(x1, pos[i, 0])
        y1 = max(y1, pos[i, 1])
    h = max(radius, 1e-12)
    # keep the number of cells O(N) for sparse, wide scenes (bigger cells stay correct: h >= radius)
    max_cells = 4 * n + 16
    while (math.floor((x1 - x0) / h) + 1) * (math.floor((y1 - y0) / h) + 1) > max_cells:
        h *= 1.5
    ncx = int(math.floor((x1 - x0) / h)) + 1
    ncy = int(math.floor((y1 - y0) / h)) + 1
    cell_of = np.empty(n, dtype=np.int64)
    count = np.zeros(ncx * ncy + 1, dtype=np.int64)
    for i in range(n):
        cx = min(int((pos[i, 0] - x0) / h), ncx - 1)
        cy = min(int((pos[i, 1] - y0) / h), ncy - 1)
        c = cy * ncx + cx
        cell_of[i] = c
        count[c + 1] += 1
    for c in range(ncx * ncy):
        count[c + 1] += count[c]
    fill = count[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):   # ascending i within each cell
        c = cell_of[i]
        order[fill[c]] = i
        fill[c] += 1
    return h, x0, y0, ncx, ncy, count, order, cell_of


@njit(cache=True, nogil=True)
def neighbor_lists(pos, radius):
    """pos (N, 2) finite, radius (m) -> indptr (N + 1,), indices (E,) int64: neighbours within radius."""
    n = pos.shape[0]
    indptr = np.zeros(n + 1, dtype=np.int64)
    if n == 0:
        return indptr, np.empty(0, dtype=np.int64)
    h, x0, y0, ncx, ncy, start, order, cell_of = _cell_list(pos, radius)
    r2 = radius * radius
    for sweep in range(2):           # sweep 0 counts, sweep 1 fills
        if sweep == 1:
            for i in range(n):
                indptr[i + 1] += indptr[i]
            indices = np.empty(indptr[n], dtype=np.int64)
        else:
            indices = np.empty(0, dtype=np.int64)
        for i in range(n):
            c = cell_of[i]
            cx = c % ncx
            cy = c // ncx
            k = indptr[i] if sweep == 1 else 0
            for yy in range(max(cy - 1, 0), min(cy + 2, ncy)):
                for xx in range(max(cx - 1, 0), min(cx + 2, ncx)):
                    cc = yy * ncx + xx
                    for q in range(start[cc], start[cc + 1]):
                        j = order[q]
                        if j == i:
                            continue
                        dx = pos[j, 0] - pos[i, 0]
                        dy = pos[j, 1] - pos[i, 1]
                        if dx * dx + dy * dy <= r2:
                            if sweep == 0:
                                indptr[i + 1] += 1
                            else:
                                indices[k] = j
                                k += 1
    return indptr, indices


def neighbors(positions, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Validated wrapper: positions (N, 2) finite, radius > 0 -> (indptr, indices)."""
    pos = np.ascontiguousarray(np.asarray(positions, dtype=np.float64))
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"positions must have shape (N, 2), got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions contain NaN or inf")
    radius = float(radius)
    if not (radius > 0 and math.isfinite(radius)):
        raise ValueError(f"radius must be finite and > 0, got {radius}")
    return neighbor_lists(pos, radius)
