"""Potential-conflict range R_c(d) from a worst-case value grid (paper Prop. 1, eqs. 14-16).

R_c(d) = the smallest r such that every relative state with ||p_rel|| >= r has V_worst >= d.

How the grid is read (honestly, not node by node): between nodes the value is its multilinear interpolant (what
the client evaluates). A multilinear function is linear in each non-position coordinate, so for a fixed position
its minimum over a cell is attained at a vertex of the non-position dims; the unsafe positions are therefore the
union, over all non-position node slices, of the bilinear sub-level sets {V_slice(p) < d}. Each position cell
touching an unsafe node is sampled on a (F+1)^2 lattice and the farthest unsafe sample found; R_c adds the
sample-cell diagonal, so R_c is an upper bound of the interpolant's range, tight to within that diagonal
(dx / F * sqrt 2). Cells are visited from the farthest out and the search stops once no remaining cell can
beat the best found.

If unsafe nodes lie on the edge of the position box, the unsafe set may continue beyond the grid: R_c = inf.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np

from reach.models.base import Model

SUBSAMPLES = 16  # F: lattice intervals per position cell


@dataclasses.dataclass(frozen=True)
class ConflictRange:
    """R_c (m) for one safety distance d (m); `reason` explains inf or a 0 (no unsafe state)."""
    safety_distance: float
    conflict_range: float
    reason: str


def conflict_range(value, coords, model: Model, safety_distance: float) -> ConflictRange:
    """R_c(d) from the worst-case V0 grid `value` (m, shape of `coords`) with 1-D coordinate vectors `coords`."""
    v = np.asarray(value, dtype=np.float64)
    coords = [np.asarray(c, dtype=np.float64) for c in coords]
    if v.shape != tuple(len(c) for c in coords):
        raise ValueError(f"value shape {v.shape} does not match coordinates {[len(c) for c in coords]}")
    d = float(safety_distance)
    i, j = model.position_dims
    if model.periodic[i] or model.periodic[j]:
        raise ValueError("position dims must not be periodic")
    # Position dims first, every other dim flattened into "slices".
    v = np.moveaxis(v, (i, j), (0, 1)).reshape(v.shape[i], v.shape[j], -1)
    x, y = coords[i], coords[j]
    unsafe = v < d
    node_unsafe = unsafe.any(axis=2)
    if not node_unsafe.any():
        return ConflictRange(d, 0.0, f"no grid state has V < {d} m")
    edge = node_unsafe.copy()
    edge[1:-1, 1:-1] = False
    if edge.any():
        a, b = np.argwhere(edge)[0]
        return ConflictRange(d, math.inf, f"unsafe states (V < {d} m) reach the edge of the position grid, e.g. "
                                          f"at p = ({x[a]:.4g}, {y[b]:.4g}) m: enlarge the grid")

    # Cells (lower-left index) with an unsafe corner, with the largest distance any of their points can have.
    cell_unsafe = node_unsafe[:-1, :-1] | node_unsafe[1:, :-1] | node_unsafe[:-1, 1:] | node_unsafe[1:, 1:]
    ci, cj = np.nonzero(cell_unsafe)
    far_x = np.maximum(np.abs(x[ci]), np.abs(x[ci + 1]))
    far_y = np.maximum(np.abs(y[cj]), np.abs(y[cj + 1]))
    reach_max = np.hypot(far_x, far_y)
    order = np.argsort(-reach_max)

    t = np.linspace(0.0, 1.0, SUBSAMPLES + 1)
    ta, tb = np.meshgrid(t, t, indexing="ij")
    ta, tb = ta.reshape(-1, 1), tb.reshape(-1, 1)
    best = 0.0
    for k in order:
        if reach_max[k] <= best:
            break  # no remaining cell can hold a farther unsafe point
        a, b = ci[k], cj[k]
        c00, c10, c01, c11 = v[a, b], v[a + 1, b], v[a, b + 1], v[a + 1, b + 1]  # (slices,)
        interp = (1 - ta) * (1 - tb) * c00 + ta * (1 - tb) * c10 + (1 - ta) * tb * c01 + ta * tb * c11
        hit = (interp < d).any(axis=1)
        if hit.any():
            px = x[a] + ta[hit, 0] * (x[a + 1] - x[a])
            py = y[b] + tb[hit, 0] * (y[b + 1] - y[b])
            best = max(best, float(np.hypot(px, py).max()))
    diag = math.hypot(x[1] - x[0], y[1] - y[0]) / SUBSAMPLES
    return ConflictRange(d, best + diag, f"farthest interpolated state with V < {d} m, plus {diag:.3g} m "
                                         "(sampling diagonal)")


def conflict_range_table(value, coords, model: Model, safety_distances) -> np.ndarray:
    """R_c(d) (m, float64) for each d in `safety_distances` (m), from the worst-case V0 grid; see module doc.

    inf marks a range the grid cannot bound (unsafe states at its position edge); a warning gives the reason.
    """
    out = []
    for d in safety_distances:
        r = conflict_range(value, coords, model, d)
        if math.isinf(r.conflict_range):
            warnings.warn(f"R_c({r.safety_distance} m) = inf: {r.reason}", RuntimeWarning, stacklevel=2)
        out.append(r.conflict_range)
    return np.asarray(out, dtype=np.float64)
