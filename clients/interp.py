"""The one interpolation kernel of the project: multilinear lookup of a value function and its stored gradient.

A grid is packed once (`pack_grid`) as a float32 array ``(n_nodes, n + 1)``: per node the value followed by the
n gradient components, so that one lookup touches 2^n short contiguous rows (cache locality). The kernels are
plain `@njit` functions of (packed grid, geometry arrays, point); `ValueFunction` owns the arrays and validates
input, the safety filter calls `interp_point` directly from its own kernels, and the HTTP service goes through
`ValueFunction` (never a copy of this code).

Domain rules (docs/contract.md):
- a periodic dimension (heading) wraps: any finite coordinate is accepted;
- a position coordinate (dims 0 and 1) beyond the grid's extent means "no interaction": value +inf, zero
  gradient, status `OUTSIDE`;
- NaN anywhere, or another coordinate outside its bounds, is an error (status codes below); never extrapolation.
  A coordinate within `BOUND_TOL` (relative to the dimension's extent) of a bound is clamped onto it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

OK = 0
OUTSIDE = 1          # a position coordinate beyond the grid: value +inf, zero gradient
NAN_BASE = 2         # status NAN_BASE + 2 * dim: NaN/inf in that dim
BOUNDS_BASE = 3      # status BOUNDS_BASE + 2 * dim: out of bounds in that (non-position) dim
BOUND_TOL = 1e-9     # relative tolerance (fraction of the extent) for points on a bound

N_POSITION_DIMS = 2  # position dims are (0, 1) for every model (contract: position_dims)


def decode_status(status: int, names) -> tuple[str, int]:
    """(kind, dim) of a non-OK status code: kind in {'outside', 'nan', 'bounds'}."""
    if status == OUTSIDE:
        return "outside", -1
    dim = (status - NAN_BASE) // 2
    return ("nan" if (status - NAN_BASE) % 2 == 0 else "bounds"), dim


def pack_grid(value: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """value (n1..nn) and gradient (n1..nn, n) -> C-contiguous float32 (prod(n_i), n + 1)."""
    value = np.asarray(value, dtype=np.float32)
    gradient = np.asarray(gradient, dtype=np.float32)
    n = value.ndim
    if gradient.shape != value.shape + (n,):
        raise ValueError(f"gradient shape {gradient.shape} does not match value shape {value.shape} + ({n},)")
    packed = np.empty((value.size, n + 1), dtype=np.float32)
    packed[:, 0] = value.reshape(-1)
    packed[:, 1:n + 1] = gradient.reshape(-1, n)
    return packed


def grid_geometry(coords, periodic) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Uniform-grid geometry from 1-D coordinate arrays.

    Returns lo (n,), inv_dx (n,), npts (n,) int64, periodic (n,) bool, strides (n,) int64 (in packed rows) and
    hi (n,) (the last node; for a periodic dim lo + n * dx, the wrap point).
    """
    n = len(coords)
    lo = np.empty(n)
    hi = np.empty(n)
    inv_dx = np.empty(n)
    npts = np.empty(n, dtype=np.int64)
    per = np.asarray(periodic, dtype=np.bool_)
    if per.shape != (n,):
        raise ValueError(f"periodic must have {n} entries, got {per.shape}")
    for i, c in enumerate(coords):
        c = np.asarray(c, dtype=np.float64)
        if c.ndim != 1 or c.size < 2:
            raise ValueError(f"coordinate {i} must be 1-D with at least 2 nodes, got shape {c.shape}")
        dx = (c[-1] - c[0]) / (c.size - 1)
        if not dx > 0 or np.max(np.abs(np.diff(c) - dx)) > 1e-6 * dx:
            raise ValueError(f"coordinate {i} is not uniformly spaced and increasing")
        lo[i] = c[0]
        inv_dx[i] = 1.0 / dx
        npts[i] = c.size
        hi[i] = c[0] + c.size * dx if per[i] else c[-1]
    strides = np.empty(n, dtype=np.int64)
    s = 1
    for i in range(n - 1, -1, -1):
        strides[i] = s
        s *= npts[i]
    return lo, inv_dx, npts, per, strides, hi


@njit(cache=True, nogil=True)
def make_scratch(n):
    """Scratch arrays for `interp_point` in an n-D grid: corner rows (2^n,) int64 and weights (2^n,)."""
    return np.empty(1 << n, dtype=np.int64), np.empty(1 << n)


@njit(cache=True, nogil=True, inline="always")
def interp_point(packed, lo, inv_dx, npts, periodic, strides, states, row, shift, want_grad, grad_out, rows, wts):
    """Multilinear value (minus `shift`) and, if want_grad, gradient at the point states[row] (n,).

    Writes the gradient into grad_out (n,) and returns (value, status). With status OUTSIDE the value is +inf
    and the gradient zero; with an error status the value is NaN. Scratch (allocation-free hot path): rows,
    wts of size 2^n (see `make_scratch`). Inlined into its callers (no call or reference-count overhead).
    """
    n = states.shape[1]
    for k in range(n):
        grad_out[k] = 0.0
    rows[0] = 0
    wts[0] = 1.0
    width = 1
    outside = False
    for d in range(n):
        x = states[row, d]
        if not math.isfinite(x):
            return math.nan, NAN_BASE + 2 * d
        m = npts[d]
        u = (x - lo[d]) * inv_dx[d]
        if periodic[d]:
            u = u - math.floor(u / m) * m
            i0 = int(math.floor(u))
            if i0 >= m:
                i0 = m - 1
            if i0 < 0:
                i0 = 0
            t = u - i0
            i1 = i0 + 1
            if i1 == m:
                i1 = 0
        else:
            top = m - 1
            if u < 0.0 or u > top:
                tol = BOUND_TOL * top
                if u < -tol or u > top + tol:
                    if d < N_POSITION_DIMS:
                        outside = True
                        continue
                    return math.nan, BOUNDS_BASE + 2 * d
                u = min(max(u, 0.0), float(top))
            i0 = int(u)
            if i0 >= top:
                i0 = top - 1
            t = u - i0
            i1 = i0 + 1
        if outside:
            continue
        # tensor-product expansion of the corner set: 2^(d+1) corners after dim d
        o0 = i0 * strides[d]
        o1 = i1 * strides[d]
        for c in range(width):
            rows[c + width] = rows[c] + o1
            wts[c + width] = wts[c] * t
            rows[c] += o0
            wts[c] *= 1.0 - t
        width *= 2
    if outside:
        return math.inf, OUTSIDE
    value = 0.0
    if want_grad:
        for c in range(width):
            wt = wts[c]
            r = rows[c]
            value += wt * packed[r, 0]
            for k in range(n):
                grad_out[k] += wt * packed[r, k + 1]
    else:
        for c in range(width):
            value += wts[c] * packed[rows[c], 0]
    return value - shift, OK


@njit(cache=True, nogil=True)
def interp_batch(packed, lo, inv_dx, npts, periodic, strides, states, shift, want_grad, values, grads, status):
    """Batch version of `interp_point` over states (N, n); fills values (N,), grads (N, n), status (N,) int64.

    Returns the index of the first point with an error status, or -1.
    """
    n = states.shape[1]
    g = np.empty(n)
    rows, wts = make_scratch(n)
    first_bad = -1
    for p in range(states.shape[0]):
        v, st = interp_point(packed, lo, inv_dx, npts, periodic, strides, states, p, shift, want_grad, g, rows, wts)
        values[p] = v
        status[p] = st
        if want_grad:
            for k in range(n):
                grads[p, k] = g[k]
        if st > OUTSIDE and first_bad < 0:
            first_bad = p
    return first_bad
