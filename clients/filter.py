"""The layered multi-agent safety filter (paper eq. 12 with the runtime logic of the reference note).

For every agent i, over all agents at once:

1. neighbours within the model's observation range (cell list, `clients.neighbors`);
2. prioritization: the pairwise barrier B(s_ij) = min(V(s_ij), ||p_ij||) - d of every neighbour (V from the
   mode's value function; V0 <= ||p|| holds for the true value, so taking the minimum only removes
   interpolation error); the neighbour with the minimum B is the partner j*, mutual choices are the potential
   collision pairs;
3. the filter: one linear CBF constraint in the pair's control,
       grad B(s) . (f(s) + G_a u_a + G_b u_b) + gamma_cbf B(s) >= mu,
   with the state-dependent box bounds of the model, solved exactly (`solve_halfspace_box`);
4. the sampled-data check (below), then agent i applies its own part.

Modes. cooperative: joint control (u_a, u_b) of the pair; agent a is the one with the smaller id, so both agents
of a pair build the identical problem from identical data and each applies its part. The weights of the
projection are the agents' responsibilities r (the correction of agent k is proportional to r_k; default equal).
The partner's nominal action is used when known; when it is unknown (the single-agent call without
`neighbor_nominal`) the partner is assumed to hold zero control (constant velocity / heading and speed), and
the pair solution's partner part is what the prediction assumes the partner applies (true when the partner runs
this same program with the same data). worst_case: the ego's control only, the other's control at the corner of
its box that minimizes the left side.

Infeasible box: when no control in the box satisfies the linear constraint, the most-safe control (the box
corner maximizing the left side, i.e. the HJ optimal control of the pair game) is applied.

Sampled-data margin (actions are held for the decision period dt). With the action u held, Taylor's theorem along
the exact trajectory gives B(s(tau)) = B_k + tau * dB/dt(s_k, u) + R(tau). If the linear constraint holds with
margin mu >= max_tau (-R(tau)) / tau, then B(s(tau)) >= (1 - gamma_cbf tau) B_k >= 0 for every checked tau in
(0, dt] whenever B_k >= 0 (gamma_cbf dt <= 1 is enforced). Instead of a global Lipschitz bound on R (which the
kinks of HJ value functions make very conservative) the remainder is measured exactly: the candidate action is
integrated with the model's `step_agents` (exact) to the check times tau_q = q dt / n_checks, and mu is raised by
the measured deficit until the discrete condition B(s(tau_q)) >= (1 - gamma_cbf tau_q) B_k holds at every check
time (at most `max_iter` rounds; the best candidate by the discrete condition is kept otherwise, flagged). The
check is skipped when it cannot fail: B changes at most Lambda tau over tau, where Lambda = sum_i L_i rate_i from
the grid's Lipschitz constants L_i and the model's exact rate bounds (`dissipation_bounds`), so
gamma_cbf B_k >= Lambda implies the condition for every tau. Assumptions: the pair's prediction is exact
(cooperative: the partner applies its part of the same pair solution; worst_case: the checks run against every
corner of the opponent's box, which includes the HJ worst-case opponent, so they are exact against bang-bang
opponents held for the period); separation between check times is not checked (n_checks sets their density).
See docs/filter.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from numba import njit

from clients import interp
from clients.neighbors import neighbor_lists
from clients.value_function import StateError, ValueFunction

# per-agent status codes
NO_PARTNER = 0      # no neighbour with a finite value: nominal action (clipped to the box) applied
NOMINAL_SAFE = 1    # the (clipped) nominal action satisfies the constraint and the sampled-data check
CORRECTED = 2       # the nominal action was projected onto the constraint
MOST_SAFE = 3       # the box cannot satisfy the linear constraint: the most-safe (HJ optimal) control
BEST_EFFORT = 4     # no candidate passed the sampled-data check: the candidate with the largest slack applied
SEARCHED = 5        # the linear refinements failed the check; a box-vertex candidate passed it

STATUS_NAMES = {NO_PARTNER: "no_partner", NOMINAL_SAFE: "nominal_safe", CORRECTED: "corrected",
                MOST_SAFE: "most_safe", BEST_EFFORT: "best_effort", SEARCHED: "searched"}


# ------------------------------------------------------------------------------------------ closed-form QP
@njit(cache=True, nogil=True)
def _g_at(lam, ref, lo, hi, dw, c):
    g = 0.0
    for k in range(ref.shape[0]):
        u = ref[k] + lam * dw[k] * c[k]
        u = min(max(u, lo[k]), hi[k])
        g += c[k] * u
    return g


@njit(cache=True, nogil=True)
def solve_halfspace_box(ref, lo, hi, dw, c, b, out):
    """Exact solution of  min sum_k (u_k - ref_k)^2 / dw_k  s.t.  c . u >= b,  lo <= u <= hi.

    dw_k >= 0 are the inverse weights (responsibilities); dw_k = 0 fixes u_k at clip(ref_k). Coefficients with
    |c_k| <= 1e-6 max |c| are set to zero in place (float32 noise of the stored gradient). The minimizer is
    u(lam) = clip(ref + lam dw c, lo, hi) with the smallest lam >= 0 such that c . u(lam) >= b; c . u(lam) is
    nondecreasing and piecewise linear in lam with breakpoints where a component meets a bound, so lam is found
    exactly by sorting the (at most 2 m) breakpoints and solving on the bracketing linear piece.
    Returns 0 when clip(ref) is feasible (lam = 0), 1 when corrected, 2 when infeasible: then out is the
    most-safe control (argmax of c . u over the box in the free components, clip(ref) in the fixed ones).
    """
    m = ref.shape[0]
    cmax = 0.0
    for k in range(m):
        cmax = max(cmax, abs(c[k]))
    for k in range(m):      # float32 grid noise must not pick a corner: |c_k| below 1e-6 max |c| is zero
        if abs(c[k]) <= 1e-6 * cmax:
            c[k] = 0.0
    g0 = _g_at(0.0, ref, lo, hi, dw, c)
    if g0 >= b:
        for k in range(m):
            out[k] = min(max(ref[k], lo[k]), hi[k])
        return 0
    gmax = 0.0
    for k in range(m):
        if dw[k] > 0.0 and c[k] != 0.0:
            gmax += c[k] * (hi[k] if c[k] > 0.0 else lo[k])
        else:
            gmax += c[k] * min(max(ref[k], lo[k]), hi[k])
    if gmax < b:
        for k in range(m):
            if dw[k] > 0.0 and c[k] != 0.0:
                out[k] = hi[k] if c[k] > 0.0 else lo[k]
            else:
                out[k] = min(max(ref[k], lo[k]), hi[k])
        return 2
    # breakpoints lam > 0 where ref_k + lam dw_k c_k crosses lo_k or hi_k
    bp = np.empty(2 * m + 1)
    nb = 0
    for k in range(m):
        s = dw[k] * c[k]
        if s != 0.0:
            for bound in (lo[k], hi[k]):
                t = (bound - ref[k]) / s
                if t > 0.0:
                    bp[nb] = t
                    nb += 1
    bps = np.sort(bp[:nb])
    lam_prev = 0.0
    g_prev = g0
    lam = -1.0
    for q in range(nb):
        lam_q = bps[q]
        g_q = _g_at(lam_q, ref, lo, hi, dw, c)
        if g_q >= b:
            if g_q > g_prev:
                lam = lam_prev + (b - g_prev) * (lam_q - lam_prev) / (g_q - g_prev)
            else:
                lam = lam_q
            break
        lam_prev = lam_q
        g_prev = g_q
    if lam < 0.0:  # numerically at gmax: the last breakpoint
        lam = bps[nb - 1] if nb > 0 else 0.0
    for k in range(m):
        u = ref[k] + lam * dw[k] * c[k]
        out[k] = min(max(u, lo[k]), hi[k])
    return 1


# ------------------------------------------------------------------------------------- per-model kernels
_KERNELS: dict = {}


def _build_kernels(model):
    """njit kernels specialised to one model (its numba kernels are closed over as compile-time constants)."""
    rel = model.kernels.relative_state
    aff = model.kernels.affine_terms
    bnd = model.kernels.agent_control_bounds
    step = model.kernels.step_agents
    k_dim = model.n_agent_states
    m = model.n_controls
    n = model.n_states
    interp_point = interp.interp_point

    @njit(nogil=True, inline="always")
    def barrier(packed, lo, inv_dx, npts, per, strides, S, row, shift, d, want_grad, g, isc, wsc):
        """B = min(V(S[row]) - shift, ||p|| - d) and its gradient (into g); returns (B, status)."""
        v, st = interp_point(packed, lo, inv_dx, npts, per, strides, S, row, shift, want_grad, g, isc, wsc)
        if st > interp.OUTSIDE:
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

    @njit(nogil=True, inline="always")
    def predict_barrier(gp, glo, ginv, gn, gper, gstr, shift, d, xa, xb, ua, ub, tau, work_x, work_u, isc, wsc,
                        g):
        """B at the relative state after holding ua (agent a) and ub (agent b) for tau."""
        for q in range(k_dim):
            work_x[0, q] = xa[q]
            work_x[1, q] = xb[q]
        for q in range(m):
            work_u[0, q] = ua[q]
            work_u[1, q] = ub[q]
        nxt = step(work_x, work_u, tau)
        s = rel(nxt[0:1], nxt[1:2])
        v, st = barrier(gp, glo, ginv, gn, gper, gstr, s, 0, shift, d, False, g, isc, wsc)
        return v

    @njit(nogil=True, inline="always")
    def check_slack(gp, glo, ginv, gn, gper, gstr, shift, d, pair, u, cooperative, plo, phi, B, gamma, dt,
                    n_checks, ua, ub, work_x, work_u, isc, wsc, g):
        """Sampled-data check of the pair action u (joint, or the ego's in worst_case mode) by exact prediction:
        returns (slack, deficit) = (min over check times (and opponent corners) of B(tau) - (1 - gamma tau) B,
        max of the deficit rate ((1 - gamma tau) B - B(tau)) / tau, >= 0)."""
        for q in range(m):
            ua[q] = u[q]
            if cooperative:
                ub[q] = u[m + q]
        slack = math.inf
        deficit = 0.0
        n_corner = 1 << m
        for qc in range(1, n_checks + 1):
            tau = dt * qc / n_checks
            target_b = (1.0 - gamma * tau) * B
            if cooperative:
                vb = predict_barrier(gp, glo, ginv, gn, gper, gstr, shift, d, pair[0], pair[1], ua, ub, tau,
                                     work_x, work_u, isc, wsc, g)
                slack = min(slack, vb - target_b)
                deficit = max(deficit, (target_b - vb) / tau)
            else:
                for corner in range(n_corner):
                    for q in range(m):
                        ub[q] = phi[1, q] if (corner >> q) & 1 else plo[1, q]
                    vb = predict_barrier(gp, glo, ginv, gn, gper, gstr, shift, d, pair[0], pair[1], ua, ub, tau,
                                         work_x, work_u, isc, wsc, g)
                    slack = min(slack, vb - target_b)
                    deficit = max(deficit, (target_b - vb) / tau)
        return slack, deficit

    @njit(nogil=True)
    def core(states, nominal, known, ids, targets, indptr, indices, cooperative, grid, shift, d,
             has_w, grid_w, shift_w, has_c, grid_c, shift_c, rc, resp, gamma, dt, n_checks, max_iter, lam_skip, vertex_search):
        N = states.shape[0]
        T = targets.shape[0]
        u_out = np.empty((T, m))
        partner = np.full(T, -1, dtype=np.int64)
        pair_value = np.full(T, math.inf)
        status = np.zeros(T, dtype=np.int64)
        n_in_rc = np.zeros(T, dtype=np.int64)
        conflict_free = np.zeros(T, dtype=np.bool_)
        margin = np.zeros(T)
        err = np.full(3, -1, dtype=np.int64)   # (status, agent, neighbour) of the first bad relative state
        gp, glo, ginv, gn, gper, gstr = grid
        wp, wlo, winv, wn, wper, wstr = grid_w
        cp, clo, cinv, cn, cper, cstr = grid_c
        g = np.empty(n)
        isc, wsc = interp.make_scratch(n)
        # ---- all (target, neighbour) relative states in one batch
        P = 0
        for t in range(T):
            i = targets[t]
            P += indptr[i + 1] - indptr[i]
        E = np.empty((P, k_dim))
        O = np.empty((P, k_dim))
        p = 0
        for t in range(T):
            i = targets[t]
            for e in range(indptr[i], indptr[i + 1]):
                E[p] = states[i]
                O[p] = states[indices[e]]
                p += 1
        S = rel(E, O)
        tb = np.empty((T, k_dim))
        for t in range(T):
            tb[t] = states[targets[t]]
        box_lo, box_hi = bnd(tb)
        # ---- prioritization, conflict-range counts, Prop. 1
        p = 0
        for t in range(T):
            i = targets[t]
            best = math.inf
            best_j = -1
            n_w = 0
            j_w = -1
            s_w = -1
            for e in range(indptr[i], indptr[i + 1]):
                j = indices[e]
                v, st = barrier(gp, glo, ginv, gn, gper, gstr, S, p, shift, d, False, g, isc, wsc)
                if st > interp.OUTSIDE:
                    err[0] = st
                    err[1] = i
                    err[2] = j
                    return u_out, partner, pair_value, status, n_in_rc, conflict_free, margin, err
                if v < best or (v == best and best_j >= 0 and j < best_j):
                    best = v
                    best_j = j
                dist = math.sqrt(S[p, 0] * S[p, 0] + S[p, 1] * S[p, 1])
                if dist < rc:
                    n_in_rc[t] += 1
                if has_w:
                    vw, stw = barrier(wp, wlo, winv, wn, wper, wstr, S, p, shift_w, d, False, g, isc, wsc)
                    if stw > interp.OUTSIDE:
                        err[0] = stw
                        err[1] = i
                        err[2] = j
                        return u_out, partner, pair_value, status, n_in_rc, conflict_free, margin, err
                    if vw < 0.0:
                        n_w += 1
                        j_w = j
                        s_w = p
                p += 1
            pair_value[t] = best
            if best < math.inf:
                partner[t] = best_j
            if has_w and has_c:
                if n_w == 0:
                    conflict_free[t] = True
                elif n_w == 1:
                    vc, stc = barrier(cp, clo, cinv, cn, cper, cstr, S, s_w, shift_c, d, False, g, isc, wsc)
                    conflict_free[t] = stc <= interp.OUTSIDE and vc >= 0.0
        # ---- the filter, per target agent
        mm = 2 * m if cooperative else m
        ref = np.empty(mm)
        lo = np.empty(mm)
        hi = np.empty(mm)
        dw = np.empty(mm)
        c = np.empty(mm)
        u = np.empty(mm)
        u_best = np.empty(mm)
        cb = np.empty(m)
        ua = np.empty(m)
        ub = np.empty(m)
        pair = np.empty((2, k_dim))
        work_x = np.empty((2, k_dim))
        work_u = np.empty((2, m))
        for t in range(T):
            i = targets[t]
            j = partner[t]
            if j < 0:
                for q in range(m):
                    u_out[t, q] = min(max(nominal[i, q], box_lo[t, q]), box_hi[t, q])
                status[t] = NO_PARTNER
                continue
            if cooperative and ids[j] < ids[i]:
                a = j
                b = i
                ego_is_a = False
            else:
                a = i
                b = j
                ego_is_a = True
            pair[0] = states[a]
            pair[1] = states[b]
            s2 = rel(pair[0:1], pair[1:2])
            f, Ga, Gb = aff(s2)
            plo, phi = bnd(pair)
            B, st = barrier(gp, glo, ginv, gn, gper, gstr, s2, 0, shift, d, True, g, isc, wsc)
            if st > interp.OUTSIDE:
                err[0] = st
                err[1] = a
                err[2] = b
                return u_out, partner, pair_value, status, n_in_rc, conflict_free, margin, err
            if B == math.inf:   # the canonical view is beyond the grid's extent: no interaction
                for q in range(m):
                    u_out[t, q] = min(max(nominal[i, q], box_lo[t, q]), box_hi[t, q])
                status[t] = NOMINAL_SAFE
                continue
            gf = 0.0
            for q in range(n):
                gf += g[q] * f[0, q]
            for q in range(m):
                ca = 0.0
                cbq = 0.0
                for r in range(n):
                    ca += g[r] * Ga[0, r, q]
                    cbq += g[r] * Gb[0, r, q]
                c[q] = ca
                cb[q] = cbq
                ref[q] = nominal[a, q] if known[a] else 0.0
                lo[q] = plo[0, q]
                hi[q] = phi[0, q]
            const = gf
            if cooperative:
                ra = resp[a]
                rb = resp[b]
                if ra + rb <= 0.0:
                    ra = 1.0
                    rb = 1.0
                for q in range(m):
                    dw[q] = ra
                    c[m + q] = cb[q]
                    ref[m + q] = nominal[b, q] if known[b] else 0.0
                    lo[m + q] = plo[1, q]
                    hi[m + q] = phi[1, q]
                    dw[m + q] = rb
            else:
                for q in range(m):
                    dw[q] = 1.0
                    const += min(cb[q] * plo[1, q], cb[q] * phi[1, q])
            # the check can only fail when gamma B < Lambda
            need_check = not (gamma * B >= lam_skip)
            mu = 0.0
            best_slack = -math.inf
            accepted = False
            final = NOMINAL_SAFE
            for it in range(max_iter + 1):
                code = solve_halfspace_box(ref, lo, hi, dw, c, mu - gamma * B - const, u)
                if not need_check:
                    accepted = True
                    for q in range(mm):
                        u_best[q] = u[q]
                    final = NOMINAL_SAFE if code == 0 else (CORRECTED if code == 1 else MOST_SAFE)
                    break
                slack, deficit = check_slack(gp, glo, ginv, gn, gper, gstr, shift, d, pair, u, cooperative, plo,
                                             phi, B, gamma, dt, n_checks, ua, ub, work_x, work_u, isc, wsc, g)
                if slack > best_slack:
                    best_slack = slack
                    for q in range(mm):
                        u_best[q] = u[q]
                    margin[t] = mu
                if slack >= 0.0:
                    accepted = True
                    final = NOMINAL_SAFE if code == 0 else (CORRECTED if code == 1 else MOST_SAFE)
                    break
                if code == 2:
                    break
                mu += 1.25 * deficit + 1e-9 * (1.0 + abs(mu))
            if not accepted and vertex_search:
                # vertex search: every combination of {lo, clip(ref), hi} per free component; the cheapest
                # candidate passing the sampled-data check, else the one with the largest slack
                best_cost = math.inf
                n_comb = 1
                for q in range(mm):
                    n_comb *= 3
                for comb in range(n_comb):
                    code3 = comb
                    for q in range(mm):
                        level = code3 % 3
                        code3 //= 3
                        r_q = min(max(ref[q], lo[q]), hi[q])
                        if dw[q] <= 0.0 or level == 0:
                            u[q] = r_q
                        else:
                            u[q] = lo[q] if level == 1 else hi[q]
                    slack, deficit = check_slack(gp, glo, ginv, gn, gper, gstr, shift, d, pair, u, cooperative,
                                                 plo, phi, B, gamma, dt, n_checks, ua, ub, work_x, work_u, isc,
                                                 wsc, g)
                    cost = 0.0
                    for q in range(mm):
                        if dw[q] > 0.0:
                            cost += (u[q] - ref[q]) ** 2 / dw[q]
                    if slack > best_slack:
                        best_slack = slack
                        for q in range(mm):
                            u_best[q] = u[q]
                accepted = best_slack >= 0.0
                final = SEARCHED if accepted else BEST_EFFORT
            elif not accepted:
                final = BEST_EFFORT
            status[t] = final
            off = 0 if (ego_is_a or not cooperative) else m
            for q in range(m):
                u_out[t, q] = u_best[off + q]
        return u_out, partner, pair_value, status, n_in_rc, conflict_free, margin, err

    @njit(nogil=True)
    def filter_all(states, nominal, resp, obs_range, cooperative, grid, shift, d, has_w, grid_w, shift_w, has_c,
                   grid_c, shift_c, rc, gamma, dt, n_checks, max_iter, lam_skip, vertex_search):
        N = states.shape[0]
        pos = np.ascontiguousarray(states[:, :2])
        indptr, indices = neighbor_lists(pos, obs_range)
        known = np.ones(N, dtype=np.bool_)
        ids = np.arange(N)
        out = core(states, nominal, known, ids, ids, indptr, indices, cooperative, grid, shift, d, has_w, grid_w,
                   shift_w, has_c, grid_c, shift_c, rc, resp, gamma, dt, n_checks, max_iter, lam_skip, vertex_search)
        return out

    @njit(nogil=True)
    def filter_one(states, nominal, known, ids, resp, obs_range, cooperative, grid, shift, d, has_w, grid_w,
                   shift_w, has_c, grid_c, shift_c, rc, gamma, dt, n_checks, max_iter, lam_skip, vertex_search):
        """Agent 0 of `states` against rows 1..K (neighbours selected by distance here)."""
        N = states.shape[0]
        indptr = np.zeros(N + 1, dtype=np.int64)
        idx = np.empty(max(N - 1, 0), dtype=np.int64)
        r2 = obs_range * obs_range
        cnt = 0
        for j in range(1, N):
            dx = states[j, 0] - states[0, 0]
            dy = states[j, 1] - states[0, 1]
            if dx * dx + dy * dy <= r2:
                idx[cnt] = j
                cnt += 1
        for q in range(1, N + 1):
            indptr[q] = cnt
        targets = np.zeros(1, dtype=np.int64)
        return core(states, nominal, known, ids, targets, indptr, idx[:cnt], cooperative, grid, shift, d, has_w,
                    grid_w, shift_w, has_c, grid_c, shift_c, rc, resp, gamma, dt, n_checks, max_iter, lam_skip, vertex_search)

    return filter_all, filter_one


def _kernels_for(model):
    if model.name not in _KERNELS:
        _KERNELS[model.name] = _build_kernels(model)
    return _KERNELS[model.name]


# ------------------------------------------------------------------------------------------- public API
@dataclass
class FilterResult:
    """Safe actions and per-agent diagnostics of one `LayeredSafetyFilter.filter` call (N agents).

    actions (N, m): the actions to apply (always inside the state-dependent box).
    partner (N,) int: the prioritized neighbour (-1 if none).
    pair_value (N,): B = min(V, ||p||) - d (m) against the partner (+inf if none), the mode's game.
    changed (N,) bool: the applied action differs from the nominal one (clipping to the box counts).
    status (N,) int: see STATUS_NAMES (no_partner, nominal_safe, corrected, most_safe, best_effort).
    margin (N,): the sampled-data margin mu (m/s) the accepted action was computed with.
    collision_pairs (K, 2) int: potential collision pairs (i < j that chose each other).
    n_in_conflict_range (N,) int: other agents closer than R_c(d) (-1 when no R_c is known).
    conflict_free (N,) bool or None: agent i satisfies Prop. 1 (None unless both value functions are given).
    """
    actions: np.ndarray
    partner: np.ndarray
    pair_value: np.ndarray
    changed: np.ndarray
    status: np.ndarray
    margin: np.ndarray
    collision_pairs: np.ndarray
    n_in_conflict_range: np.ndarray
    conflict_free: Optional[np.ndarray]


class LayeredSafetyFilter:
    """Pairwise HJ safety filter over many agents (see the module docstring for the method and guarantee).

    Parameters: model (name or reach Model); cooperative, worst_case: `ValueFunction`s (the mode's one is
    required; both enable the Prop. 1 diagnostics); safety_distance d (m, default the model's); mode
    'cooperative' | 'worst_case'; responsibility: scalar or (N,) per-agent weights >= 0 (scalar = equal split);
    gamma_cbf (1/s, default 0.5 / decision_period, needs gamma_cbf * dt <= 1); decision_period dt (s, default
    the model's); observation_range (m, default the model's); n_checks (sampled-data check times per period);
    max_iter (margin refinements); conflict_range (m, default R_c(d) from the stored table); value_margin (m,
    subtracted from the interpolated value of the mode's game to absorb the grid's error; default the solver's
    measured closed-loop shortfall, max(0, -attrs.validation.worst_separation_excess), else 0); vertex_search:
    when no linear candidate passes the sampled-data check, try every combination of {lo, clip(nominal), hi}
    per control component (3^(2m) joint candidates) and keep the one with the largest slack.
    """

    def __init__(self, model, cooperative: ValueFunction | None = None, worst_case: ValueFunction | None = None,
                 safety_distance: float | None = None, mode: str = "cooperative", responsibility=0.5,
                 gamma_cbf: float | None = None, decision_period: float | None = None,
                 observation_range: float | None = None, n_checks: int = 4, max_iter: int = 4,
                 conflict_range: float | None = None, value_margin: float | None = None,
                 vertex_search: bool = True):
        from reach.models import get_model
        self.model = get_model(model) if isinstance(model, str) else model
        if mode not in ("cooperative", "worst_case"):
            raise ValueError(f"mode must be 'cooperative' or 'worst_case', got {mode!r}")
        self.mode = mode
        self.cooperative_vf = cooperative
        self.worst_case_vf = worst_case
        for label, vf in (("cooperative", cooperative), ("worst_case", worst_case)):
            if vf is None:
                continue
            if not isinstance(vf, ValueFunction):
                raise TypeError(f"{label} must be a clients.ValueFunction, got {type(vf).__name__}")
            if vf.model.name != self.model.name:
                raise ValueError(f"{label} value function is for model {vf.model.name}, not {self.model.name}")
            if vf.game != label:
                raise ValueError(f"the {label} argument holds a {vf.game} value function ({vf.name})")
        self.vf = cooperative if mode == "cooperative" else worst_case
        if self.vf is None:
            raise ValueError(f"mode {mode!r} needs the {mode} value function")
        self.safety_distance = self.vf.effective_safety_distance(safety_distance)
        self.decision_period = float(decision_period if decision_period is not None else self.model.decision_period)
        if not (self.decision_period > 0 and math.isfinite(self.decision_period)):
            raise ValueError(f"decision_period must be finite and > 0, got {decision_period}")
        self.gamma_cbf = float(gamma_cbf if gamma_cbf is not None else 0.5 / self.decision_period)
        if not (self.gamma_cbf >= 0 and self.gamma_cbf * self.decision_period <= 1.0 + 1e-12):
            raise ValueError(f"gamma_cbf must be in [0, 1/decision_period] = [0, {1 / self.decision_period}], "
                             f"got {self.gamma_cbf}")
        self.observation_range = float(observation_range if observation_range is not None
                                       else self.model.observation_range)
        if not (self.observation_range > 0 and math.isfinite(self.observation_range)):
            raise ValueError(f"observation_range must be finite and > 0, got {observation_range}")
        if int(n_checks) < 1 or int(max_iter) < 0:
            raise ValueError("n_checks must be >= 1 and max_iter >= 0")
        if value_margin is None:
            excess = (self.vf.attrs.get("validation") or {}).get("worst_separation_excess")
            value_margin = max(0.0, -float(excess)) if excess is not None else 0.0
        self.value_margin = float(value_margin)
        if not (self.value_margin >= 0 and math.isfinite(self.value_margin)):
            raise ValueError(f"value_margin must be finite and >= 0, got {value_margin}")
        self.vertex_search = bool(vertex_search)
        self.n_checks = int(n_checks)
        self.max_iter = int(max_iter)
        self.responsibility = responsibility
        self._check_responsibility(responsibility, None)
        if conflict_range is None:
            conflict_range = math.nan
            for vf in (worst_case, cooperative):
                if vf is not None and vf._conflict_d is not None:
                    conflict_range = vf.conflict_range(self.safety_distance if vf.safety_distance is None
                                                       else vf.safety_distance)
                    break
        self.conflict_range = float(conflict_range)
        # Lipschitz bound of B per unit time (for skipping checks that cannot fail)
        lip = self.vf.lipschitz.copy()
        lip[0] = max(lip[0], 1.0)
        lip[1] = max(lip[1], 1.0)
        hi = self.vf.hi.copy()
        rates = self.model.dissipation_bounds(self.vf.lo, hi)
        self.lipschitz_rate = float(np.sum(lip * rates))
        self._filter_all, self._filter_one = _kernels_for(self.model)

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

    def _grids(self):
        vf = self.vf
        g = vf.kernel_args()
        shift = vf.shift(self.safety_distance if vf.safety_distance is None else None) + self.value_margin
        w, c = self.worst_case_vf, self.cooperative_vf
        has_w = w is not None
        has_c = c is not None
        gw = w.kernel_args() if has_w else g
        gc = c.kernel_args() if has_c else g
        sw = w.shift(self.safety_distance if w.safety_distance is None else None) if has_w else 0.0
        sc = c.shift(self.safety_distance if c.safety_distance is None else None) if has_c else 0.0
        return g, shift, has_w, gw, sw, has_c, gc, sc

    def _agent_array(self, x, width, name, n=None):
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 2 or a.shape[1] != width or (n is not None and a.shape[0] != n):
            want = f"({n if n is not None else 'N'}, {width})"
            raise StateError(f"{name} must have shape {want}, got {np.shape(x)}")
        if not np.all(np.isfinite(a)):
            bad = np.argwhere(~np.isfinite(a))[0]
            raise StateError(f"{name}[{bad[0]}, {bad[1]}] is NaN or infinite")
        return np.ascontiguousarray(a)

    def _raise(self, err, label_a="agent", label_b="agent"):
        kind, dim = interp.decode_status(int(err[0]), self.vf.state_names)
        raise StateError(f"relative state of {label_b} {int(err[2])} seen from {label_a} {int(err[1])}: "
                         f"{self.vf.state_names[dim]} is {'NaN' if kind == 'nan' else 'outside the grid bounds'} "
                         f"of {self.vf.name}")

    # ------------------------------------------------------------------ API
    def filter(self, states, nominal_actions) -> FilterResult:
        """Filter all agents at once: states (N, k) world-frame, nominal_actions (N, m) -> FilterResult."""
        k, m = self.model.n_agent_states, self.model.n_controls
        x = self._agent_array(states, k, "states")
        n = x.shape[0]
        u = self._agent_array(nominal_actions, m, "nominal_actions", n)
        resp = self._check_responsibility(self.responsibility, n)
        g, shift, has_w, gw, sw, has_c, gc, sc = self._grids()
        out = self._filter_all(x, u, resp, self.observation_range, self.mode == "cooperative", g, shift,
                               self.safety_distance, has_w, gw, sw, has_c, gc, sc, self.conflict_range,
                               self.gamma_cbf, self.decision_period, self.n_checks, self.max_iter,
                               self.lipschitz_rate, self.vertex_search)
        actions, partner, pair_value, status, n_in_rc, conflict_free, margin, err = out
        if err[0] >= 0:
            self._raise(err)
        return self._result(actions, u, partner, pair_value, status, n_in_rc, conflict_free, margin, has_w and has_c,
                            mutual=True)

    def _result(self, actions, u, partner, pair_value, status, n_in_rc, conflict_free, margin, prop1, mutual):
        changed = np.any(np.abs(actions - u) > 1e-12 * (1.0 + np.abs(u)), axis=1)
        if mutual:
            idx = np.arange(partner.shape[0])
            has = partner >= 0
            mut = has & (partner[np.where(has, partner, 0)] == idx) & (idx < partner)
            pairs = np.stack([idx[mut], partner[mut]], axis=1)
        else:
            pairs = np.empty((0, 2), dtype=np.int64)
        if not math.isfinite(self.conflict_range):
            n_in_rc = np.full_like(n_in_rc, -1)
        return FilterResult(actions=actions, partner=partner, pair_value=pair_value, changed=changed, status=status,
                            margin=margin, collision_pairs=pairs, n_in_conflict_range=n_in_rc,
                            conflict_free=conflict_free if prop1 else None)

    def filter_agent(self, ego_state, ego_nominal, neighbor_states, neighbor_nominal=None, ego_id: int = 0,
                     neighbor_ids=None) -> FilterResult:
        """One agent from a controller loop: ego_state (k,), ego_nominal (m,), neighbor_states (K, k).

        neighbor_nominal (K, m) when known; otherwise the neighbours are assumed to hold zero control (see the
        module docstring). ego_id / neighbor_ids (both, or neither) order the cooperative pair problem (the
        smaller id is agent a); by default the ego is 0 and the neighbours 1..K. Returns a FilterResult of one row (partner indexes the
        neighbour rows; collision_pairs is empty: mutual choice needs the neighbours' own choices).
        """
        k, m = self.model.n_agent_states, self.model.n_controls
        ego = np.asarray(ego_state, dtype=np.float64).reshape(1, -1)
        others = np.asarray(neighbor_states, dtype=np.float64)
        if others.ndim == 1 and others.size == 0:
            others = others.reshape(0, k)
        states = self._agent_array(np.concatenate([ego, others.reshape(-1, ego.shape[1])], axis=0)
                                   if others.ndim == 2 else others, k, "states")
        kk = states.shape[0] - 1
        nominal = np.zeros((kk + 1, m))
        nominal[0] = np.asarray(ego_nominal, dtype=np.float64).reshape(m)
        known = np.zeros(kk + 1, dtype=np.bool_)
        known[0] = True
        if neighbor_nominal is not None:
            nominal[1:] = np.asarray(neighbor_nominal, dtype=np.float64).reshape(kk, m)
            known[1:] = True
        if not np.all(np.isfinite(nominal)):
            raise StateError("nominal actions contain NaN or inf")
        if neighbor_ids is None:
            ids = np.arange(kk + 1, dtype=np.int64)
        else:
            ids = np.concatenate([[int(ego_id)], np.asarray(neighbor_ids, dtype=np.int64).reshape(kk)])
        resp = self._check_responsibility(self.responsibility, kk + 1)
        g, shift, has_w, gw, sw, has_c, gc, sc = self._grids()
        out = self._filter_one(states, nominal, known, ids, resp, self.observation_range,
                               self.mode == "cooperative", g, shift, self.safety_distance, has_w, gw, sw, has_c,
                               gc, sc, self.conflict_range, self.gamma_cbf, self.decision_period, self.n_checks,
                               self.max_iter, self.lipschitz_rate, self.vertex_search)
        actions, partner, pair_value, status, n_in_rc, conflict_free, margin, err = out
        if err[0] >= 0:
            self._raise(err)
        partner = np.where(partner >= 1, partner - 1, -1)
        return self._result(actions, nominal[:1], partner, pair_value, status, n_in_rc, conflict_free, margin,
                            has_w and has_c, mutual=False)
