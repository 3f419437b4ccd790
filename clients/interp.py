"""The one interpolation kernel of the project: multilinear lookup of a value function and its stored gradient.

A grid is packed once (`pack_grid`) as a float32 array ``(n_nodes, n + 1)``: per node the value followed by the
n gradient components, so that one lookup touches 2^n short contiguous rows (cache locality). The kernels are
plain `@njit` functions of (packed grid, geometry arrays, point); `ValueFunction` owns the arrays and validates
input, the safety filter calls the point kernels (`_interp4`, `_interp5`, `_interp_generic`, which `interp_point`
dispatches to) directly from its own kernels, and the HTTP service goes through `ValueFunction` (never a copy of
this code).

Speed: the 4-D and 5-D kernels are unrolled with scalar accumulators, and the point kernels are compiled without
numba's reference counting (`_nrt=False`: they allocate nothing), so a call from another kernel costs no atomic
increments. `interp_batch` locates blocks of points and prefetches their corner rows before summing them, which
overlaps the memory latency of points spread over a grid larger than the caches (benchmarks/client.py; value and
gradient, points uniform over the grid, 2-core EPYC, 2026-12-07: quadrotor 31^4 58-75 ns, air taxi 105-112 ns, where
prefetching only each row's first cache line took 65-100 and 168-253 ns in the same process).

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
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

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
def wrapped_cells(x, u, lo, inv_dx, m):
    """A periodic coordinate x in cells from lo, u = (x - lo) * inv_dx, reduced to [0, m] (m cells per period)."""
    if abs(u) < 6.7e7:      # the reduction's rounding, ~ulp(u), stays below 1e-8 of a cell
        return u - math.floor(u / m) * m
    r = np.fmod(x - lo, m / inv_dx) * inv_dx      # many turns (u may have overflowed): exact reduction of x
    return r + m if r < 0.0 else r


@njit(cache=True, nogil=True, inline="always")
def _axis(x, d, lo, inv_dx, npts, periodic, strides):
    """One coordinate x of dim d -> (status, row offset of the lower node, of the upper node, fraction t).

    status OK, OUTSIDE (a position dim beyond the grid) or an error code (NaN, out of bounds)."""
    if not math.isfinite(x):
        return NAN_BASE + 2 * d, 0, 0, 0.0
    m = npts[d]
    u = (x - lo[d]) * inv_dx[d]
    if periodic[d]:
        u = wrapped_cells(x, u, lo[d], inv_dx[d], m)
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
                    return OUTSIDE, 0, 0, 0.0
                return BOUNDS_BASE + 2 * d, 0, 0, 0.0
            u = min(max(u, 0.0), float(top))
        i0 = int(u)
        if i0 >= top:
            i0 = top - 1
        t = u - i0
        i1 = i0 + 1
    s = strides[d]
    return OK, i0 * s, i1 * s, t


@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Hint the CPU to load the cache line holding arr[row, col] (a 2-D C array); no effect on results."""
    def codegen(context, builder, sig, args):
        aryty = sig.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1], args[2]])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                                            "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])   # read, keep in all caches, data
        return context.get_dummy_value()
    return types.none(arr, types.intp, types.intp), codegen


# The 4-D and 5-D kernels are split in two: `_axesN` (per dim: status, row offsets of the lower and upper node,
# fraction) and `_sumN` (the 2^N weighted corner rows), so that `interp_batch` can locate a block of points,
# prefetch their rows and only then sum them (the sums of a block overlap their memory latency).
@njit(cache=True, nogil=True, inline="always")
def _axes4(lo, inv_dx, npts, periodic, strides, states, row):
    """(status, a0, b0, .., a3, b3, t0, .., t3) of states[row]: status OK, OUTSIDE or the first error code."""
    s0, a0, b0, t0 = _axis(states[row, 0], 0, lo, inv_dx, npts, periodic, strides)
    s1, a1, b1, t1 = _axis(states[row, 1], 1, lo, inv_dx, npts, periodic, strides)
    s2, a2, b2, t2 = _axis(states[row, 2], 2, lo, inv_dx, npts, periodic, strides)
    s3, a3, b3, t3 = _axis(states[row, 3], 3, lo, inv_dx, npts, periodic, strides)
    st = OK
    for sk in (s0, s1, s2, s3):          # the first error in dim order, else OUTSIDE if a position dim is beyond
        if sk > OUTSIDE:
            st = sk
            break
    if st == OK and (s0 == OUTSIDE or s1 == OUTSIDE):
        st = OUTSIDE
    return st, a0, b0, a1, b1, a2, b2, a3, b3, t0, t1, t2, t3


