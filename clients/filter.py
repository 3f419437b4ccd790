"""The layered multi-agent safety filter (paper eq. 12 with the runtime logic of the reference note).

For every agent i, over all agents at once:

1. neighbours within the model's observation range (cell list, `clients.neighbors`; never all pairs; `filter`
   keeps a Verlet list between calls, so the cell list is rebuilt only every few steps of a simulation);
2. prioritization: the pairwise barrier B(s_ij) = min(V(s_ij), ||p_ij||) - d of every neighbour (V from the
   mode's value function, shifted by d and the value margin; V0 <= ||p|| holds for the true value, so taking the
   minimum only removes interpolation error; a neighbour beyond the grid's position extent has V = +inf, so
   B = ||p|| - d); the neighbour with the minimum B is the partner j* (ties: the smaller index), mutual choices are
   the potential collision pairs;
3. the filter: one linear CBF constraint in the pair's control,
       grad B(s) . (f(s) + G_a u_a + G_b u_b) + gamma_cbf B(s) >= mu,
   with the state-dependent box bounds of the model, solved exactly in closed form (`solve_halfspace_box`);
4. the sampled-data check (below), then agent i applies its own part.

Modes. cooperative: joint control (u_a, u_b) of the pair; agent a is the one with the smaller id, so both agents
of a pair build the identical problem from identical data and each applies its part (the filter solves a mutual
pair once). The weights of the projection are the agents' responsibilities r: the objective is
sum_k (u_k - ref_k)^2 / r_k, so the correction of agent k is proportional to r_k (default equal; r_k = 0 keeps
agent k's nominal action, both zero count as equal). The partner's nominal action is used when known; when it is
unknown (`filter_agent` without `neighbor_nominal`) the partner is assumed to hold zero control (quadrotor:
constant velocity; air taxi: constant heading and speed), and the pair solution's partner part is what the
prediction assumes the partner applies (true when the partner runs this same program with the same data).
worst_case: the ego's control only, the other's control at the corner of its box that minimizes the left side
(and, in the sampled-data check, every corner of its box).

Infeasible box: when no control in the box satisfies the linear constraint, the most-safe control (the box
corner maximizing the left side, i.e. the HJ optimal control of the pair game) is applied (status most_safe);
the nominal action is never passed through.

Sampled-data margin (actions are held for the decision period dt). Write B_k = B(s(t_k)) and let the action u be
held on [t_k, t_k + dt]. Along the exact trajectory B(s(t_k + tau)) = B_k + tau dB/dt(s_k, u) + R(tau) with a
remainder R that the linear constraint does not see (curvature of the flow, kinks of the HJ value, the change of
G(s) while u is held). If the linear constraint holds with the margin mu >= max_tau (-R(tau)) / tau, then
    B(s(t_k + tau)) >= B_k + tau (mu - gamma_cbf B_k) - tau mu = (1 - gamma_cbf tau) B_k >= 0  whenever B_k >= 0
(gamma_cbf dt <= 1 is enforced). A global bound on R (Lipschitz constants of grad V) would be very conservative at
the kinks of HJ value functions, so the margin is found per pair instead: the candidate action is integrated
with the model's exact `step_agents` to the check times tau_q = q dt / n_checks (q = 1..n_checks), the
discrete condition B(s(tau_q)) >= (1 - gamma_cbf tau_q) B_k is evaluated, and mu is raised by 1.25 times the
largest measured deficit rate ((1 - gamma_cbf tau) B_k - B(s(tau))) / tau until it holds (at most `max_iter`
rounds). If no linear candidate passes, a vertex search tries every combination of {clip(ref), lo, hi} per
control component (at most 3^(#controls) distinct candidates): the cheapest passing one is applied (status
searched), else the candidate with the largest slack (status best_effort, the only case without the guarantee).
The check is
skipped when it cannot fail: B changes at most Lambda tau over tau, with Lambda = sum_i L_i rate_i from the
grid's Lipschitz constants L_i (max(L_i, 1) in the position dims, for the ||p|| - d branch of B) and the model's
exact rate bounds (`dissipation_bounds`), both taken over the part of the grid the pair can reach within dt
(`local_rate_table`), so gamma_cbf B_k >= Lambda implies the condition at every tau; the same bound skips single
check times (`eval_rows`). Predictions that leave the grid's non-position bounds count as failing (never
extrapolated).

Guarantee (documented margin). For a pair that keeps choosing each other, whose prediction is exact
(cooperative: both apply their parts of the same pair solution; worst_case: the opponent plays any corner of its
box, bang-bang held for the period, which includes the grid's worst-case control) and whose check never ends in
best_effort: if B(s_0) >= 0, i.e. V0(s_0) >= d + value_margin and ||p_0|| >= d, then B >= 0 at every check time
of every later period, so the separation is >= d there (B <= ||p|| - d). Between check times only the
separation's sagitta (at most v_rel^2 (dt / n_checks)^2 / (8 d), about 1e-3 m for the quadrotor defaults) is not
covered. `value_margin` (m) absorbs the grid's own error: by default the margin the solver validated the grid at
plus its measured closed-loop shortfall, validation.margin + max(0, -validation.worst_separation_excess) (states
with V0 < d + margin were never validated; 0.3 m for the default quadrotor grid, 0 of 1000 falsified); coarse
grids need more than their validation shortfall (tests/test_filter.py documents 0.4 m and 500 m for its small
quadrotor and air-taxi grids and checks the guarantee on 10,000 random encounters per model and nominal policy).
worst_case mode: the worst-case games are solved over a finite engagement horizon T_e (they do not converge when
the opponent is as agile as the ego), so B_worst >= 0 is only guaranteed over T_e (tests/test_filter.py: zero
violations within T_e against the worst-case opponent) and is not invariant over longer times: against an
opponent that keeps playing the worst case the check can become infeasible; the filter then applies the
best-effort candidate and reports it (status best_effort) before any loss of separation. Every step without
best_effort keeps the guarantee above.

Performance: all kernels are numba, no Python per agent: the cell list visits each close pair once; the
prioritization evaluates the nearest neighbour first and skips the lookup of any neighbour whose lower bound B >=
min(||p|| - C - shift, ||p|| - d) exceeds the best so far (the nearest neighbours' grid rows are prefetched a few
targets ahead: in a training loop the env's own work evicts them between steps), and the Prop. 1 count skips the
worst-case lookup where that bound already gives B_w > 0. C comes from a small table over the cells of the
non-position coordinates (`norm_deficit_table`: max of ||p_node|| - V0_node over the cell's nodes; multilinear
weights reproduce p and the norm is convex, so V_interp(s) >= ||p|| - C exactly); a neighbour that bound does not
skip is tested again with C of a finer table, per block of 8 x 8 position cells (the deficit depends on where p
points relative to the velocities; 157 -> 127 lookups a call for 100 agents of the dense quadrotor scenario): the
skipped lookups cannot change any result. Skipped lookups still check the non-position bounds, so invalid states
raise as before. A pair problem whose barrier the prioritization already looked up (inside the grid, in the pair's
orientation) is skipped when gamma B exceeds the local rate bound that also covers the stored gradient
(`local_rate_table(stored_gradient=True)`): every control in the box then satisfies the constraint and the check, so
the answer is the clipped nominal action, without the gradient lookup (the same result; about 80 % of the partners
in the dense quadrotor scenario). The pair terms, the predictions of the sampled-data check and the vertex search
are batched (a few allocations per call, not per agent); the interpolation kernels run without reference counting
(`_nrt=False`). Every lookup of a pair reads the same packed grid rows (a value-only copy for the value lookups was
slower: the pair's gradient lookup then missed the cache lines its value lookup had loaded). The vertex search tries
its candidates in cost order and stops at the first that passes (the cheapest). The kernels write into arrays the
caller allocates, and `FilterResult` fields are views of them.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
from numba import njit, types

from clients import interp
from clients.neighbors import NO_VERLET, verlet_neighbor_lists
from clients.value_function import StateError, ValueFunction, real_array
from reach.models.base import kernel_layout

# per-agent status codes
NO_PARTNER = 0      # no neighbour: nominal action (clipped to the box) applied
NOMINAL_SAFE = 1    # the (clipped) nominal action satisfies the constraint and the sampled-data check
CORRECTED = 2       # the nominal action was projected onto the constraint
MOST_SAFE = 3       # the box cannot satisfy the linear constraint: the most-safe (HJ optimal) control
BEST_EFFORT = 4     # no candidate passed the sampled-data check: the candidate with the largest slack applied
SEARCHED = 5        # the linear refinements failed the check; a box-vertex candidate passed it

STATUS_NAMES = {NO_PARTNER: "no_partner", NOMINAL_SAFE: "nominal_safe", CORRECTED: "corrected",
                MOST_SAFE: "most_safe", BEST_EFFORT: "best_effort", SEARCHED: "searched"}

# an applied control component counts as an intervention when it differs from the proposed one clipped to the box
# by more than this fraction of the box's width (clipping alone is none: every filter applies controls in the box)
INTERVENTION_TOL = 1e-6


@njit(inline="always")
def intervenes(u, proposed, lo, hi) -> bool:
    """Control component u (applied) against `proposed` and the box [lo, hi]: an intervention (INTERVENTION_TOL)."""
    return abs(u - min(max(proposed, lo), hi)) > INTERVENTION_TOL * max(hi - lo, 1e-12)


# kernel error codes (err[0]); codes >= interp.NAN_BASE are interpolation statuses
_ERR_STATE = -2     # states[err[1], err[2]] is NaN or infinite
_ERR_NOMINAL = -3   # nominal[err[1], err[2]] is NaN or infinite
_ERR_IDS = -4       # input rows err[1] < err[2] of `filter_agent` have the same id


# ------------------------------------------------------------------------------------------ closed-form QP
@njit(cache=True, nogil=True, _nrt=False)
def _g_at(lam, ref, lo, hi, dw, c, row):
    g = 0.0
    for k in range(ref.shape[1]):
        u = ref[row, k] + lam * dw[row, k] * c[row, k]
        u = min(max(u, lo[row, k]), hi[row, k])
        g += c[row, k] * u
    return g


@njit(cache=True, nogil=True, _nrt=False)
def _solve_rows(ref, lo, hi, dw, c, row, b, out):
    """`solve_halfspace_box` on row `row` of 2-D arrays (allocation-free); writes out[row]."""
    m = ref.shape[1]
    cmax = 0.0
    for k in range(m):
        cmax = max(cmax, abs(c[row, k]))
    for k in range(m):      # float32 grid noise must not pick a corner: |c_k| below 1e-6 max |c| is zero
        if abs(c[row, k]) <= 1e-6 * cmax:
            c[row, k] = 0.0
    g0 = _g_at(0.0, ref, lo, hi, dw, c, row)
    if g0 >= b:
        for k in range(m):
            out[row, k] = min(max(ref[row, k], lo[row, k]), hi[row, k])
        return 0
    gmax = 0.0
    for k in range(m):
        ck = c[row, k]
        if dw[row, k] > 0.0 and ck != 0.0:
            gmax += ck * (hi[row, k] if ck > 0.0 else lo[row, k])
        else:
            gmax += ck * min(max(ref[row, k], lo[row, k]), hi[row, k])
    if gmax < b:
        for k in range(m):
            ck = c[row, k]
            if dw[row, k] > 0.0 and ck != 0.0:
                out[row, k] = hi[row, k] if ck > 0.0 else lo[row, k]
            else:
                out[row, k] = min(max(ref[row, k], lo[row, k]), hi[row, k])
        return 2
    # g(lam) = c . clip(ref + lam dw c) is nondecreasing and piecewise linear with breakpoints where a component
    # meets a bound. Bracket the root between the largest breakpoint with g < b (or 0) and the smallest with
    # g >= b (or the last one): g is linear in between (no sorting, no allocation; at most 2m breakpoints).
    lam_lo = 0.0
    g_lo = g0
    lam_hi = math.inf
    g_hi = math.inf
    for k in range(m):
        s = dw[row, k] * c[row, k]
        if s == 0.0:
            continue
        for side in range(2):
            bound = lo[row, k] if side == 0 else hi[row, k]
            t = (bound - ref[row, k]) / s
            if t > 0.0:
                gt = _g_at(t, ref, lo, hi, dw, c, row)
                if gt >= b:
                    if t < lam_hi:
                        lam_hi = t
                        g_hi = gt
                elif t > lam_lo:
                    lam_lo = t
                    g_lo = gt
    if lam_hi == math.inf:          # numerically at gmax: the largest breakpoint
        lam = lam_lo
    elif g_hi > g_lo:
        lam = lam_lo + (b - g_lo) * (lam_hi - lam_lo) / (g_hi - g_lo)
        lam = min(max(lam, lam_lo), lam_hi)
    else:
        lam = lam_hi
    for k in range(m):
        u = ref[row, k] + lam * dw[row, k] * c[row, k]
        out[row, k] = min(max(u, lo[row, k]), hi[row, k])
    return 1


def solve_halfspace_box(ref, lo, hi, dw, c, b, out) -> int:
    """Exact solution of  min sum_k (u_k - ref_k)^2 / dw_k  s.t.  c . u >= b,  lo <= u <= hi  (1-D arrays).

    dw_k >= 0 are the inverse weights (responsibilities); dw_k = 0 fixes u_k at clip(ref_k). Coefficients with
    |c_k| <= 1e-6 max |c| are set to zero in place (float32 noise of the stored gradient). The minimizer is
    u(lam) = clip(ref + lam dw c, lo, hi) with the smallest lam >= 0 such that c . u(lam) >= b (KKT: the
    multiplier of the one linear constraint; the box is handled by the clip); c . u(lam) is nondecreasing and
    piecewise linear in lam with breakpoints where a component meets a bound, so lam is found exactly on the
    bracketing linear piece. Returns 0 when clip(ref) is feasible (lam = 0), 1 when corrected, 2 when infeasible:
    then out is the most-safe control (argmax of c . u over the box in the free components, clip(ref) in the fixed
    ones).
    """
    ref, lo, hi, dw = (np.asarray(x, dtype=np.float64) for x in (ref, lo, hi, dw))
    m = ref.shape[0] if ref.ndim == 1 else -1
    for name, x in (("ref", ref), ("lo", lo), ("hi", hi), ("dw", dw), ("c", c), ("out", out)):
        if not (isinstance(x, np.ndarray) and x.shape == (m,)):
            raise ValueError(f"{name} must be a 1-D array of the length of ref, got shape {np.shape(x)}")
    for name, x in (("c", c), ("out", out)):     # written in place
        if x.dtype != np.float64 or not x.flags.c_contiguous or not x.flags.writeable:
            raise ValueError(f"{name} must be a writeable C-contiguous float64 array (it is written in place)")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(c)) and math.isfinite(b)):
        raise ValueError("ref, c and b must be finite")
    if np.any(np.isnan(lo) | np.isnan(hi)) or np.any(lo > hi):
        raise ValueError("the box must have lo <= hi")
    if not np.all(dw >= 0) or not np.all(np.isfinite(dw)):
        raise ValueError("dw must be finite and >= 0")
    return int(_solve_one(np.ascontiguousarray(ref), np.ascontiguousarray(lo), np.ascontiguousarray(hi),
                          np.ascontiguousarray(dw), c, float(b), out))


@njit(cache=True, nogil=True)
def _solve_one(ref, lo, hi, dw, c, b, out):
    """`solve_halfspace_box` on checked input."""
    m = ref.shape[0]
    return _solve_rows(ref.reshape((1, m)), lo.reshape((1, m)), hi.reshape((1, m)), dw.reshape((1, m)),
                       c.reshape((1, m)), 0, b, out.reshape((1, m)))


# ------------------------------------------------------------------------------------- grid lower bound
@njit(inline="always")
def _table_cell(S, p, n, lo, inv_dx, npts, periodic, table_strides):
    """(flat index into a `norm_deficit_table` of the cell holding S[p]'s non-position coordinates, status):
    status interp.OK, or the bounds error code of the first non-position coordinate outside the grid."""
    idx = 0
    for q in range(interp.N_POSITION_DIMS, n):
        mq = npts[q]
        u = (S[p, q] - lo[q]) * inv_dx[q]
        if periodic[q]:
            u = interp.wrapped_cells(S[p, q], u, lo[q], inv_dx[q], mq)
            i0 = min(max(int(math.floor(u)), 0), mq - 1)
        else:
            top = mq - 1
            if u < 0.0 or u > top:
                if u < -interp.BOUND_TOL * top or u > top + interp.BOUND_TOL * top:
                    return 0, interp.BOUNDS_BASE + 2 * q
                u = min(max(u, 0.0), float(top))
            i0 = min(int(u), top - 1)
        idx += i0 * table_strides[q]
    return idx, interp.OK


def norm_deficit_table(vf: ValueFunction, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Lower-bound table of the interpolated value: V(s) >= ||p|| - C[cell of s's non-position coordinates].

    C[cell] = max over the cell's corner nodes v (non-position coordinates) of max over the position nodes p of
    ||p|| - V0(p, v), plus a rounding allowance. The multilinear weights reproduce p and the norm is convex, so
    V(s) = sum_c w_c V_c >= sum_c w_c (||p_c|| - C) >= ||p|| - C everywhere in the grid (and V = +inf beyond it):
    a cheap bound used to skip lookups that cannot change the prioritization or the Prop. 1 count. Returns the
    flat table (float64) and its strides per dim (0 for the position dims; cells in the grid's node order, a
    periodic dim has as many cells as nodes).

    block (nodes): the finer table of `_block_cell`, the maximum taken per block of block x block position cells
    instead of over all positions (its nodes: the block's cells' corners), blocks outermost: table[(bx * nby + by)
    * n_cells + cell]; the strides are the same. The deficit ||p|| - V0 depends on where p points relative to the
    velocities, so the bound is tighter by far in most blocks (default quadrotor grid, block 8: a fifth fewer
    prioritization lookups in the dense scenario).
    """
    cache = getattr(vf, "_filter_norm_tables", None)
    if cache is None:
        cache = vf._filter_norm_tables = {}
    if block in cache:
        return cache[block]
    packed, lo, inv_dx, npts, per, _ = vf.kernel_args()
    shape = tuple(int(k) for k in npts)
    v = np.asarray(packed[:, 0], dtype=np.float64).reshape(shape)
    px = lo[0] + np.arange(shape[0]) / inv_dx[0]
    py = lo[1] + np.arange(shape[1]) / inv_dx[1]
    r = np.hypot(px[:, None], py[None, :]).reshape(shape[:2] + (1,) * (v.ndim - 2))
    deficit = r - v
    if block is None:
        c = np.max(deficit, axis=(0, 1))[None] if v.size else np.zeros((1,) + shape[2:])
    else:
        nbx, nby = _n_blocks(shape, block)
        c = np.empty((nbx * nby,) + shape[2:])
        for bx in range(nbx):
            for by in range(nby):
                c[bx * nby + by] = np.max(deficit[bx * block:bx * block + block + 1,
                                                  by * block:by * block + block + 1], axis=(0, 1))
    for ax in range(1, c.ndim):         # node maxima -> cell maxima (max of the two nodes of each cell)
        nxt = np.roll(c, -1, axis=ax)
        if not per[ax + 1]:
            c = np.maximum(c, nxt).take(np.arange(shape[ax + 1] - 1), axis=ax)
        else:
            c = np.maximum(c, nxt)
    scale = 1.0 + float(np.max(np.abs(v))) + float(np.max(r))
    table = np.ascontiguousarray(np.maximum(c, 0.0) + 1e-6 * scale, dtype=np.float64).reshape(-1)
    tstr = np.zeros(v.ndim, dtype=np.int64)
    st = 1
    for ax in range(v.ndim - 1, 1, -1):
        tstr[ax] = st
        st *= c.shape[ax - 1]
    cache[block] = (table, tstr)
    return cache[block]


def _n_blocks(shape, block: int) -> tuple[int, int]:
    """Blocks of `block` position cells per position dim (the last one may be smaller)."""
    return -(-(shape[0] - 1) // block), -(-(shape[1] - 1) // block)


@njit(inline="always")
def _block_cell(S, p, lo, inv_dx, npts, block, nby, n_cells, cell):
    """Flat index into a `norm_deficit_table(block=...)` of S[p], from its non-position `cell` (`_table_cell`):
    positions beyond the grid take the nearest block (V = +inf there, and any C >= 0 keeps the bound below B)."""
    u = (S[p, 0] - lo[0]) * inv_dx[0]
    w = (S[p, 1] - lo[1]) * inv_dx[1]
    cx = int(min(max(u, 0.0), npts[0] - 2.0))     # clamped before the conversion (far states overflow int)
    cy = int(min(max(w, 0.0), npts[1] - 2.0))
    return ((cx // block) * nby + cy // block) * n_cells + cell


def local_rate_table(vf: ValueFunction, model, dt: float, stored_gradient: bool = False) -> np.ndarray:
    """Bound on |dB/dt| (m/s) per cell of the non-position coordinates, over one decision period dt (s).

    Lambda[cell] = sum_i L_i rate_i over the region R(cell) = every position x the cell's non-position node range
    widened by k_j = ceil(rate_j dt / dx_j) nodes per side (rate_j: the model's exact bound over the whole grid, so
    a relative state in the cell stays in R for dt): L_i = max |dV| / dx_i over the grid edges in R (the
    multilinear interpolant's Lipschitz constant there; at least 1 in the position dims, for the ||p|| - d branch
    of B) and rate_i = `model.dissipation_bounds` over R's box. So |B(s(tau)) - B(s_0)| <= Lambda tau for
    tau <= dt, and gamma B_0 >= Lambda proves the sampled-data condition without a prediction. The same sum over
    the whole grid is a single bound for every state; the local one is up to several times smaller where the value
    varies slowly and the relative speed is small (default quadrotor grid: 0.95-7.0 m/s, median 4.4, against
    7.0), which spares most predictions. Flat, in `norm_deficit_table`'s cell layout (its strides index it).

    stored_gradient=True: L_i is also at least max |dV/ds_i| of the stored gradient over R, so the table bounds
    |grad B . s'| with the gradient the filter's linear constraint uses (interpolated stored gradient, or p / ||p||
    on the norm branch) as well: gamma B >= Lambda then proves that every control in the box satisfies the
    constraint (and the sampled-data check), so the pair problem's answer is the clipped nominal action. Both tables
    come from one pass over the cells and are cached together.
    """
    key = (model.name, float(dt))
    cached = getattr(vf, "_filter_rate_tables", {})
    if key in cached:
        return cached[key][int(bool(stored_gradient))]
    packed, lo, inv_dx, npts, per, _ = vf.kernel_args()
    shape = tuple(int(k) for k in npts)
    n = len(shape)
    v = np.asarray(packed[:, 0], dtype=np.float64).reshape(shape)
    glob = model.dissipation_bounds(vf.lo, vf.hi.copy())
    widen = [int(math.ceil(glob[j] * dt * inv_dx[j] - 1e-9)) for j in range(n)]   # (position dims unused)
    # |edge slope| per dim, maxed over the positions: arrays over the non-position nodes (dim i: over its edges);
    # and the same at least the stored gradient's node maxima (max of each edge's two nodes)
    slopes, gslopes = [], []
    for i in range(n):
        e = np.abs(np.diff(v, axis=i))
        if per[i]:
            e = np.concatenate([e, np.abs(np.take(v, [0], axis=i) - np.take(v, [-1], axis=i))], axis=i)
        slopes.append(e.max(axis=(0, 1)) * inv_dx[i])
        gnode = np.abs(np.asarray(packed[:, 1 + i], dtype=np.float64)).reshape(shape).max(axis=(0, 1))
        gedge = np.maximum(gnode, np.roll(gnode, -1, axis=i - 2)) if i >= 2 else gnode
        if i >= 2 and not per[i]:
            gedge = gedge.take(np.arange(shape[i] - 1), axis=i - 2)
        gslopes.append(np.maximum(slopes[i], gedge))
    cshape = tuple(shape[j] if per[j] else shape[j] - 1 for j in range(2, n))
    tables = (np.empty(cshape), np.empty(cshape))
    for cell in np.ndindex(cshape):
        box_lo, box_hi = vf.lo.copy(), vf.hi.copy()
        nodes = []                      # node window per non-position dim
        for c, j in zip(cell, range(2, n)):
            a, b = c - widen[j], c + 1 + widen[j]
            if per[j]:
                b = min(b, a + shape[j] - 1)
                nodes.append(np.arange(a, b + 1) % shape[j])
            else:
                a, b = max(a, 0), min(b, shape[j] - 1)
                nodes.append(np.arange(a, b + 1))
            box_lo[j], box_hi[j] = lo[j] + a / inv_dx[j], lo[j] + b / inv_dx[j]
        rates = model.dissipation_bounds(box_lo, box_hi)
        for table, sl in zip(tables, (slopes, gslopes)):
            lam = 0.0
            for i in range(n):
                # along dim i the edges of the window (all but its last node), in the other dims its nodes
                sel = [w[:-1] if j == i else w for w, j in zip(nodes, range(2, n))]
                L = float(sl[i][np.ix_(*sel)].max()) if all(len(w) for w in sel) else 0.0
                lam += (max(L, 1.0) if i < interp.N_POSITION_DIMS else L) * rates[i]
            table[cell] = lam
    cached[key] = tuple(np.ascontiguousarray(t.reshape(-1)) for t in tables)
    vf._filter_rate_tables = cached
    return cached[key][int(bool(stored_gradient))]


# ------------------------------------------------------------------------------------- per-model kernels
_KERNELS: dict = {}

# The kernels' configuration: three packed grids and three flat arrays, one per type, laid out as below.
# Not a jitclass: numba's dispatcher cannot fingerprint one, so it types it on its fallback path at every call (an
# exception raised and cleared, attribute lookups): ~1 us warm and ~25 us when the caches are cold (a filter called
# once per simulation step), against ~0.1 / ~0.5 us per array argument.
# float64 `fc`: these scalars, then lo and inv_dx (n each) of the grids g (the mode's), w (worst case), c
# (cooperative), then the tables ltab, stab, mtab, wtab, ftab at the offsets ic[_I_TABLES:_I_TABLES + 6] (the end
# last)
_F_SHIFT, _F_D, _F_SHIFT_W, _F_SHIFT_C, _F_RC, _F_OBS, _F_GAMMA, _F_DT, _F_LAM_MAX, _F_WMAX, _F_SKIN = range(11)
_F_GRIDS = 11
# int64 `ic`: n_checks, max_iter, the six table offsets, then npts and strides (n each) of g, w, c, then the
# table strides mtst and wtst (n each), then ftab's block size, blocks in y and cells per block (`_block_cell`)
_I_N_CHECKS, _I_MAX_ITER, _I_TABLES = 0, 1, 2
_I_GRIDS = 8
# ftab: the mode's `norm_deficit_table` per block of this many position cells, the second test of a lookup the
# first (mtab) did not skip
_NORM_BLOCK = 8
_AHEAD = 8         # targets whose nearest neighbour's grid rows are prefetched ahead of the one worked on
# the Verlet list's skin (`clients.neighbors.verlet_neighbor_lists`) as a fraction of the observation range: the
# filter keeps the neighbours within (1 + this) x the range and rebuilds them once an agent moved half the skin (every
# ~6 steps in the dense quadrotor scenario)
_VERLET_SKIN = 0.25
# bool `bc`: these flags, then periodic (n each) of g, w, c
_B_COOPERATIVE, _B_HAS_W, _B_HAS_C, _B_VERTEX_SEARCH, _B_W_SAME = range(5)
_B_GRIDS = 5


def _pack_config(g, w, c, *, cooperative, shift, d, has_w, shift_w, has_c, shift_c, rc, obs_range, gamma, dt,
                 n_checks, max_iter, ltab, lam_max, stab, vertex_search, mtab, mtst, wtab, wtst, wmax, w_same, ftab,
                 fblock):
    """The kernels' configuration (gp, wp, cp, fc, ic, bc) from the grids' `kernel_args` and the settings."""
    tables = [np.asarray(t, dtype=np.float64).reshape(-1) for t in (ltab, stab, mtab, wtab, ftab)]
    head = np.array([shift, d, shift_w, shift_c, rc, obs_range, gamma, dt, lam_max, wmax, _VERLET_SKIN * obs_range],
                    dtype=np.float64)
    fc = np.concatenate([head] + [x[k] for x in (g, w, c) for k in (1, 2)] + tables)
    off = _F_GRIDS + 6 * g[1].shape[0] + np.cumsum([0] + [t.shape[0] for t in tables])
    ic = np.concatenate([[n_checks, max_iter], off] + [x[k] for x in (g, w, c) for k in (3, 5)] + [mtst, wtst, fblock])
    bc = np.concatenate([[cooperative, has_w, has_c, vertex_search, w_same], g[4], w[4], c[4]])
    return (g[0], w[0], c[0], fc, ic.astype(np.int64), bc.astype(np.bool_))


def _build_kernels(model):
    """njit kernels specialised to one model (its numba kernels are closed over as compile-time constants)."""
    rel = model.kernels.relative_state
    aff = model.kernels.affine_terms
    bnd = model.kernels.agent_control_bounds
    rel_into = model.kernels.relative_state_into
    rel_row = model.kernels.relative_state_row
    step_into = model.kernels.step_agents_into
    k_dim = model.n_agent_states
    m = model.n_controls
    n = model.n_states
    n_corner = 1 << m
    OK = interp.OK
    OUTSIDE = interp.OUTSIDE
    interp4 = interp._interp4
    interp5 = interp._interp5
    interp_gen = interp._interp_generic

    @njit(nogil=True, _nrt=False)
    def barrier(gp, glo, ginv, gn, gper, gstr, S, row, shift, d, want_grad, g, isc, wsc):
        """B = min(V(S[row]) - shift, ||p|| - d) and its gradient (into g); returns (B, status)."""
        if n == 4:
            v, st = interp4(gp, glo, ginv, gn, gper, gstr, S, row, shift, want_grad, g)
        elif n == 5:
            v, st = interp5(gp, glo, ginv, gn, gper, gstr, S, row, shift, want_grad, g)
        else:
            v, st = interp_gen(gp, glo, ginv, gn, gper, gstr, S, row, shift, want_grad, g, isc, wsc)
        if st > OUTSIDE:
            return v, st
        dist = math.sqrt(S[row, 0] * S[row, 0] + S[row, 1] * S[row, 1])
        if dist - d < v:
            v = dist - d
            if want_grad:
                for q in range(n):
                    g[q] = 0.0
                if dist > 0.0:
                    g[0] = S[row, 0] / dist
                    g[1] = S[row, 1] / dist
        return v, st

    @njit(nogil=True)
    def workspace(L, cooperative, isc, wsc, g):
        """Scratch of `eval_rows` for up to L rows, allocated once per filter call (a check time of a few rows
        cost about as much in allocations as in lookups)."""
        R = 2 * L * (1 if cooperative else n_corner)
        rows = np.empty((2, L), dtype=np.int64)
        X = np.empty((2, R, k_dim))
        return rows[0], rows[1], np.empty(L), X[0], np.empty((R, m)), X[1], np.empty((R // 2, n)), isc, wsc, g

    @njit(nogil=True)
    def eval_rows(grid, shift, d, XA, XB, Bq, blo, bhi, rows_pair, U, L, cooperative, gamma, dt, n_checks, lam,
                  bound, slack, deficit, ws):
        """Sampled-data check of L candidate actions, batched: row r is U[r] (joint, or the ego's) for pair
        rows_pair[r]. Fills slack[r] = min over check times (and opponent corners) of B(tau) - (1 - gamma tau) B
        and deficit[r] = max of ((1 - gamma tau) B - B(tau)) / tau (>= 0). A row whose slack is < 0 and <= bound
        is settled: it can neither pass nor beat bound, so its later check times are skipped (its slack is then
        an upper bound and its deficit a lower bound; bound = -inf settles only rows that left the grid), and
        the check stops once every row is settled. The end of the period is evaluated first; an earlier check
        time tau is then skipped for a row when its pair's rate bound lam[q] (m/s, `local_rate_table`) already
        proves it from either end, max(B - lam tau, B(dt) - lam (dt - tau)) >= (1 - gamma tau) B: the term is >= 0,
        so slack and deficit only change for rows that pass (slack then an upper bound, still >= 0)."""
        gp, glo, ginv, gn, gper, gstr = grid
        C = 1 if cooperative else n_corner
        # scratch from `workspace`: the rows not settled yet, the live rows evaluated at this check time, B at the
        # end of the period (min over the opponent corners), the agents' states and controls of the predictions, the
        # predicted states and their relative states
        live, ev, bend, Xw, UUw, Xnw, Snw, isc, wsc, g = ws
        n_live = L
        for r in range(L):
            live[r] = r
            slack[r] = math.inf
            deficit[r] = 0.0
            bend[r] = math.inf
        for qi in range(n_checks):
            # the end of the period first: failing rows are most negative there, so most settle after one lookup
            qc = n_checks if qi == 0 else qi
            tau = dt * qc / n_checks
            n_ev = 0
            for h in range(n_live):
                r = live[h]
                b0 = Bq[rows_pair[r]]
                lq = lam[rows_pair[r]]
                if qi > 0 and max(b0 - lq * tau, bend[r] - lq * (dt - tau)) >= (1.0 - gamma * tau) * b0:
                    continue
                ev[n_ev] = r
                n_ev += 1
            if n_ev == 0:
                continue
            R = n_ev * C
            X = Xw[:2 * R]
            UU = UUw[:2 * R]
            for h in range(n_ev):
                r = ev[h]
                q = rows_pair[r]
                for cc in range(C):
                    w = h * C + cc
                    for z in range(k_dim):
                        X[w, z] = XA[q, z]
                        X[R + w, z] = XB[q, z]
                    for z in range(m):
                        UU[w, z] = U[r, z]
                        if cooperative:
                            UU[R + w, z] = U[r, m + z]
                        else:
                            UU[R + w, z] = bhi[q, z] if (cc >> z) & 1 else blo[q, z]
            Xn = Xnw[:2 * R]
            Sn = Snw[:R]
            step_into(X, UU, tau, Xn)
            rel_into(Xn[:R], Xn[R:], Sn)
            for h in range(n_ev):
                r = ev[h]
                target_b = (1.0 - gamma * tau) * Bq[rows_pair[r]]
                for cc in range(C):
                    vb, st = barrier(gp, glo, ginv, gn, gper, gstr, Sn, h * C + cc, shift, d, False, g, isc, wsc)
                    if st > OUTSIDE:        # the prediction left the grid's bounds: never extrapolate
                        slack[r] = -math.inf
                        bend[r] = -math.inf
                        continue
                    if qi == 0:      # B jumps up where a pair leaves the grid: no bound from an end outside it
                        bend[r] = min(bend[r], vb if st == OK else -math.inf)
                    slack[r] = min(slack[r], vb - target_b)
                    deficit[r] = max(deficit[r], (target_b - vb) / tau)
            nn = 0
            for h in range(n_live):
                r = live[h]
                if slack[r] >= 0.0 or slack[r] > bound:     # else settled: can neither pass nor beat bound
                    live[nn] = r
                    nn += 1
            n_live = nn
            if n_live == 0:
                break

    # The two per-entry passes (about 10 entries per agent) are small kernels of their own: inside `core` the same
    # loops, with the entries' states copied out for one batch `relative_state`, cost 3-8 us more per 100-agent call
    # in the simulator loop (measured).
    @njit(nogil=True, _nrt=False)
    def pair_entries(states, targets, indptr, indices, off, S, nb, E_of):
        """Entry p of target t (p in off[t]..off[t + 1]): neighbour nb[p], agent E_of[p], relative state S[p]."""
        for t in range(targets.shape[0]):
            i = targets[t]
            p = off[t]
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                nb[p] = j
                E_of[p] = i
                rel_row(states, i, states, j, S, p)
                p += 1

    @njit(nogil=True, _nrt=False)
    def entry_bounds(S, glo, ginv, gn, gper, mtst, mtab, shift, d, has_w, wlo, winv, wn, wper, wtst, wtab, wmax,
                     shift_w, w_same, dist, lbm, lbw):
        """Per entry: the distance, the lower bounds of the mode's and the worst-case barrier
        (`norm_deficit_table`); checks the grids' non-position bounds. Returns (status, entry) of the first entry
        outside them, (OK, -1) if none."""
        for p in range(S.shape[0]):
            dd = math.sqrt(S[p, 0] * S[p, 0] + S[p, 1] * S[p, 1])
            dist[p] = dd
            idx, code = _table_cell(S, p, n, glo, ginv, gn, gper, mtst)
            if code == OK:
                lbm[p] = min(dd - mtab[idx] - shift, dd - d)
                if has_w:
                    lbw[p] = min(dd - wmax - shift_w, dd - d)    # the table's maximum first
                    if lbw[p] <= 0.0 or not w_same:       # the cell (and the bounds, when the grids' differ)
                        idx, code = _table_cell(S, p, n, wlo, winv, wn, wper, wtst)
                        lbw[p] = min(dd - wtab[idx] - shift_w, dd - d)
            if code != OK:
                return code, p
        return OK, -1

    @njit(nogil=True)
    def core(states, nominal, known, ids, targets, indptr, indices, cooperative, grid, shift, d, has_w, grid_w,
             shift_w, has_c, grid_c, shift_c, rc, resp, resp_uniform, gamma, dt, n_checks, max_iter, ltab, lam_max,
             stab, vertex_search, mtab, mtst, wtab, wtst, wmax, w_same, ftab, fblock, u_out, fo, io, bo):
        """Fills the caller's arrays (see `FilterResult`; an array a kernel returns to Python costs ~1 us of
        boxing, and rows of these are contiguous fields): u_out (T, m) the actions, fo (2, T) pair value and
        margin, io (3, T) partner, status and n in R_c, bo (3, T) conflict-free, changed and intervened. Returns the
        error triple (code, agent, neighbour / column), code -1 if none."""
        N = states.shape[0]
        T = targets.shape[0]
        u_out[:] = 0.0
        fo[:] = 0.0
        io[:] = 0
        bo[:] = False
        pair_value = fo[0]
        margin = fo[1]
        partner = io[0]
        status = io[1]
        n_in_rc = io[2]
        conflict_free = bo[0]
        changed = bo[1]
        intervened = bo[2]
        pair_value[:] = math.inf
        partner[:] = -1
        err = np.full(3, -1, dtype=np.int64)   # (code, agent, neighbour / column) of the first bad input
        gp, glo, ginv, gn, gper, gstr = grid
        wp, wlo, winv, wn, wper, wstr = grid_w
        cp, clo, cinv, cn, cper, cstr = grid_c
        g = np.empty(n)
        isc, wsc = interp.make_scratch(n)
        # ---- relative states of all (target, neighbour) pairs, one batch
        tbuf = np.empty(N + T + 1, dtype=np.int64)
        tgt_of = tbuf[:N]
        off = tbuf[N:]
        tgt_of[:] = -1
        off[0] = 0
        for t in range(T):
            i = targets[t]
            tgt_of[i] = t
            off[t + 1] = off[t] + indptr[i + 1] - indptr[i]
        P = off[T]
        S = np.empty((P, n))
        ibuf = np.empty((2, P), dtype=np.int64)     # one allocation for the per-entry arrays of a type
        nb = ibuf[0]
        E_of = ibuf[1]
        pair_entries(states, targets, indptr, indices, off, S, nb, E_of)
        # ---- distances, lower bounds of the barriers (`norm_deficit_table`) and the grids' non-position bounds
        # (checked here for every pair, so a skipped lookup never hides an invalid state)
        fbuf = np.empty((3, P))
        dist = fbuf[0]
        lbm = fbuf[1]
        lbw = fbuf[2]
        code, p = entry_bounds(S, glo, ginv, gn, gper, mtst, mtab, shift, d, has_w, wlo, winv, wn, wper, wtst, wtab,
                               wmax, shift_w, w_same, dist, lbm, lbw)
        if code != OK:
            err[0] = code
            err[1] = E_of[p]
            err[2] = nb[p]
            return err
        # ---- prioritization, conflict-range counts, Prop. 1
        pbuf = np.empty((5, T), dtype=np.int64)
        pair_t = pbuf[0]
        pa = pbuf[1]
        pb = pbuf[2]
        best_st = pbuf[3]       # status of the partner's lookup (OK: inside the grid)
        nearest = pbuf[4]       # entry of the nearest neighbour (-1: none): always looked up
        for t in range(T):
            near_p = -1
            near_d = math.inf
            cnt = 0
            for p in range(off[t], off[t + 1]):
                dd = dist[p]
                if dd < rc:
                    cnt += 1
                if dd < near_d:
                    near_d = dd
                    near_p = p
            n_in_rc[t] = cnt if rc == rc else -1      # -1: no R_c known
            nearest[t] = near_p
        # the nearest neighbours' lookups are most of the prioritization's; their grid rows are requested
        # _AHEAD targets in advance, so that they arrive while earlier targets are worked on (in a training loop the
        # env's own work evicts them from the caches between steps)
        for t in range(min(_AHEAD, T)):
            if nearest[t] >= 0:
                interp.prefetch_point(gp, glo, ginv, gn, gper, gstr, S, nearest[t])
        for t in range(T):
            if t + _AHEAD < T and nearest[t + _AHEAD] >= 0:
                interp.prefetch_point(gp, glo, ginv, gn, gper, gstr, S, nearest[t + _AHEAD])
            i = targets[t]
            p0 = off[t]
            p1 = off[t + 1]
            near_p = nearest[t]
            best = math.inf
            best_j = -1
            for kk in range(p1 - p0 + 1):       # the nearest neighbour first, then the others
                if kk == 0:
                    p = near_p
                    if p < 0:
                        break
                else:
                    p = p0 + kk - 1
                    if p == near_p:
                        continue
                j = nb[p]
                if lbm[p] > best:      # B_j >= lbm > best: cannot be the minimum
                    continue
                if kk > 0:      # the same test with the block's finer table (kk = 0: best is inf)
                    cell, _ = _table_cell(S, p, n, glo, ginv, gn, gper, mtst)
                    C = ftab[_block_cell(S, p, glo, ginv, gn, fblock[0], fblock[1], fblock[2], cell)]
                    if min(dist[p] - C - shift, dist[p] - d) > best:
                        continue
                v, st = barrier(gp, glo, ginv, gn, gper, gstr, S, p, shift, d, False, g, isc, wsc)
                if st > OUTSIDE:
                    err[0] = st
                    err[1] = i
                    err[2] = j
                    return err
                if v < best or (v == best and best_j >= 0 and j < best_j):
                    best = v
                    best_j = j
                    best_st[t] = st
            pair_value[t] = best
            if best < math.inf:
                partner[t] = best_j
            if has_w:
                n_w = 0
                s_w = -1
                for p in range(p0, p1):
                    if lbw[p] > 0.0:   # B_w >= lbw > 0 without a lookup
                        continue
                    vw, stw = barrier(wp, wlo, winv, wn, wper, wstr, S, p, shift_w, d, False, g, isc, wsc)
                    if stw > OUTSIDE:
                        err[0] = stw
                        err[1] = i
                        err[2] = nb[p]
                        return err
                    if vw < 0.0:
                        n_w += 1
                        s_w = p
                if has_c:
                    if n_w == 0:
                        conflict_free[t] = True
                    elif n_w == 1:
                        vc, stc = barrier(cp, clo, cinv, cn, cper, cstr, S, s_w, shift_c, d, False, g, isc, wsc)
                        conflict_free[t] = stc <= OUTSIDE and vc >= 0.0
        # ---- the pair problems (a mutual cooperative pair is one problem, solved once)
        pair_t[:] = -1
        bk = np.empty(T)        # B(s_ab) if the prioritization looked it up inside the grid in this orientation
        Q = 0
        for t in range(T):
            i = targets[t]
            j = partner[t]
            if j < 0:
                continue
            a = i
            b = j
            if cooperative and ids[j] < ids[i]:
                a = j
                b = i
            if cooperative:
                tj = tgt_of[j]
                if 0 <= tj < t and partner[tj] == i and pair_t[tj] >= 0:
                    qj = pair_t[tj]
                    if pa[qj] == a and pb[qj] == b:
                        pair_t[t] = qj
                        continue
            pa[Q] = a
            pb[Q] = b
            bk[Q] = pair_value[t] if a == i and best_st[t] == OK else math.nan
            pair_t[t] = Q
            Q += 1
        mm = 2 * m if cooperative else m
        XAB = np.empty((2, Q, k_dim))
        XA = XAB[0]
        XB = XAB[1]
        for q in range(Q):
            for z in range(k_dim):
                XA[q, z] = states[pa[q], z]
                XB[q, z] = states[pb[q], z]
        # the pair arrays, one allocation per shape and type (each allocation costs ~30 ns, a tenth of a pair)
        qm = np.empty((8, Q, mm))
        q1 = np.empty((8, Q))
        qi = np.empty((4, Q), dtype=np.int64)
        ubest = qm[0]
        pstatus = qi[0]
        pmargin = q1[0]
        pstatus[:] = 0
        pmargin[:] = 0.0
        alo, ahi = bnd(XA)
        blo, bhi = bnd(XB)
        if Q > 0:
            S2 = rel(XA, XB)
            f, Ga, Gb = aff(S2)
            REF = qm[1]
            LO = qm[2]
            HI = qm[3]
            DW = qm[4]
            CC = qm[5]
            U = qm[6]
            Bq = q1[1]
            lam = q1[2]
            const = q1[3]
            mu = q1[4]
            best_slack = q1[5]
            code = qi[1]
            act = qi[2]
            fail = qi[3]
            code[:] = 0
            mu[:] = 0.0
            best_slack[:] = -math.inf
            na = 0
            nf = 0
            for q in range(Q):
                a = pa[q]
                b = pb[q]
                # gamma B >= the stored-gradient rate bound (`local_rate_table`): every control in the box satisfies
                # the constraint and the check, so the answer is the clipped nominal action (no gradient lookup)
                idx, _ = _table_cell(S2, q, n, glo, ginv, gn, gper, mtst)   # in bounds: checked with the entries
                if gamma * bk[q] >= stab[idx]:
                    for z in range(m):
                        ubest[q, z] = min(max(nominal[a, z] if known[a] else 0.0, alo[q, z]), ahi[q, z])
                        if cooperative:
                            ubest[q, m + z] = min(max(nominal[b, z] if known[b] else 0.0, blo[q, z]), bhi[q, z])
                    pstatus[q] = NOMINAL_SAFE
                    continue
                B, st = barrier(gp, glo, ginv, gn, gper, gstr, S2, q, shift, d, True, g, isc, wsc)
                if st > OUTSIDE:
                    err[0] = st
                    err[1] = a
                    err[2] = b
                    return err
                Bq[q] = B
                gf = 0.0
                for r in range(n):
                    gf += g[r] * f[q, r]
                cst = gf
                ra = 1.0
                rb = 1.0
                if cooperative and not resp_uniform:
                    ra = resp[a]
                    rb = resp[b]
                    if ra + rb <= 0.0:
                        ra = 1.0
                        rb = 1.0
                for z in range(m):
                    ca = 0.0
                    cbz = 0.0
                    for r in range(n):
                        ca += g[r] * Ga[q, r, z]
                        cbz += g[r] * Gb[q, r, z]
                    CC[q, z] = ca
                    REF[q, z] = nominal[a, z] if known[a] else 0.0
                    LO[q, z] = alo[q, z]
                    HI[q, z] = ahi[q, z]
                    DW[q, z] = ra
                    if cooperative:
                        CC[q, m + z] = cbz
                        REF[q, m + z] = nominal[b, z] if known[b] else 0.0
                        LO[q, m + z] = blo[q, z]
                        HI[q, m + z] = bhi[q, z]
                        DW[q, m + z] = rb
                    else:
                        cst += min(cbz * blo[q, z], cbz * bhi[q, z])
                const[q] = cst
                code[q] = _solve_rows(REF, LO, HI, DW, CC, q, -gamma * B - cst, U)
                # a pair outside the grid's positions may enter it (B can drop there): the bound over every cell
                lam[q] = ltab[idx] if st == OK else lam_max
                if B == math.inf or gamma * B >= lam[q]:      # the check cannot fail
                    for z in range(mm):
                        ubest[q, z] = U[q, z]
                    pstatus[q] = NOMINAL_SAFE + code[q]
                else:
                    act[na] = q
                    na += 1
            # ---- sampled-data check, all pending pairs at once per round
            slack = q1[6]
            deficit = q1[7]
            rows_u = qm[7]
            n_comb_max = 1          # the vertex search's candidates: at most 3 levels per component
            for z in range(mm):
                n_comb_max *= 3
            ws = workspace(max(na, n_comb_max if vertex_search else 0), cooperative, isc, wsc, g)
            for it in range(max_iter + 1):
                if na == 0:
                    break
                for r in range(na):
                    for z in range(mm):
                        rows_u[r, z] = U[act[r], z]
                eval_rows(grid, shift, d, XA, XB, Bq, blo, bhi, act, rows_u, na, cooperative, gamma, dt, n_checks,
                          lam, -math.inf, slack, deficit, ws)
                nn = 0
                for r in range(na):
                    q = act[r]
                    if slack[r] > best_slack[q]:
                        best_slack[q] = slack[r]
                        for z in range(mm):
                            ubest[q, z] = U[q, z]
                        pmargin[q] = mu[q]
                    if slack[r] >= 0.0:
                        pstatus[q] = NOMINAL_SAFE + code[q]
                        continue
                    if code[q] == 2 or it == max_iter or not math.isfinite(deficit[r]):
                        fail[nf] = q
                        nf += 1
                        continue
                    mu[q] += 1.25 * deficit[r] + 1e-9 * (1.0 + abs(mu[q]))
                    code[q] = _solve_rows(REF, LO, HI, DW, CC, q, mu[q] - gamma * Bq[q] - const[q], U)
                    act[nn] = q
                    nn += 1
                na = nn
            # ---- vertex search for the pairs no linear candidate could make pass
            if nf > 0 and vertex_search:
                cm = np.empty((2, n_comb_max, mm))
                cand = cm[0]
                cand_s = cm[1]
                c1 = np.empty((3, n_comb_max))
                cost = c1[0]
                vs = c1[1]
                vd = c1[2]
                ci = np.empty(2 * n_comb_max + 2 * mm, dtype=np.int64)
                rows_p = ci[:n_comb_max]
                n_lv = ci[n_comb_max:n_comb_max + mm]
                digit = ci[n_comb_max + mm:n_comb_max + 2 * mm]
                order = ci[n_comb_max + 2 * mm:]
                lv = np.empty((2, mm, 3))
                levels = lv[0]
                lcost = lv[1]       # each level's term of the projection cost
                for h in range(nf):
                    q = fail[h]
                    # the distinct levels of each component, in the order clip(ref), lo, hi (a nominal action at a
                    # bound, or a component with no responsibility, would only repeat a candidate)
                    n_comb = 1
                    for z in range(mm):
                        r_z = min(max(REF[q, z], LO[q, z]), HI[q, z])
                        levels[z, 0] = r_z
                        k = 1
                        if DW[q, z] > 0.0:
                            if LO[q, z] != r_z:
                                levels[z, k] = LO[q, z]
                                k += 1
                            if HI[q, z] != r_z and HI[q, z] != LO[q, z]:
                                levels[z, k] = HI[q, z]
                                k += 1
                        n_lv[z] = k
                        n_comb *= k
                        digit[z] = 0
                        for c in range(k):
                            lcost[z, c] = (levels[z, c] - REF[q, z]) ** 2 / DW[q, z] if DW[q, z] > 0.0 else 0.0
                    # every combination, component 0 fastest (an odometer: integer division per digit cost ~1.5 us
                    # for 81 candidates)
                    for comb in range(n_comb):
                        cst = 0.0
                        for z in range(mm):
                            cand[comb, z] = levels[z, digit[z]]
                            cst += lcost[z, digit[z]]
                        cost[comb] = cst
                        rows_p[comb] = q
                        for z in range(mm):
                            digit[z] += 1
                            if digit[z] < n_lv[z]:
                                break
                            digit[z] = 0
                    # in cost order (stable: equal costs keep the enumeration order), in chunks of doubling size:
                    # the first passing candidate is the cheapest passing one, so the search ends with the chunk
                    # that holds it; only when none passes are all candidates evaluated (for the largest slack)
                    # a stable insertion sort of the candidate indices by cost: at most 81, and no allocation or
                    # compiled mergesort (807 instructions) in the kernel, unlike np.argsort
                    for c in range(n_comb):
                        oc = cost[c]
                        k = c
                        while k > 0 and cost[order[k - 1]] > oc:
                            order[k] = order[k - 1]
                            k -= 1
                        order[k] = c
                    for c in range(n_comb):
                        for z in range(mm):
                            cand_s[c, z] = cand[order[c], z]
                    pick = -1
                    best_c = -1
                    c0 = 0
                    size = 3
                    while c0 < n_comb and pick < 0:
                        c1 = min(c0 + size, n_comb)
                        eval_rows(grid, shift, d, XA, XB, Bq, blo, bhi, rows_p[c0:c1], cand_s[c0:c1], c1 - c0,
                                  cooperative, gamma, dt, n_checks, lam, best_slack[q], vs[c0:c1], vd[c0:c1], ws)
                        for c in range(c0, c1):
                            if vs[c] >= 0.0:
                                pick = c
                                break
                            if vs[c] > best_slack[q]:    # the bound that settles later rows rises with it
                                best_slack[q] = vs[c]
                                best_c = c
                        c0 = c1
                        size *= 2
                    if pick >= 0:
                        pstatus[q] = SEARCHED
                        best_slack[q] = vs[pick]
                    else:                            # the largest slack (linear candidates included)
                        pstatus[q] = BEST_EFFORT
                        pick = best_c
                    if pick >= 0:
                        for z in range(mm):
                            ubest[q, z] = cand_s[pick, z]
            else:
                for h in range(nf):
                    pstatus[fail[h]] = BEST_EFFORT
        # ---- per-agent outputs
        n_free = 0
        for t in range(T):
            if pair_t[t] < 0:
                n_free += 1
        XF = np.empty((n_free, k_dim))
        n_free = 0
        for t in range(T):
            if pair_t[t] < 0:
                for z in range(k_dim):
                    XF[n_free, z] = states[targets[t], z]
                n_free += 1
        flo, fhi = bnd(XF)
        n_free = 0
        for t in range(T):
            i = targets[t]
            q = pair_t[t]
            if q < 0:
                for z in range(m):
                    u_out[t, z] = min(max(nominal[i, z], flo[n_free, z]), fhi[n_free, z])
                n_free += 1
                status[t] = NO_PARTNER
            else:
                o = m if (cooperative and pb[q] == i) else 0
                lo_i = blo[q] if o else alo[q]
                hi_i = bhi[q] if o else ahi[q]
                for z in range(m):
                    u_out[t, z] = ubest[q, o + z]
                    if intervenes(u_out[t, z], nominal[i, z], lo_i[z], hi_i[z]):
                        intervened[t] = True
                status[t] = pstatus[q]
                margin[t] = pmargin[q]
            for z in range(m):
                if abs(u_out[t, z] - nominal[i, z]) > 1e-12 * (1.0 + abs(nominal[i, z])):
                    changed[t] = True
        return err

    @njit(nogil=True)
    def check_inputs(states, nominal, known, err):
        for i in range(states.shape[0]):
            for z in range(k_dim):
                if not math.isfinite(states[i, z]):
                    err[0] = _ERR_STATE
                    err[1] = i
                    err[2] = z
                    return False
            if known[i]:
                for z in range(m):
                    if not math.isfinite(nominal[i, z]):
                        err[0] = _ERR_NOMINAL
                        err[1] = i
                        err[2] = z
                        return False
        return True

    @njit(nogil=True)
    def filter_all(states, nominal, resp, resp_uniform, gp, wp, cp, fc, ic, bc, u_out, fo, io, bo, pairs, vpos,
                   vptr, vidx):
        """All agents: fills u_out, fo, io, bo (as in `core`) and pairs (>= N // 2, 2) with the mutual
        pairs; returns (error code, row, column, number of pairs, Verlet list), code -1 if no error. The Verlet list
        (vpos, vptr, vidx) is `verlet_neighbor_lists`' (positions, indptr, indices), the one returned by the last
        call (or empty arrays)."""
        N = states.shape[0]
        known = np.ones(N, dtype=np.bool_)
        err = np.full(3, -1, dtype=np.int64)
        if not check_inputs(states, nominal, known, err):
            return err[0], err[1], err[2], 0, vpos, vptr, vidx
        pos = np.empty((N, 2))
        for i in range(N):
            pos[i, 0] = states[i, 0]
            pos[i, 1] = states[i, 1]
        indptr, indices, vpos, vptr, vidx = verlet_neighbor_lists(pos, fc[_F_OBS], fc[_F_SKIN], vpos, vptr, vidx)
        ids = np.arange(N)
        err = core_cfg(states, nominal, known, ids, ids, indptr, indices, resp, resp_uniform, gp, wp, cp, fc, ic, bc,
                       u_out, fo, io, bo)
        if err[0] != -1:
            return err[0], err[1], err[2], 0, vpos, vptr, vidx
        partner = io[0]
        K = 0
        for i in range(N):
            j = partner[i]
            if j > i and partner[j] == i:
                pairs[K, 0] = i
                pairs[K, 1] = j
                K += 1
        return err[0], err[1], err[2], K, vpos, vptr, vidx

    @njit(nogil=True)
    def grid_args(packed, fc, ic, bc, k):
        """Grid k (0: the mode's, 1: worst case, 2: cooperative) as `interp`'s (packed, lo, inv_dx, npts,
        periodic, strides), views into the configuration arrays (see `_pack_config`)."""
        f = _F_GRIDS + 2 * k * n
        i = _I_GRIDS + 2 * k * n
        b = _B_GRIDS + k * n
        return packed, fc[f:f + n], fc[f + n:f + 2 * n], ic[i:i + n], bc[b:b + n], ic[i + n:i + 2 * n]

    @njit(nogil=True)
    def core_cfg(states, nominal, known, ids, targets, indptr, indices, resp, resp_uniform, gp, wp, cp, fc, ic, bc,
                 u_out, fo, io, bo):
        """`core` with the configuration unpacked from its arrays (see `_pack_config`)."""
        grid = grid_args(gp, fc, ic, bc, 0)
        grid_w = grid_args(wp, fc, ic, bc, 1)
        grid_c = grid_args(cp, fc, ic, bc, 2)
        i0 = _I_GRIDS
        o = ic[_I_TABLES:_I_TABLES + 6]
        return core(states, nominal, known, ids, targets, indptr, indices, bc[_B_COOPERATIVE], grid, fc[_F_SHIFT],
                    fc[_F_D], bc[_B_HAS_W], grid_w, fc[_F_SHIFT_W], bc[_B_HAS_C], grid_c, fc[_F_SHIFT_C], fc[_F_RC],
                    resp, resp_uniform, fc[_F_GAMMA], fc[_F_DT], ic[_I_N_CHECKS], ic[_I_MAX_ITER], fc[o[0]:o[1]],
                    fc[_F_LAM_MAX], fc[o[1]:o[2]], bc[_B_VERTEX_SEARCH], fc[o[2]:o[3]], ic[i0 + 6 * n:i0 + 7 * n],
                    fc[o[3]:o[4]], ic[i0 + 7 * n:i0 + 8 * n], fc[_F_WMAX], bc[_B_W_SAME], fc[o[4]:o[5]],
                    ic[i0 + 8 * n:i0 + 8 * n + 3], u_out, fo, io, bo)

    @njit(nogil=True)
    def filter_agent(ego, ego_nom, others, others_nom, nb_ids, ego_id, resp, gp, wp, cp, fc, ic, bc, u_out, fo, io,
                     bo):
        """Agent 0 (the ego) against the neighbour rows 1..K within the observation range, for the controller
        loop: fills the caller's arrays for one agent (as in `core`; partner as a neighbour row) and returns the
        error triple (code, row, column), code -1 if none. The neighbours' nominal actions are known when
        others_nom has rows, ids are given when nb_ids has rows, and resp of one entry means equal weights (flags
        from the shapes: each argument of the dispatcher costs ~0.1-0.2 us)."""
        K = others.shape[0]
        has_nom = others_nom.shape[0] > 0
        has_ids = nb_ids.shape[0] > 0
        resp_uniform = resp.shape[0] == 1
        # one allocation per type (each costs ~30 ns, a few % of the call)
        fb = np.zeros((K + 1) * (k_dim + m))
        states = fb[:(K + 1) * k_dim].reshape((K + 1, k_dim))
        nominal = fb[(K + 1) * k_dim:].reshape((K + 1, m))
        known = np.zeros(K + 1, dtype=np.bool_)
        ib = np.zeros(3 * K + 7, dtype=np.int64)
        ids = ib[:K + 1]
        indptr = ib[K + 1:2 * K + 3]
        idx = ib[2 * K + 3:3 * K + 3]
        targets = ib[3 * K + 3:3 * K + 4]
        err = ib[3 * K + 4:]
        for z in range(k_dim):
            states[0, z] = ego[z]
        for z in range(m):
            nominal[0, z] = ego_nom[z]
        known[0] = True
        ids[0] = ego_id if has_ids else 0
        for r in range(K):
            for z in range(k_dim):
                states[r + 1, z] = others[r, z]
            if has_nom:
                for z in range(m):
                    nominal[r + 1, z] = others_nom[r, z]
                known[r + 1] = True
            ids[r + 1] = nb_ids[r] if has_ids else r + 1
        N = K + 1
        err[:] = -1
        if has_ids:     # a shared id would give two agents different views of their pair problem
            for r in range(1, N):
                for q in range(r):
                    if ids[q] == ids[r]:
                        return _ERR_IDS, q, r
        if not check_inputs(states, nominal, known, err):
            return err[0], err[1], err[2]
        r2 = fc[_F_OBS] * fc[_F_OBS]
        cnt = 0
        for j in range(1, N):
            dx = states[j, 0] - states[0, 0]
            dy = states[j, 1] - states[0, 1]
            if dx * dx + dy * dy <= r2:
                idx[cnt] = j
                cnt += 1
        for q in range(1, N + 1):
            indptr[q] = cnt
        err = core_cfg(states, nominal, known, ids, targets, indptr, idx[:cnt], resp, resp_uniform, gp, wp, cp, fc, ic,
                       bc, u_out, fo, io, bo)
        if err[0] == -1:
            io[0, 0] = io[0, 0] - 1 if io[0, 0] >= 1 else -1
        return err[0], err[1], err[2]

    # The two entry points are compiled for these argument types only, and nothing else is compiled later: a
    # read-only or strided input would otherwise compile another specialization, seconds inside a controller loop
    # (the API copies such inputs instead). Grids: packed float32 rows (`interp.pack_grid`); config: `_pack_config`.
    F1, F2 = types.Array(types.float64, 1, "C"), types.Array(types.float64, 2, "C")
    I1, I2 = types.Array(types.int64, 1, "C"), types.Array(types.int64, 2, "C")
    B1, B2 = types.Array(types.boolean, 1, "C"), types.Array(types.boolean, 2, "C")
    P2 = types.Array(types.float32, 2, "C")
    config = (P2, P2, P2, F1, I1, B1)
    outputs = (F2, F2, I2, B2)
    filter_all.compile((F2, F2, F1, types.boolean) + config + outputs + (I2, F2, I1, I1))
    filter_agent.compile((F1, F1, F2, F2, I1, types.int64, F1) + config + outputs)
    filter_all.disable_compile()
    filter_agent.disable_compile()
    return filter_all, filter_agent


def _kernels_for(model):
    if model.name not in _KERNELS:
        _KERNELS[model.name] = _build_kernels(model)
    return _KERNELS[model.name]


# ------------------------------------------------------------------------------------------- public API
class FilterResult:
    """Safe actions and per-agent diagnostics of one `LayeredSafetyFilter.filter` call (N agents).

    actions (N, m): the actions to apply (always inside the state-dependent box).
    partner (N,) int: the prioritized neighbour (-1 if none).
    pair_value (N,): B = min(V, ||p||) - d (m) against the partner (+inf if none), the mode's game (V shifted by
        d and the value margin).
    changed (N,) bool: the applied action differs from the nominal one (clipping to the box counts).
    intervened (N,) bool: the applied action differs from the nominal one clipped to the box (by more than
        INTERVENTION_TOL of the box: clipping alone is no intervention), the filter's intervention flag.
    status (N,) int: see STATUS_NAMES (no_partner, nominal_safe, corrected, most_safe, best_effort, searched).
    margin (N,): the sampled-data margin mu (m/s) the accepted action was computed with.
    collision_pairs (K, 2) int: potential collision pairs (i < j that chose each other).
    n_in_conflict_range (N,) int: other agents closer than R_c(d) (-1 when no R_c is known).
    conflict_free (N,) bool or None: agent i satisfies Prop. 1 (None unless both value functions are given).

    The kernels write the fields into four arrays by type (a field is a contiguous row of one, so reading it costs
    a view, ~0.2 us).
    """

    __slots__ = ("actions", "collision_pairs", "_fo", "_io", "_bo", "_diagnostics")

    def __init__(self, actions: np.ndarray, fo: np.ndarray, io: np.ndarray, bo: np.ndarray,
                 collision_pairs: np.ndarray, diagnostics: bool):
        self.actions = actions  # (N, m)
        self._fo = fo           # (2, N): pair value, margin
        self._io = io           # (3, N): partner, status, n in R_c
        self._bo = bo           # (3, N): conflict-free, changed, intervened
        self.collision_pairs = collision_pairs
        self._diagnostics = diagnostics

    @property
    def pair_value(self) -> np.ndarray:
        return self._fo[0]

    @property
    def margin(self) -> np.ndarray:
        return self._fo[1]

    @property
    def partner(self) -> np.ndarray:
        return self._io[0]

    @property
    def status(self) -> np.ndarray:
        return self._io[1]

    @property
    def n_in_conflict_range(self) -> np.ndarray:
        return self._io[2]

    @property
    def conflict_free(self) -> Optional[np.ndarray]:
        return self._bo[0] if self._diagnostics else None

    @property
    def changed(self) -> np.ndarray:
        return self._bo[1]

    @property
    def intervened(self) -> np.ndarray:
        return self._bo[2]

    def diagnostics(self) -> dict:
        """Every field but `actions` by name (`conflict_free` only when computed), e.g. for an info dictionary."""
        fo, io, bo = self._fo, self._io, self._bo
        diag = {"partner": io[0], "pair_value": fo[0], "changed": bo[1], "intervened": bo[2], "status": io[1],
                "margin": fo[1], "n_in_conflict_range": io[2], "collision_pairs": self.collision_pairs}
        if self._diagnostics:
            diag["conflict_free"] = bo[0]
        return diag

    def __repr__(self) -> str:
        return (f"FilterResult(actions={self.actions!r}, partner={self.partner!r}, status={self.status!r}, "
                f"pair_value={self.pair_value!r})")


_NO_PAIRS = np.empty((0, 2), dtype=np.int64)
_NO_PAIRS.flags.writeable = False


class LayeredSafetyFilter:
    """Pairwise HJ safety filter over many agents (see the module docstring for the method and guarantee).

    Parameters: model (name or reach Model); cooperative, worst_case: `ValueFunction`s (the mode's one is
    required; both enable the Prop. 1 diagnostics); safety_distance d (m, default the model's); mode
    'cooperative' | 'worst_case'; responsibility: scalar or (N,) per-agent weights >= 0 (scalar = equal split);
    gamma_cbf (1/s, default 0.5 / decision_period, needs gamma_cbf * dt <= 1); decision_period dt (s, default
    the model's); observation_range (m, default the model's); n_checks (sampled-data check times per period);
    max_iter (margin refinements); conflict_range (m, default R_c(d) from the stored table); value_margin (m,
    subtracted from the interpolated value of the mode's game to absorb the grid's error; default the solver's
    validation margin plus measured closed-loop shortfall, attrs.validation.margin +
    max(0, -attrs.validation.worst_separation_excess), else 0); vertex_search:
    when no linear candidate passes the sampled-data check, try every combination of {lo, clip(nominal), hi}
    per control component (at most 3^(2m) distinct joint candidates) and keep the cheapest passing one, else the
    one with the largest slack. The settings are read at every call: an attribute assigned later takes effect at the
    next call, which checks it like the constructor argument (ValueError) and re-derives the defaults that depend
    on it (R_c after d, gamma_cbf after dt, the value margin after mode; None restores a default).
    The first filter of a model in a process compiles its kernels (about 20 s on a 2-core host), so that no
    call of `filter` or `filter_agent` compiles anything later (a stall in a controller loop).
    `filter` keeps its neighbour search between calls (a Verlet list, `clients.neighbors.verlet_neighbor_lists`,
    rebuilt once an agent has moved an eighth of the observation range): the results are those of a fresh
    search, for any sequence of calls.
    """

    def __init__(self, model, cooperative: ValueFunction | None = None, worst_case: ValueFunction | None = None,
                 safety_distance: float | None = None, mode: str = "cooperative", responsibility=0.5,
                 gamma_cbf: float | None = None, decision_period: float | None = None,
                 observation_range: float | None = None, n_checks: int = 4, max_iter: int = 4,
                 conflict_range: float | None = None, value_margin: float | None = None,
                 vertex_search: bool = True):
        from reach.models import get_model
        object.__setattr__(self, "_auto", set())     # the settings left to their defaults (they follow the others)
        object.__setattr__(self, "_cfg", None)
        self._verlet = NO_VERLET       # `filter`'s neighbour search of the last call (see `filter_all`)
        self.model = get_model(model) if isinstance(model, str) else model
        self.mode = mode
        self.cooperative_vf = cooperative
        self.worst_case_vf = worst_case
        self.safety_distance = safety_distance
        self.decision_period = decision_period
        self.gamma_cbf = gamma_cbf
        self.observation_range = observation_range
        self.n_checks = n_checks
        self.max_iter = max_iter
        self.value_margin = value_margin
        self.vertex_search = vertex_search
        self.conflict_range = conflict_range
        self.responsibility = responsibility            # checked by __setattr__
        self._filter_all, self._filter_agent = _kernels_for(self.model)
        self._k, self._m = self.model.n_agent_states, self.model.n_controls
        self._settle()

    def _settle(self) -> None:
        """Check the settings and derive the defaulted ones (run at construction and, after an assignment, at the
        next call: a setting assigned later is checked like a constructor argument, and the defaults follow the
        others, e.g. R_c(d) after d changed)."""
        put = functools.partial(object.__setattr__, self)
        if self.mode not in ("cooperative", "worst_case"):
            raise ValueError(f"mode must be 'cooperative' or 'worst_case', got {self.mode!r}")
        for label, vf in (("cooperative", self.cooperative_vf), ("worst_case", self.worst_case_vf)):
            if vf is None:
                continue
            if not isinstance(vf, ValueFunction):
                raise TypeError(f"{label} must be a clients.ValueFunction, got {type(vf).__name__}")
            if vf.model.name != self.model.name:
                raise ValueError(f"{label} value function is for model {vf.model.name}, not {self.model.name}")
            if vf.game != label:
                raise ValueError(f"the {label} argument holds a {vf.game} value function ({vf.name})")
        vf = self.cooperative_vf if self.mode == "cooperative" else self.worst_case_vf
        if vf is None:
            raise ValueError(f"mode {self.mode!r} needs the {self.mode} value function")
        put("vf", vf)
        put("safety_distance", vf.effective_safety_distance(self.safety_distance))
        dt = self.model.decision_period if self.decision_period is None else self.decision_period
        if not (_is_real(dt) and dt > 0 and math.isfinite(dt)):
            raise ValueError(f"decision_period must be finite and > 0, got {self.decision_period}")
        put("decision_period", float(dt))
        gamma = 0.5 / self.decision_period if "gamma_cbf" in self._auto else self.gamma_cbf
        if not (_is_real(gamma) and gamma >= 0 and gamma * self.decision_period <= 1.0 + 1e-12):
            raise ValueError(f"gamma_cbf must be in [0, 1/decision_period] = [0, {1 / self.decision_period}], "
                             f"got {gamma}")
        put("gamma_cbf", float(gamma))
        obs = self.model.observation_range if self.observation_range is None else self.observation_range
        if not (_is_real(obs) and obs > 0 and math.isfinite(obs)):
            raise ValueError(f"observation_range must be finite and > 0, got {self.observation_range}")
        put("observation_range", float(obs))
        if not (_is_int(self.n_checks) and _is_int(self.max_iter) and self.n_checks >= 1 and self.max_iter >= 0):
            raise ValueError(f"n_checks must be an integer >= 1 and max_iter an integer >= 0, got {self.n_checks} "
                             f"and {self.max_iter}")
        put("n_checks", int(self.n_checks))
        put("max_iter", int(self.max_iter))
        margin = self.value_margin
        if "value_margin" in self._auto:
            validation = vf.attrs.get("validation") or {}
            excess = validation.get("worst_separation_excess")
            margin = (float(validation.get("margin") or 0.0) + max(0.0, -float(excess))
                      if excess is not None else 0.0)
        if not (_is_real(margin) and margin >= 0 and math.isfinite(margin)):
            raise ValueError(f"value_margin must be finite and >= 0, got {margin}")
        put("value_margin", float(margin))
        put("vertex_search", bool(self.vertex_search))
        rc = self.conflict_range
        if "conflict_range" in self._auto:
            rc = math.nan
            for w in (self.worst_case_vf, self.cooperative_vf):
                if w is not None and w._conflict_d is not None:
                    rc = w.conflict_range(self.safety_distance if w.safety_distance is None else w.safety_distance)
                    break
        elif not (_is_real(rc) and rc > 0):
            raise ValueError(f"conflict_range must be > 0, got {rc}")
        put("conflict_range", float(rc))

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_responsibility(resp, n):
        r = np.asarray(resp, dtype=np.float64)
        if r.ndim == 0:
            if not (math.isfinite(float(r)) and float(r) > 0):
                raise ValueError(f"responsibility must be > 0, got {resp}")
            return np.full(n if n is not None else 1, float(r))
        if n is not None and r.shape != (n,):
            raise ValueError(f"responsibility must be a scalar or shape ({n},), got {r.shape}")
        if not np.all(np.isfinite(r)) or np.any(r < 0):
            raise ValueError("responsibility weights must be finite and >= 0")
        return np.ascontiguousarray(r)

    _ONE = np.ones(1)
    _NO_NOMINAL = np.zeros((0, 1))
    _NO_IDS = np.zeros(0, dtype=np.int64)

    def _resp(self, n):
        """(weights array, uniform flag) for n agents."""
        if self._resp_scalar:
            return self._ONE, True
        return self._check_responsibility(self.responsibility, n), False

    # the settings `_config` reads: assigning one drops the cached config (checking them at every call cost ~0.4 us)
    _CONFIG_ATTRS = frozenset({"safety_distance", "value_margin", "mode", "gamma_cbf", "decision_period",
                               "observation_range", "n_checks", "max_iter", "vertex_search", "conflict_range", "vf",
                               "worst_case_vf", "cooperative_vf"})

    # the settings that default to a function of the others when given as None
    _DERIVED = frozenset({"gamma_cbf", "value_margin", "conflict_range"})

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if name in self._CONFIG_ATTRS:
            object.__setattr__(self, "_cfg", None)
            if name in self._DERIVED:
                (self._auto.add if value is None else self._auto.discard)(name)
        elif name == "responsibility":      # a scalar is checked here once; an array at every call (N must match)
            scalar = np.ndim(value) == 0
            if scalar:
                self._check_responsibility(value, None)
            object.__setattr__(self, "_resp_scalar", scalar)

    def _config(self) -> tuple:
        """The kernels' configuration arrays (`_pack_config`; cached, rebuilt after a setting it depends on was
        assigned)."""
        if self._cfg is not None:
            return self._cfg
        self._settle()
        vf = self.vf
        g = vf.kernel_args()
        shift = vf.shift(self.safety_distance if vf.safety_distance is None else None) + self.value_margin
        w, c = self.worst_case_vf, self.cooperative_vf
        has_w = w is not None
        has_c = c is not None
        sw = w.shift(self.safety_distance if w.safety_distance is None else None) if has_w else 0.0
        sc = c.shift(self.safety_distance if c.safety_distance is None else None) if has_c else 0.0
        ctab, cstr = norm_deficit_table(vf)
        ftab, _ = norm_deficit_table(vf, _NORM_BLOCK)
        ltab = local_rate_table(vf, self.model, self.decision_period)
        # the skip bound, with an allowance for the solver's zeroing of tiny coefficients and rounding
        stab = local_rate_table(vf, self.model, self.decision_period, stored_gradient=True) * (1 + 1e-4) + 1e-9
        wtab, wstr = norm_deficit_table(w) if has_w else (ctab, cstr)
        # the worst-case grid's bounds need no check of their own when they hold the mode's grid's
        w_same = has_w and bool(np.all((w.lo[2:] <= vf.lo[2:]) & (w.hi[2:] >= vf.hi[2:])
                                       | w.kernel_args()[4][2:]))
        cfg = _pack_config(g, w.kernel_args() if has_w else g, c.kernel_args() if has_c else g,
                           cooperative=self.mode == "cooperative", shift=shift, d=self.safety_distance, has_w=has_w,
                           shift_w=sw, has_c=has_c, shift_c=sc, rc=self.conflict_range, obs_range=self.observation_range,
                           gamma=self.gamma_cbf, dt=self.decision_period, n_checks=self.n_checks,
                           max_iter=self.max_iter, ltab=ltab, lam_max=np.max(ltab), stab=stab,
                           vertex_search=bool(self.vertex_search), mtab=ctab, mtst=cstr, wtab=wtab, wtst=wstr,
                           wmax=np.max(wtab), w_same=w_same, ftab=ftab,
                           fblock=np.array([_NORM_BLOCK, _n_blocks(vf.shape, _NORM_BLOCK)[1], ctab.shape[0]]))
        self._diagnostics = has_w and has_c     # Prop. 1
        self._cfg = cfg
        self._verlet = NO_VERLET       # built for the old observation range
        return cfg

    @staticmethod
    def _agent_array(x, width, name, n=None):
        a = _f64(x)
        if a.ndim != 2 or a.shape[1] != width or (n is not None and a.shape[0] != n):
            want = f"({n if n is not None else 'N'}, {width})"
            raise StateError(f"{name} must have shape {want}, got {np.shape(x)}")
        return a if a.flags.c_contiguous else np.ascontiguousarray(a)

    def _raise(self, err, states_name="states", nominal_name="nominal_actions"):
        code = int(err[0])
        if code == _ERR_STATE:
            raise StateError(f"{states_name}[{int(err[1])}, {int(err[2])}] is NaN or infinite")
        if code == _ERR_NOMINAL:
            raise StateError(f"{nominal_name}[{int(err[1])}, {int(err[2])}] is NaN or infinite")
        if code == _ERR_IDS:
            raise StateError(f"ego_id and neighbor_ids must be distinct: rows {int(err[1])} and {int(err[2])} (ego 0, "
                             "neighbours 1..K) have the same id")
        kind, dim = interp.decode_status(code, self.vf.state_names)
        raise StateError(f"relative state of agent {int(err[2])} seen from agent {int(err[1])}: "
                         f"{self.vf.state_names[dim]} is {'NaN' if kind == 'nan' else 'outside the grid bounds'} "
                         f"of the value functions ({self.vf.name})")

    # ------------------------------------------------------------------ API
    def filter(self, states, nominal_actions) -> FilterResult:
        """Filter all agents at once: states (N, k) world-frame, nominal_actions (N, m) -> FilterResult."""
        k, m = self._k, self._m
        x = self._agent_array(states, k, "states")
        n = x.shape[0]
        u = self._agent_array(nominal_actions, m, "nominal_actions", n)
        resp, uniform = self._resp(n)
        cfg = self._config()
        out = self._outputs(n)
        pairs = np.empty((n // 2, 2), dtype=np.int64)
        try:
            err = self._filter_all(x, u, resp, uniform, *cfg, *out, pairs, *self._verlet)
        except TypeError:       # read-only inputs: not the compiled types
            x, u, resp = _compiled_layout(x, u, resp)
            err = self._filter_all(x, u, resp, uniform, *cfg, *out, pairs, *self._verlet)
        self._verlet = err[4:]      # a new tuple of arrays never written again: calls from threads stay correct
        if err[0] != -1:
            self._raise(err)
        return FilterResult(*out, pairs[:err[3]], self._diagnostics)

    def _outputs(self, n):
        """The kernels' output arrays for n agents (`FilterResult`)."""
        return (np.empty((n, self._m)), np.empty((2, n)), np.empty((3, n), dtype=np.int64),
                np.empty((3, n), dtype=np.bool_))

    def filter_agent(self, ego_state, ego_nominal, neighbor_states, neighbor_nominal=None, ego_id: int = 0,
                     neighbor_ids=None, out: FilterResult | None = None) -> FilterResult:
        """One agent from a controller loop: ego_state (k,), ego_nominal (m,), neighbor_states (K, k).

        neighbor_nominal (K, m) when known; otherwise the neighbours are assumed to hold zero control (see the
        module docstring). ego_id / neighbor_ids (both, or neither) order the cooperative pair problem (the
        smaller id is agent a); by default the ego is 0 and the neighbours 1..K. Returns a FilterResult of one
        row (partner indexes the neighbour rows; collision_pairs is empty: mutual choice needs the neighbours'
        own choices). out: a FilterResult of an earlier `filter_agent` call of this filter to write into and
        return instead of a new one (a loop that keeps no old results saves its allocation, ~1.5 us; the old
        values are overwritten, and after an error its contents are undefined). Input rows are numbered ego = 0,
        neighbours 1..K in error messages.
        """
        k, m = self._k, self._m
        ego, others, en = _f64(ego_state), _f64(neighbor_states), _f64(ego_nominal)
        if others.ndim != 2 and others.size == 0:
            others = others.reshape(0, k)
        if ego.shape != (k,) or others.ndim != 2 or others.shape[1] != k:
            raise StateError(f"ego_state must have shape ({k},) and neighbor_states (K, {k}); got "
                             f"{np.shape(ego_state)} and {np.shape(neighbor_states)}")
        kk = others.shape[0]
        if en.shape != (m,):
            if en.size != m:
                raise StateError(f"ego_nominal must have shape ({m},), got {np.shape(ego_nominal)}")
            en = en.reshape(m)
        if neighbor_nominal is None:
            nn = self._NO_NOMINAL
        else:
            nn = _f64(neighbor_nominal)
            if nn.shape != (kk, m):
                if nn.size != kk * m:
                    raise StateError(f"neighbor_nominal must have shape ({kk}, {m}), got {np.shape(neighbor_nominal)}")
                nn = nn.reshape(kk, m)
        if neighbor_ids is None:
            nid = self._NO_IDS
        else:
            nid = np.asarray(neighbor_ids)
            if nid.size != kk:
                raise StateError(f"neighbor_ids must have one id per neighbour ({kk}), got shape {nid.shape}")
            if nid.dtype.kind not in "iu" and nid.size:
                raise StateError(f"neighbor_ids must be integers, got dtype {nid.dtype}")
            nid = nid.astype(np.int64, copy=False).reshape(kk)
        if not (type(ego_id) is int or _is_int(ego_id)) or not -2**63 <= ego_id < 2**63:
            raise StateError(f"ego_id must be a 64-bit integer, got {ego_id!r}")
        resp = self._resp(kk + 1)[0]
        cfg = self._config()
        if out is None:
            out = FilterResult(*self._outputs(1), _NO_PAIRS, self._diagnostics)
        elif not (isinstance(out, FilterResult) and out.actions.shape == (1, m) and out._fo.shape == (2, 1)):
            raise ValueError("out must be the FilterResult of an earlier filter_agent call of this filter")
        else:
            out._diagnostics = self._diagnostics
        try:
            err = self._filter_agent(ego, en, others, nn, nid, ego_id, resp, *cfg, out.actions, out._fo, out._io,
                                     out._bo)
        except TypeError:       # read-only or strided inputs: not the compiled types
            ego, en, others, nn, nid, resp = _compiled_layout(ego, en, others, nn, nid, resp)
            err = self._filter_agent(ego, en, others, nn, nid, ego_id, resp, *cfg, out.actions, out._fo, out._io,
                                     out._bo)
        if err[0] != -1:
            self._raise(err, nominal_name="nominal (ego 0, neighbours 1..K)")
        return out


_F64 = np.dtype(np.float64)


def _is_real(x) -> bool:
    """A real number (not a bool, string or array)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _compiled_layout(*arrays) -> tuple:
    """The arrays as the kernels' compiled argument types take them (`reach.models.base.kernel_layout`)."""
    return tuple(kernel_layout(a) for a in arrays)


def _f64(x) -> np.ndarray:
    """x as a float64 array (no call when it is one already: the controller loop's common case)."""
    if type(x) is np.ndarray and x.dtype is _F64:
        return x
    return real_array(x, "states and actions")
