"""Baseline safety filters compared with the layered filter in the same runs.

All filters share one interface (``.filter(states (n,k), nominal (n,m)) -> (safe (n,m), info)``, ``.name``) and
the model's state-dependent box bounds (``model.agent_control_bounds``, speed limits included).

Pairwise constraints are decentralized and reciprocal: each agent of a pair takes half of the required change of
the barrier's derivative, assuming the other does the same (as in the safety-barrier-certificate line of work the
paper's ECBF baseline comes from). For an agent i and neighbour j with p = p_j - p_i, v = v_j - v_i (world
frame) and the ego's world-frame acceleration written as acc_i = B_i u_i (quadrotor: B = I; air taxi with
u = (omega, a): B = [v e_perp, e], e = (cos th, sin th)):

- ``ecbf`` (exponential CBF, Nguyen & Sreenath 2016): h = |p|^2 - d^2, relative degree 2,
  h'' + k1 h' + k0 h >= 0 with h' = 2 p.v, h'' = 2|v|^2 + 2 p.(acc_j - acc_i); k1 = 2 lam, k0 = lam^2 (double
  pole at -lam). Agent i's half: -2 p.B_i u_i >= -(|v|^2 + k1 p.v + k0 h / 2).
- ``braking`` (braking-distance CBF of the diffusion safe-MARL paper): h = |p| - v_c^2 / (2 b) - kappa with the
  closing speed v_c = max(0, -p_hat.v), relative degree 1 while closing:
  h' = p_hat.v + (v_c / b) (p_hat.a_rel + v_t^2 / |p|), v_t the tangential relative speed; condition
  h' + alpha h >= 0, agent i's half: -(v_c / b) p_hat.B_i u_i >= -(p_hat.v + (v_c/b) v_t^2/|p| + alpha h) / 2,
  with v_c in the control term floored at b dt (the closing speed one held decision period can build from rest;
  without it the constraint vanishes at v_c = 0 and pairs creep through the boundary).
  b is the closing-speed deceleration of the pair (both agents braking: 2x one agent's guaranteed deceleration),
  kappa the stopped gap (= d).

Every agent's constraints (its ``max_neighbors`` nearest neighbours inside the observation range) plus its box
bounds form a 2-D QP  min ||z - z_ref||^2  in controls normalized to [-1, 1]^2 (so that rad/s and m/s^2 weigh
alike), solved exactly: the nominal if feasible, else the best of the projections onto each constraint line and
the vertices of the feasible polygon. If the polygon is empty (conflicting constraints: the multi-agent "leaky
corner"), the filter keeps only the most critical constraint (smallest h) and solves that one exactly with the
box; if even that is infeasible, it applies the control that maximizes the constraint's left side (the box corner
chosen by the signs of its coefficients).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from clients.filter import LayeredSafetyFilter


# ---------------------------------------------------------------------------------------------------- kernels
def neighbours_within(pos, radius, kmax):
    """(n, kmax) indices of each point's nearest others within ``radius`` (sorted by distance, -1 padded), from
    the client's cell-list neighbour search (``clients.neighbors.neighbor_lists``)."""
    from clients.neighbors import neighbor_lists

    pos = np.ascontiguousarray(pos, dtype=np.float64)
    indptr, indices = neighbor_lists(pos, float(radius))
    return _k_nearest_in_lists(pos, indptr, indices, kmax, radius)


@njit(cache=True)
def _k_nearest_in_lists(pos, indptr, indices, kmax, radius):
    n = pos.shape[0]
    out = np.full((n, kmax), -1, np.int64)
    dist = np.full((n, kmax), np.inf)
    r2 = radius * radius
    for i in range(n):
        for q in range(indptr[i], indptr[i + 1]):
            j = indices[q]
            if j == i:
                continue
            dx = pos[j, 0] - pos[i, 0]
            dy = pos[j, 1] - pos[i, 1]
            d2 = dx * dx + dy * dy
            if d2 >= r2 or d2 >= dist[i, kmax - 1]:
                continue
            k = kmax - 1
            while k > 0 and dist[i, k - 1] > d2:
                dist[i, k] = dist[i, k - 1]
                out[i, k] = out[i, k - 1]
                k -= 1
            dist[i, k] = d2
            out[i, k] = j
    return out


@njit(cache=True)
def _feasible(z0, z1, A, b, m, tol):
    if abs(z0) > 1.0 + tol or abs(z1) > 1.0 + tol:
        return False
    for k in range(m):
        if A[k, 0] * z0 + A[k, 1] * z1 < b[k] - tol:
            return False
    return True