@njit(cache=True, nogil=True, inline="always")
def _prefetch4(packed, a0, b0, a1, b1, a2, b2, a3, b3):
    # the last dim's two nodes are adjacent rows (but at a periodic wrap): the first one's start and the second
    # one's end are on the one or two cache lines the pair spans (the first row's start alone missed the second
    # line of about a third of the pairs of 20-byte rows, a demand miss each)
    last = packed.shape[1] - 1
    for c0 in range(2):
        r0 = a0 if c0 == 0 else b0
        for c1 in range(2):
            r1 = r0 + (a1 if c1 == 0 else b1)
            _prefetch(packed, r1 + a2 + a3, 0)
            _prefetch(packed, r1 + a2 + b3, last)
            _prefetch(packed, r1 + b2 + a3, 0)
            _prefetch(packed, r1 + b2 + b3, last)


@njit(cache=True, nogil=True, inline="always")
def _sum4(packed, a0, b0, a1, b1, a2, b2, a3, b3, t0, t1, t2, t3, shift, want_grad, grad_out):
    """Multilinear value minus shift over the 16 corner rows (scalar accumulators); gradient into grad_out."""
    v = 0.0
    g0 = 0.0
    g1 = 0.0
    g2 = 0.0
    g3 = 0.0
    u3 = 1.0 - t3
    for c0 in range(2):
        r0 = a0 if c0 == 0 else b0
        w0 = 1.0 - t0 if c0 == 0 else t0
        for c1 in range(2):
            r1 = r0 + (a1 if c1 == 0 else b1)
            w1 = w0 * (1.0 - t1 if c1 == 0 else t1)
            for c2 in range(2):
                r2 = r1 + (a2 if c2 == 0 else b2)
                w2 = w1 * (1.0 - t2 if c2 == 0 else t2)
                ra = r2 + a3
                rb = r2 + b3
                wa = w2 * u3
                wb = w2 * t3
                v += wa * packed[ra, 0] + wb * packed[rb, 0]
                if want_grad:
                    g0 += wa * packed[ra, 1] + wb * packed[rb, 1]
                    g1 += wa * packed[ra, 2] + wb * packed[rb, 2]
                    g2 += wa * packed[ra, 3] + wb * packed[rb, 3]
                    g3 += wa * packed[ra, 4] + wb * packed[rb, 4]
    grad_out[0] = g0
    grad_out[1] = g1
    grad_out[2] = g2
    grad_out[3] = g3
    return v - shift


@njit(cache=True, nogil=True, _nrt=False)
def _interp4(packed, lo, inv_dx, npts, periodic, strides, states, row, shift, want_grad, grad_out):
    """`interp_point` unrolled for 4-D grids (the quadrotor): scalar accumulators, no scratch."""
    st, a0, b0, a1, b1, a2, b2, a3, b3, t0, t1, t2, t3 = _axes4(lo, inv_dx, npts, periodic, strides, states, row)
    if st != OK:
        return _not_ok(st, grad_out)
    return _sum4(packed, a0, b0, a1, b1, a2, b2, a3, b3, t0, t1, t2, t3, shift, want_grad, grad_out), OK


@njit(cache=True, nogil=True, inline="always")
def _axes5(lo, inv_dx, npts, periodic, strides, states, row):
    """(status, a0, b0, .., a4, b4, t0, .., t4) of states[row]: `_axes4` and the fifth dim."""
    st, a0, b0, a1, b1, a2, b2, a3, b3, t0, t1, t2, t3 = _axes4(lo, inv_dx, npts, periodic, strides, states, row)
    s4, a4, b4, t4 = _axis(states[row, 4], 4, lo, inv_dx, npts, periodic, strides)
    if st <= OUTSIDE and s4 > OUTSIDE:      # an error in the fifth dim outranks "outside"
        st = s4
    return st, a0, b0, a1, b1, a2, b2, a3, b3, a4, b4, t0, t1, t2, t3, t4


@njit(cache=True, nogil=True, inline="always")
def _prefetch5(packed, a0, b0, a1, b1, a2, b2, a3, b3, a4, b4):
    # the rows are sums of one offset per dim: fold dims 0 and 1 into the first of `_prefetch4`'s four
    _prefetch4(packed, a0 + a1, a0 + b1, a2, b2, a3, b3, a4, b4)
    _prefetch4(packed, b0 + a1, b0 + b1, a2, b2, a3, b3, a4, b4)


@njit(cache=True, nogil=True, inline="always")
def _sum5(packed, a0, b0, a1, b1, a2, b2, a3, b3, a4, b4, t0, t1, t2, t3, t4, shift, want_grad, grad_out):
    """Multilinear value minus shift over the 32 corner rows (scalar accumulators); gradient into grad_out."""
    v = 0.0
    g0 = 0.0
    g1 = 0.0
    g2 = 0.0
    g3 = 0.0
    g4 = 0.0
    u4 = 1.0 - t4
    for c0 in range(2):
        r0 = a0 if c0 == 0 else b0
        w0 = 1.0 - t0 if c0 == 0 else t0
        for c1 in range(2):
            r1 = r0 + (a1 if c1 == 0 else b1)
            w1 = w0 * (1.0 - t1 if c1 == 0 else t1)
            for c2 in range(2):
                r2 = r1 + (a2 if c2 == 0 else b2)
                w2 = w1 * (1.0 - t2 if c2 == 0 else t2)
                for c3 in range(2):
                    r3 = r2 + (a3 if c3 == 0 else b3)
                    w3 = w2 * (1.0 - t3 if c3 == 0 else t3)
                    ra = r3 + a4
                    rb = r3 + b4
                    wa = w3 * u4
                    wb = w3 * t4
                    v += wa * packed[ra, 0] + wb * packed[rb, 0]
                    if want_grad:
                        g0 += wa * packed[ra, 1] + wb * packed[rb, 1]
                        g1 += wa * packed[ra, 2] + wb * packed[rb, 2]
                        g2 += wa * packed[ra, 3] + wb * packed[rb, 3]
                        g3 += wa * packed[ra, 4] + wb * packed[rb, 4]
                        g4 += wa * packed[ra, 5] + wb * packed[rb, 5]
    grad_out[0] = g0
    grad_out[1] = g1
    grad_out[2] = g2
    grad_out[3] = g3
    grad_out[4] = g4
    return v - shift


@njit(cache=True, nogil=True, _nrt=False)
def _interp5(packed, lo, inv_dx, npts, periodic, strides, states, row, shift, want_grad, grad_out):
    """`interp_point` unrolled for 5-D grids (the air taxi): scalar accumulators, no scratch."""
    st, a0, b0, a1, b1, a2, b2, a3, b3, a4, b4, t0, t1, t2, t3, t4 = _axes5(lo, inv_dx, npts, periodic, strides,
                                                                            states, row)
    if st != OK:
        return _not_ok(st, grad_out)
    return _sum5(packed, a0, b0, a1, b1, a2, b2, a3, b3, a4, b4, t0, t1, t2, t3, t4, shift, want_grad,
                 grad_out), OK


@njit(cache=True, nogil=True, inline="always")
def _not_ok(st, grad_out):
    """(value, status) of a point that is not OK: +inf and a zero gradient when OUTSIDE, else NaN."""
    if st == OUTSIDE:
        for k in range(grad_out.shape[0]):
            grad_out[k] = 0.0
        return math.inf, st
    return math.nan, st


@njit(cache=True, nogil=True, _nrt=False)
def _interp_generic(packed, lo, inv_dx, npts, periodic, strides, states, row, shift, want_grad, grad_out, rows,
                    wts):
    """Any dimension: tensor-product expansion of the 2^n corners in the scratch arrays rows, wts."""
    n = states.shape[1]
    for k in range(n):
        grad_out[k] = 0.0
    rows[0] = 0
    wts[0] = 1.0
    width = 1
    outside = False
    for d in range(n):
        st, o0, o1, t = _axis(states[row, d], d, lo, inv_dx, npts, periodic, strides)
        if st > OUTSIDE:
            return math.nan, st
        if st == OUTSIDE:
            outside = True
        if outside:
            continue
        # tensor-product expansion of the corner set: 2^(d+1) corners after dim d
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