@njit(cache=True)
def _single_constraint(zr0, zr1, g0, g1, c):
    """Exact min |z - zr|^2 s.t. g.z >= c, |z_i| <= 1 (KKT: z = clip(zr + lam g), lam >= 0 by bisection);
    returns the most-safe corner when infeasible."""
    if g0 * zr0 + g1 * zr1 >= c:
        return min(max(zr0, -1.0), 1.0), min(max(zr1, -1.0), 1.0), True
    best = abs(g0) + abs(g1)
    if best < c:
        return (1.0 if g0 > 0 else (-1.0 if g0 < 0 else zr0)), (1.0 if g1 > 0 else (-1.0 if g1 < 0 else zr1)), False
    lo = 0.0
    hi = 1.0
    for _ in range(200):
        z0 = min(max(zr0 + hi * g0, -1.0), 1.0)
        z1 = min(max(zr1 + hi * g1, -1.0), 1.0)
        if g0 * z0 + g1 * z1 >= c:
            break
        hi *= 2.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        z0 = min(max(zr0 + mid * g0, -1.0), 1.0)
        z1 = min(max(zr1 + mid * g1, -1.0), 1.0)
        if g0 * z0 + g1 * z1 >= c:
            hi = mid
        else:
            lo = mid
    return min(max(zr0 + hi * g0, -1.0), 1.0), min(max(zr1 + hi * g1, -1.0), 1.0), True


@njit(cache=True)
def solve_box_qp2(zref, G, c, critical, out, status):
    """For each agent i: min ||z - zref_i||^2 s.t. G[i,k].z >= c[i,k] (rows with G = 0 and c = 0 are padding),
    |z| <= 1 componentwise. status: 0 nominal kept, 1 QP solved, 2 conflicting -> most critical constraint only,
    3 that one also infeasible -> most-safe corner."""
    n, kmax = c.shape
    A = np.empty((kmax + 4, 2))
    b = np.empty(kmax + 4)
    for i in range(n):
        m = 0
        for k in range(kmax):
            if G[i, k, 0] != 0.0 or G[i, k, 1] != 0.0:
                A[m, 0] = G[i, k, 0]
                A[m, 1] = G[i, k, 1]
                b[m] = c[i, k]
                m += 1
        z0 = zref[i, 0]
        z1 = zref[i, 1]
        tol = 1e-9
        if _feasible(z0, z1, A, b, m, tol):
            out[i, 0] = z0
            out[i, 1] = z1
            status[i] = 0
            continue
        # box edges as half-planes
        mm = m
        for s in range(2):
            for sign in (1.0, -1.0):
                A[mm, 0] = sign if s == 0 else 0.0
                A[mm, 1] = sign if s == 1 else 0.0
                b[mm] = -1.0
                mm += 1
        best = np.inf
        bz0 = 0.0
        bz1 = 0.0
        for p in range(mm):
            a0 = A[p, 0]
            a1 = A[p, 1]
            nn = a0 * a0 + a1 * a1
            if nn == 0.0:
                continue
            r = (b[p] - (a0 * z0 + a1 * z1)) / nn
            if r < 0.0:
                continue
            q0 = z0 + r * a0
            q1 = z1 + r * a1
            if _feasible(q0, q1, A, b, m, 1e-7):
                dd = (q0 - z0) ** 2 + (q1 - z1) ** 2
                if dd < best:
                    best = dd
                    bz0 = q0
                    bz1 = q1
            for q in range(p + 1, mm):
                det = a0 * A[q, 1] - a1 * A[q, 0]
                if abs(det) < 1e-12 * (1.0 + nn):
                    continue
                v0 = (b[p] * A[q, 1] - a1 * b[q]) / det
                v1 = (a0 * b[q] - b[p] * A[q, 0]) / det
                if _feasible(v0, v1, A, b, m, 1e-7):
                    dd = (v0 - z0) ** 2 + (v1 - z1) ** 2
                    if dd < best:
                        best = dd
                        bz0 = v0
                        bz1 = v1
        if best < np.inf:
            out[i, 0] = min(max(bz0, -1.0), 1.0)
            out[i, 1] = min(max(bz1, -1.0), 1.0)
            status[i] = 1
            continue
        k = critical[i]
        q0, q1, ok = _single_constraint(z0, z1, G[i, k, 0], G[i, k, 1], c[i, k])
        out[i, 0] = q0
        out[i, 1] = q1
        status[i] = 2 if ok else 3


# ---------------------------------------------------------------------------------------------------- model glue
def world_velocity(model_name: str, states: np.ndarray) -> np.ndarray:
    if model_name == "quadrotor":
        return states[:, 2:4]
    if model_name == "air_taxi":
        return states[:, 3:4] * np.column_stack([np.cos(states[:, 2]), np.sin(states[:, 2])])
    raise KeyError(f"no CBF baseline for model {model_name!r}")