@njit(cache=True, nogil=True, _nrt=False)
def interp_point(packed, lo, inv_dx, npts, periodic, strides, states, row, shift, want_grad, grad_out, rows, wts):
    """Multilinear value (minus `shift`) and, if want_grad, gradient at the point states[row] (n,).

    Writes the gradient into grad_out (n,) and returns (value, status). With status OUTSIDE the value is +inf
    and the gradient zero; with an error status the value is NaN (the first offending dim in order). Scratch
    (allocation-free hot path): rows, wts of size 2^n (see `make_scratch`; only the generic n != 4, 5 path
    uses them). 4-D and 5-D grids take unrolled kernels (`_interp4`, `_interp5`: scalar accumulators, the two
    nodes adjacent along the last dim read together).
    """
    n = states.shape[1]
    if n == 4:
        return _interp4(packed, lo, inv_dx, npts, periodic, strides, states, row, shift, want_grad, grad_out)
    if n == 5:
        return _interp5(packed, lo, inv_dx, npts, periodic, strides, states, row, shift, want_grad, grad_out)
    return _interp_generic(packed, lo, inv_dx, npts, periodic, strides, states, row, shift, want_grad, grad_out,
                           rows, wts)


@njit(cache=True, nogil=True, _nrt=False)
def prefetch_point(packed, lo, inv_dx, npts, periodic, strides, states, row):
    """Hint the CPU to load the corner rows a lookup of states[row] will read (4-D and 5-D grids; nothing for other
    grids or a point outside the grid). No effect on results: a caller issues it some lookups ahead so that the
    rows arrive while it works on others."""
    n = states.shape[1]
    if n == 4:
        st, a0, b0, a1, b1, a2, b2, a3, b3, t0, t1, t2, t3 = _axes4(lo, inv_dx, npts, periodic, strides, states, row)
        if st == OK:
            _prefetch4(packed, a0, b0, a1, b1, a2, b2, a3, b3)
    elif n == 5:
        st, a0, b0, a1, b1, a2, b2, a3, b3, a4, b4, t0, t1, t2, t3, t4 = _axes5(lo, inv_dx, npts, periodic, strides,
                                                                                states, row)
        if st == OK:
            _prefetch5(packed, a0, b0, a1, b1, a2, b2, a3, b3, a4, b4)


BLOCK = 8   # points located and prefetched together in `interp_batch` (measured best of 4, 8, 16)


# `interp_batch`'s two passes over a block, as kernels of their own: inlined into its loop, the same code took
# ~110 instead of ~75 ns a cache-resident 4-D point and 90 instead of 60 ns value-only (benchmarks/client.py).
@njit(cache=True, nogil=True, _nrt=False)
def _locate4(lo, inv_dx, npts, periodic, strides, states, p, packed, off, frac, k):
    """Locate states[p] into row k of off (8 row offsets) and frac (4 fractions), prefetch its corner rows;
    returns its status."""
    st, a0, b0, a1, b1, a2, b2, a3, b3, t0, t1, t2, t3 = _axes4(lo, inv_dx, npts, periodic, strides, states, p)
    off[k, 0], off[k, 1], off[k, 2], off[k, 3] = a0, b0, a1, b1
    off[k, 4], off[k, 5], off[k, 6], off[k, 7] = a2, b2, a3, b3
    frac[k, 0], frac[k, 1], frac[k, 2], frac[k, 3] = t0, t1, t2, t3
    if st == OK:
        _prefetch4(packed, a0, b0, a1, b1, a2, b2, a3, b3)
    return st


@njit(cache=True, nogil=True, _nrt=False)
def _sum_located4(packed, off, frac, k, shift, want_grad, grad_out):
    """`_sum4` of the point `_locate4` put in row k."""
    return _sum4(packed, off[k, 0], off[k, 1], off[k, 2], off[k, 3], off[k, 4], off[k, 5], off[k, 6], off[k, 7],
                 frac[k, 0], frac[k, 1], frac[k, 2], frac[k, 3], shift, want_grad, grad_out)


@njit(cache=True, nogil=True, _nrt=False)
def _locate5(lo, inv_dx, npts, periodic, strides, states, p, packed, off, frac, k):
    """`_locate4` for 5-D grids (10 row offsets, 5 fractions)."""
    st, a0, b0, a1, b1, a2, b2, a3, b3, a4, b4, t0, t1, t2, t3, t4 = _axes5(lo, inv_dx, npts, periodic, strides,
                                                                            states, p)
    off[k, 0], off[k, 1], off[k, 2], off[k, 3], off[k, 4] = a0, b0, a1, b1, a2
    off[k, 5], off[k, 6], off[k, 7], off[k, 8], off[k, 9] = b2, a3, b3, a4, b4
    frac[k, 0], frac[k, 1], frac[k, 2], frac[k, 3], frac[k, 4] = t0, t1, t2, t3, t4
    if st == OK:
        _prefetch5(packed, a0, b0, a1, b1, a2, b2, a3, b3, a4, b4)
    return st


@njit(cache=True, nogil=True, _nrt=False)
def _sum_located5(packed, off, frac, k, shift, want_grad, grad_out):
    """`_sum5` of the point `_locate5` put in row k."""
    return _sum5(packed, off[k, 0], off[k, 1], off[k, 2], off[k, 3], off[k, 4], off[k, 5], off[k, 6], off[k, 7],
                 off[k, 8], off[k, 9], frac[k, 0], frac[k, 1], frac[k, 2], frac[k, 3], frac[k, 4], shift, want_grad,
                 grad_out)


@njit(cache=True, nogil=True)
def interp_batch(packed, lo, inv_dx, npts, periodic, strides, states, shift, want_grad, values, grads, status):
    """Batch version of `interp_point` over states (N, n); fills values (N,), grads (N, n), status (N,) int64.

    Returns the index of the first point with an error status. 4-D and 5-D grids go in blocks of `BLOCK`
    points: locate all, prefetch their corner rows, then sum (2x faster for points spread over a grid larger
    than the caches, benchmarks/client.py).
    """
    n = states.shape[1]
    N = states.shape[0]
    g = np.empty(n)
    rows, wts = make_scratch(n)
    off = np.zeros((BLOCK, 2 * n), dtype=np.int64)
    frac = np.zeros((BLOCK, n))
    sts = np.zeros(BLOCK, dtype=np.int64)
    first_bad = -1
    for p0 in range(0, N, BLOCK):
        p1 = min(p0 + BLOCK, N)
        if n == 4 or n == 5:
            for p in range(p0, p1):
                if n == 4:
                    sts[p - p0] = _locate4(lo, inv_dx, npts, periodic, strides, states, p, packed, off, frac, p - p0)
                else:
                    sts[p - p0] = _locate5(lo, inv_dx, npts, periodic, strides, states, p, packed, off, frac, p - p0)
            for p in range(p0, p1):
                k = p - p0
                if sts[k] != OK:
                    v, st = _not_ok(sts[k], g)
                elif n == 4:
                    v, st = _sum_located4(packed, off, frac, k, shift, want_grad, g), OK
                else:
                    v, st = _sum_located5(packed, off, frac, k, shift, want_grad, g), OK
                first_bad = _store(p, v, st, g, want_grad, values, grads, status, first_bad)
        else:
            for p in range(p0, p1):
                v, st = _interp_generic(packed, lo, inv_dx, npts, periodic, strides, states, p, shift, want_grad,
                                        g, rows, wts)
                first_bad = _store(p, v, st, g, want_grad, values, grads, status, first_bad)
    return first_bad


@njit(cache=True, nogil=True, inline="always")
def _store(p, v, st, g, want_grad, values, grads, status, first_bad):
    values[p] = v
    status[p] = st
    if want_grad:
        for k in range(g.shape[0]):
            grads[p, k] = g[k]
    if st > OUTSIDE and first_bad < 0:
        return p
    return first_bad