def acceleration_matrix(model_name: str, states: np.ndarray) -> np.ndarray:
    """(n, 2, 2) B with world acceleration = B u for the agent's own control u."""
    n = states.shape[0]
    if model_name == "quadrotor":
        return np.broadcast_to(np.eye(2), (n, 2, 2)).copy()
    if model_name == "air_taxi":
        th, v = states[:, 2], states[:, 3]
        B = np.empty((n, 2, 2))
        B[:, 0, 0] = -v * np.sin(th)
        B[:, 1, 0] = v * np.cos(th)
        B[:, 0, 1] = np.cos(th)
        B[:, 1, 1] = np.sin(th)
        return B
    raise KeyError(f"no CBF baseline for model {model_name!r}")


DEFAULTS = {
    # ECBF double pole lam (1/s); braking-CBF gain alpha (1/s) and one agent's guaranteed deceleration (m/s^2)
    "quadrotor": {"ecbf_pole": 1.0, "alpha": 1.0, "decel": 0.5},
    "air_taxi": {"ecbf_pole": 0.1, "alpha": 0.1, "decel": 1.0},
}


class _PairwiseCBFFilter:
    name = "cbf"

    def __init__(self, model, safety_distance: float | None = None, observation_range: float | None = None,
                 max_neighbors: int = 8):
        self.model = model
        self.safety_distance = float(model.safety_distance if safety_distance is None else safety_distance)
        self.observation_range = float(model.observation_range if observation_range is None else observation_range)
        self.max_neighbors = int(max_neighbors)

    def constraints(self, states, nb):
        """(n, K, 2) g and (n, K) c in physical control units, plus (n, K) h (the barrier values)."""
        raise NotImplementedError

    def filter(self, states: np.ndarray, nominal: np.ndarray) -> tuple[np.ndarray, dict]:
        states = np.asarray(states, float)
        nominal = np.asarray(nominal, float)
        n = states.shape[0]
        lo, hi = self.model.agent_control_bounds(states)
        if n < 2:
            return np.clip(nominal, lo, hi), {"status": np.zeros(n, np.int64)}
        nb = neighbours_within(np.ascontiguousarray(states[:, :2]), self.observation_range, self.max_neighbors)
        g, c, h = self.constraints(states, nb)
        valid = nb >= 0
        g = np.where(valid[..., None], g, 0.0)
        c = np.where(valid, c, 0.0)
        h = np.where(valid, h, np.inf)
        center, half = 0.5 * (hi + lo), np.maximum(0.5 * (hi - lo), 1e-12)
        # normalized coordinates z: u = center + half * z
        gz = g * half[:, None, :]
        cz = c - np.einsum("nkm,nm->nk", g, center)
        zref = np.clip((nominal - center) / half, -1.0, 1.0)
        critical = np.argmin(h, axis=1)
        out = np.empty_like(zref)
        status = np.empty(n, np.int64)
        solve_box_qp2(np.ascontiguousarray(zref), np.ascontiguousarray(gz), np.ascontiguousarray(cz), critical,
                      out, status)
        safe = center + half * out
        return np.clip(safe, lo, hi), {"status": status, "barrier": h.min(axis=1)}


class ECBFFilter(_PairwiseCBFFilter):
    """Exponential CBF on h = |p|^2 - d^2 (see the module docstring)."""

    name = "ecbf"

    def __init__(self, model, pole: float | None = None, **kwargs):
        super().__init__(model, **kwargs)
        self.pole = float(DEFAULTS[model.name]["ecbf_pole"] if pole is None else pole)

    def constraints(self, states, nb):
        j = np.where(nb >= 0, nb, 0)
        p = states[j, :2] - states[:, None, :2]
        vel = world_velocity(self.model.name, states)
        v = vel[j] - vel[:, None, :]
        B = acceleration_matrix(self.model.name, states)
        k1, k0 = 2 * self.pole, self.pole ** 2
        h = np.einsum("nkd,nkd->nk", p, p) - self.safety_distance ** 2
        g = -2.0 * np.einsum("nkd,ndm->nkm", p, B)
        c = -(np.einsum("nkd,nkd->nk", v, v) + k1 * np.einsum("nkd,nkd->nk", p, v) + 0.5 * k0 * h)
        return g, c, h


class BrakingCBFFilter(_PairwiseCBFFilter):
    """Braking-distance CBF h = |p| - v_close^2 / (2 b) - kappa (see the module docstring)."""

    name = "braking"

    def __init__(self, model, alpha: float | None = None, decel: float | None = None, kappa: float | None = None,
                 **kwargs):
        super().__init__(model, **kwargs)
        dflt = DEFAULTS[model.name]
        self.alpha = float(dflt["alpha"] if alpha is None else alpha)
        self.b = 2.0 * float(dflt["decel"] if decel is None else decel)  # both agents of the pair brake
        self.kappa = float(self.safety_distance if kappa is None else kappa)

    def constraints(self, states, nb):
        j = np.where(nb >= 0, nb, 0)
        p = states[j, :2] - states[:, None, :2]
        dist = np.maximum(np.hypot(p[..., 0], p[..., 1]), 1e-9)
        ph = p / dist[..., None]
        vel = world_velocity(self.model.name, states)
        v = vel[j] - vel[:, None, :]
        pv = np.einsum("nkd,nkd->nk", ph, v)
        vc = np.maximum(0.0, -pv)
        vt2 = np.maximum(np.einsum("nkd,nkd->nk", v, v) - pv ** 2, 0.0)
        h = dist - vc ** 2 / (2 * self.b) - self.kappa
        B = acceleration_matrix(self.model.name, states)
        # sampled-data margin: within one held decision period the pair can build up a closing speed of
        # b * dt from rest, so the control term uses max(v_c, b dt) (else the constraint vanishes at v_c = 0
        # and a pair held at the boundary creeps inwards, one period of full acceleration at a time)
        veff = np.maximum(vc, self.b * self.model.decision_period)
        g = -(veff / self.b)[..., None] * np.einsum("nkd,ndm->nkm", ph, B)
        c = -0.5 * (pv + (veff / self.b) * vt2 / dist + self.alpha * h)
        return g, c, h


class NoFilter:
    """Safety-blind: passes the nominal control through (clipped to the box)."""

    name = "none"

    def __init__(self, model):
        self.model = model

    def filter(self, states, nominal):
        lo, hi = self.model.agent_control_bounds(np.asarray(states, float))
        return np.clip(np.asarray(nominal, float), lo, hi), {}


def open_store(store=None):
    """A store object from a path / None (default store) / an already opened store."""
    if store is None or isinstance(store, (str, bytes)) or hasattr(store, "__fspath__"):
        from reach import open_store as _open

        return _open(store)
    return store


class LayeredFilter:
    """The layered filter of the paper (prioritization + cooperative CBVF filter), i.e. the client's
    ``clients.LayeredSafetyFilter`` behind the simulator's filter interface."""

    name = "layered"

    def __init__(self, model, cooperative, worst_case=None, safety_distance: float | None = None, **kwargs):
        self.model = model
        self.inner = LayeredSafetyFilter(model, cooperative=cooperative, worst_case=worst_case,
                                         safety_distance=safety_distance, **kwargs)
        self.safety_distance = float(self.inner.safety_distance)
        self.conflict_range = float(self.inner.conflict_range)

    def filter(self, states, nominal):
        res = self.inner.filter(states, nominal)
        return res.actions, res.diagnostics()


FILTER_NAMES = ("none", "layered", "ecbf", "braking")


def make_filter(name: str, model, store=None, safety_distance: float | None = None, **kwargs):
    """Build a filter by name for ``model``. ``layered`` needs a store with ``<model>/cooperative`` and
    ``<model>/worst_case`` value functions (or pass ``cooperative=``/``worst_case=``)."""
    if name == "none":
        return NoFilter(model)
    if name == "ecbf":
        return ECBFFilter(model, safety_distance=safety_distance, **kwargs)
    if name == "braking":
        return BrakingCBFFilter(model, safety_distance=safety_distance, **kwargs)
    if name == "layered":
        return make_layered_filter(model, store=store, safety_distance=safety_distance, **kwargs)
    raise KeyError(f"unknown filter {name!r}; known: {', '.join(FILTER_NAMES)}")


def make_layered_filter(model, store=None, safety_distance=None, cooperative=None, worst_case=None,
                        spec: str | None = None, prop1: bool = True, **kwargs):
    """Layered filter from value functions (``cooperative``/``worst_case``) or, if not given, from the store's
    ``<spec>/cooperative`` and ``<spec>/worst_case`` (spec defaults to the model name). ``prop1=False`` gives
    the filter only the cooperative value function (same actions, no Prop. 1 diagnostics, cheaper); R_c(d)
    still comes from the worst-case table."""
    if cooperative is None or worst_case is None:
        from clients import ValueFunction

        st = open_store(store)
        spec = spec or model.name
        cooperative = cooperative or ValueFunction.load(st, f"{spec}/cooperative")
        worst_case = worst_case or ValueFunction.load(st, f"{spec}/worst_case")
    if not prop1:
        d = cooperative.effective_safety_distance(safety_distance)
        kwargs.setdefault("conflict_range", worst_case.conflict_range(d if worst_case.safety_distance is None
                                                                      else None))
        worst_case = None
    return LayeredFilter(model, cooperative, worst_case, safety_distance=safety_distance, **kwargs)
