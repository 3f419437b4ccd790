"""The layered safety filter (`clients/filter.py`).

- the closed-form halfspace + box solver agrees with a general QP solver (scipy SLSQP, tests only);
- proof by simulation: two-agent encounters for each model, 10,000 random initial pairs with B(s0) >= 0 (value
  above the documented margin), nominal actions random or aimed at the other agent, actions held for the decision
  period, exact integration in between and the separation checked at sub-steps: the cooperative filter gives zero
  violations, the same encounters without it collide; the worst-case filter against an opponent that plays the
  grid's worst-case control gives zero violations within the game's engagement horizon T_e, and later never loses
  separation without flagging it (status best_effort) first;
- diagnostics (prioritization against a brute-force reference, collision pairs, R_c counts, Prop. 1), the single
  agent call, responsibilities, the most-safe fallback and input errors.

The encounters need grids that cover the whole relative state space at a useful resolution (the shared tiny grids
cover relative velocities of +-1 m/s only), so this module computes two small specs once per machine and code
version (cached in the temp dir like ``tiny_store``; about 40 s on 2 cores the first time).
"""
from __future__ import annotations

import fcntl
import hashlib
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest

from clients import LayeredSafetyFilter, StateError, ValueFunction, solve_halfspace_box
from clients.filter import BEST_EFFORT, CORRECTED, MOST_SAFE, NO_PARTNER, NOMINAL_SAFE, SEARCHED, STATUS_NAMES
from clients.neighbors import close_pairs, neighbor_lists, verlet_neighbor_lists
from clients.sim.simulator import intervened_flags
from reach.models import get_model
from tests.helpers import mutual_pairs

ROOT = Path(__file__).resolve().parent.parent
QUAD = get_model("quadrotor")
TAXI = get_model("air_taxi")

# Small grids finer than the tiny test grids; both games; undiscounted (shiftable to any d).
SPECS = {
    "quad_filter": """
model = "quadrotor"
games = ["cooperative", "worst_case"]
[grid.px]
lo = -3.0
hi = 3.0
points = 21
[grid.py]
lo = -3.0
hi = 3.0
points = 21
[grid.vx]
lo = -2.0
hi = 2.0
points = 17
[grid.vy]
lo = -2.0
hi = 2.0
points = 17
[solver]
scheme = "WENO3"
cfl = 0.75
tolerance = 0.002
window = 0.5
max_horizon = 6.0
chunk = 1.0
engagement_horizon = 0.4
[conflict]
safety_distances = [0.25, 0.5]
[validation]
n_samples = 200
margin = 0.02
seed = 0
""",
    "taxi_filter": """
model = "air_taxi"
games = ["cooperative", "worst_case"]
[grid.x_r]
lo = -4000.0
hi = 4000.0
points = 21
[grid.y_r]
lo = -4000.0
hi = 4000.0
points = 21
[grid.theta_r]
points = 12
[grid.v_a]
lo = 30.87
hi = 90.03
points = 5
[grid.v_b]
lo = 30.87
hi = 90.03
points = 5
[solver]
scheme = "WENO3"
cfl = 0.75
tolerance = 1.0
window = 2.0
max_horizon = 60.0
chunk = 10.0
engagement_horizon = 4.0
[conflict]
safety_distances = [152.4, 457.2]
[validation]
n_samples = 200
margin = 5.0
seed = 0
""",
}

# The documented margins of these grids (m, `value_margin`): the guarantee is stated for B(s0) >= 0 with
# B = min(V0 - d - value_margin, ||p|| - d). The solver's validation measures a closed-loop shortfall of about
# 0.22 m (quadrotor) and 337 m (air taxi) on these coarse grids; the margins below add an allowance for the
# multi-step sampled-data play (observed: 0.3 m and 450 m already give zero violations).
MARGIN = {"quadrotor": 0.4, "air_taxi": 500.0}
D = {"quadrotor": 0.5, "air_taxi": 457.2}       # the paper's safety distances (1500 ft for the air taxi)
N_PAIRS = 10_000


def _store_key() -> str:
    h = hashlib.sha256()
    for name in sorted(SPECS):
        h.update(name.encode() + b"\0" + SPECS[name].encode())
    for src in sorted((ROOT / "reach").rglob("*.py")):
        h.update(str(src.relative_to(ROOT)).encode() + b"\0" + src.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def filter_store() -> Path:
    """A store with quad_filter/{cooperative,worst_case} and taxi_filter/{cooperative,worst_case} (read only)."""
    from reach.compute import compute_spec
    from reach.spec import load_spec
    from reach.store import open_store

    root = Path(tempfile.gettempdir()) / f"reach-filter-store-{_store_key()}"
    done = root / ".complete"
    with open(str(root) + ".lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if not done.exists():
                specs = root / "specs"
                specs.mkdir(parents=True, exist_ok=True)
                store = open_store(root)
                for name, text in SPECS.items():
                    path = specs / f"{name}.toml"
                    path.write_text(text)
                    compute_spec(load_spec(path), store, progress=False, log=lambda msg: None)
                done.write_text("ok\n")
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return root


@pytest.fixture(scope="session")
def vfs(filter_store):
    out = {}
    for model, spec in (("quadrotor", "quad_filter"), ("air_taxi", "taxi_filter")):
        out[model] = {g: ValueFunction.load(filter_store, f"{spec}/{g}") for g in ("cooperative", "worst_case")}
    return out


# ------------------------------------------------------------------------------------------ closed-form QP
def _qp_reference(ref, lo, hi, dw, c, b):
    """min sum (u - ref)^2 / dw  s.t. c.u >= b, lo <= u <= hi with SLSQP (dw = 0: u fixed at clip(ref))."""
    from scipy.optimize import minimize

    free = dw > 0
    fixed = np.clip(ref, lo, hi)
    lo2 = np.where(free, lo, fixed)
    hi2 = np.where(free, hi, fixed)
    w = np.where(free, 1.0 / np.where(free, dw, 1.0), 0.0)
    best = None
    for x0 in (np.clip(ref, lo2, hi2), np.where(c > 0, hi2, lo2), 0.5 * (lo2 + hi2)):
        res = minimize(lambda u: np.sum(w * (u - ref) ** 2), x0, jac=lambda u: 2 * w * (u - ref),
                       bounds=list(zip(lo2, hi2)), method="SLSQP", options={"ftol": 1e-14, "maxiter": 500},
                       constraints=[{"type": "ineq", "fun": lambda u: c @ u - b, "jac": lambda u: c}])
        if res.success and c @ res.x >= b - 1e-7 and (best is None or res.fun < best.fun):
            best = res
    return best


def test_closed_form_agrees_with_general_qp_solver():
    rng = np.random.default_rng(0)
    n_checked = {0: 0, 1: 0, 2: 0}
    for trial in range(400):
        m = int(rng.integers(1, 5))
        lo = rng.uniform(-2, 0, m)
        hi = lo + rng.uniform(0.1, 3, m)
        ref = rng.uniform(-3, 3, m)
        dw = rng.uniform(0.2, 2.0, m) * (rng.uniform(size=m) > 0.15)
        c = rng.normal(size=m) * (rng.uniform(size=m) > 0.1)
        b = float(rng.normal() * 2)
        out = np.empty(m)
        code = solve_halfspace_box(ref.copy(), lo, hi, dw, c.copy(), b, out)
        n_checked[code] += 1
        assert np.all(out >= lo - 1e-12) and np.all(out <= hi + 1e-12)
        free = (dw > 0) & (c != 0)
        if code == 2:
            # infeasible: the most-safe control maximizes c.u over the box in the free components
            assert c @ out < b
            assert np.allclose(out[free], np.where(c[free] > 0, hi[free], lo[free]))
            assert np.allclose(out[~free], np.clip(ref, lo, hi)[~free])
            continue
        assert c @ out >= b - 1e-9 * (1 + abs(b))
        if code == 0:
            assert np.allclose(out, np.clip(ref, lo, hi))
        qp = _qp_reference(ref, lo, hi, dw, c, b)
        assert qp is not None, "reference solver failed on a feasible problem"
        w = np.where(dw > 0, 1.0 / np.where(dw > 0, dw, 1.0), 0.0)
        cost = np.sum(w * (out - ref) ** 2)
        assert cost <= qp.fun + 1e-6 * (1 + qp.fun)
        assert np.allclose(out, qp.x, atol=1e-4)
    assert min(n_checked.values()) > 20, n_checked


def test_closed_form_edge_cases():
    out = np.empty(2)
    # zero coefficient vector: feasible iff 0 >= b
    assert solve_halfspace_box(np.array([0.3, -0.2]), -np.ones(2), np.ones(2), np.ones(2), np.zeros(2), -1.0,
                               out) == 0
    assert np.allclose(out, [0.3, -0.2])
    assert solve_halfspace_box(np.array([0.3, -0.2]), -np.ones(2), np.ones(2), np.ones(2), np.zeros(2), 1.0,
                               out) == 2
    # the constraint exactly at the box corner
    assert solve_halfspace_box(np.zeros(2), -np.ones(2), np.ones(2), np.ones(2), np.array([1.0, 1.0]), 2.0,
                               out) == 1
    assert np.allclose(out, [1, 1])
    # float32 noise in a coefficient does not pick a corner
    c = np.array([1.0, 1e-9])
    assert solve_halfspace_box(np.zeros(2), -np.ones(2), np.ones(2), np.ones(2), c, 5.0, out) == 2
    assert out[0] == 1.0 and out[1] == 0.0
    # bad input is refused with a message that names it
    ok = dict(ref=np.zeros(2), lo=-np.ones(2), hi=np.ones(2), dw=np.ones(2), c=np.ones(2), b=0.5, out=np.empty(2))
    for change, match in [({"c": np.ones(4)[::2]}, "c must be a writeable"), ({"b": math.nan}, "finite"),
                          ({"c": np.array([1.0, math.nan])}, "finite"), ({"lo": np.array([2.0, -1.0])}, "lo <= hi"),
                          ({"dw": np.array([-1.0, 1.0])}, "dw must be"), ({"hi": np.ones(3)}, "hi must be a 1-D"),
                          ({"out": np.empty(2, dtype=np.float32)}, "out must be")]:
        with pytest.raises(ValueError, match=match):
            solve_halfspace_box(**{**ok, **change})


# ---------------------------------------------------------------------------------- encounter simulation
def _sample_pairs(model, vf, flt, n, rng, spread):
    """n pairs as 2n agents (2p ego, 2p + 1 other) inside the grid with B(s0) >= 0 for `flt`, on a lattice of
    pairs `spread` apart (beyond the observation range: every agent sees only its pair partner)."""
    k = model.n_agent_states
    found = []
    count = 0
    while count < n:
        m = 4 * n
        if model.name == "quadrotor":
            a = np.column_stack([np.zeros((m, 2)), rng.uniform(-1, 1, (m, 2))])
            b = np.column_stack([rng.uniform(-2.8, 2.8, (m, 2)), rng.uniform(-1, 1, (m, 2))])
        else:
            a = np.column_stack([np.zeros((m, 2)), rng.uniform(-np.pi, np.pi, m), rng.uniform(30.87, 90.03, m)])
            b = np.column_stack([rng.uniform(-3800, 3800, (m, 2)), rng.uniform(-np.pi, np.pi, m),
                                 rng.uniform(30.87, 90.03, m)])
        s = model.relative_state(a, b)
        ok = vf.in_domain(s)
        a, b, s = a[ok], b[ok], s[ok]
        shift = flt.safety_distance + flt.value_margin
        bar = np.minimum(vf.value(s, shift), np.hypot(s[:, 0], s[:, 1]) - flt.safety_distance)
        good = bar >= 0.0
        found.append(np.stack([a[good], b[good]], axis=1))
        count += int(good.sum())
    pairs = np.concatenate(found)[:n]
    side = int(np.ceil(np.sqrt(n)))
    lattice = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n] * spread
    pairs[:, :, :2] += lattice[:, None, :]
    return np.ascontiguousarray(pairs.reshape(2 * n, k))


def _nominal(model, x, rng, kind):
    """Random actions, or aimed at the other agent of the pair."""
    lo, hi = np.array(model.control_lo), np.array(model.control_hi)
    n = x.shape[0]
    if kind == "random":
        return rng.uniform(lo, hi, (n, lo.size))
    other = x.reshape(-1, 2, x.shape[1])[:, ::-1].reshape(x.shape)
    dp = other[:, :2] - x[:, :2]
    if model.name == "quadrotor":        # PD toward the other's position
        return np.clip(2.0 * dp - x[:, 2:4], lo, hi)
    bearing = (np.arctan2(dp[:, 1], dp[:, 0]) - x[:, 2] + np.pi) % (2 * np.pi) - np.pi
    return np.column_stack([np.clip(bearing, lo[0], hi[0]), rng.uniform(lo[1], hi[1], n)])


def _encounters(model, flt, x, steps, rng, kind, n_sub=10, opponent=None):
    """Sampled-data closed loop: actions from the filter (or the nominal ones if flt is None) held for the decision
    period, exact integration in n_sub sub-steps, separation of each pair checked at every sub-step.
    opponent(x) -> actions of the odd agents (the others) replaces theirs. Returns the per-pair minimum separation,
    the first step at which it fell below d (or a large number), the first best_effort step of the even agents
    and the status counts."""
    n = x.shape[0] // 2
    d = D[model.name]
    dt = model.decision_period
    min_sep = np.full(n, np.inf)
    first_violation = np.full(n, 10 ** 9)
    first_best_effort = np.full(n, 10 ** 9)
    counts = np.zeros(len(STATUS_NAMES), dtype=np.int64)
    for k in range(steps):
        u = _nominal(model, x, rng, kind)
        if flt is not None:
            res = flt.filter(x, u)
            # the kernel's intervention flags: the rule the simulator applies to any filter
            assert np.array_equal(res.intervened, intervened_flags(model, x, res.actions, u))
            u = res.actions.copy()
            counts += np.bincount(res.status, minlength=len(STATUS_NAMES))
            be = res.status[0::2] == BEST_EFFORT
            first_best_effort = np.where(be & (first_best_effort > k), k, first_best_effort)
        if opponent is not None:
            u[1::2] = opponent(x)
        for _ in range(n_sub):
            x = model.step_agents(x, u, dt / n_sub)
            xp = x.reshape(n, 2, -1)
            sep = np.hypot(xp[:, 0, 0] - xp[:, 1, 0], xp[:, 0, 1] - xp[:, 1, 1])
            first_violation = np.where((sep < d) & (first_violation > k), k, first_violation)
            min_sep = np.minimum(min_sep, sep)
    return min_sep, first_violation, first_best_effort, counts


STEPS = {"quadrotor": 50, "air_taxi": 30}      # 5 s and 30 s: the encounters play out


@pytest.mark.parametrize("kind", ["random", "aimed"])
@pytest.mark.parametrize("name", ["quadrotor", "air_taxi"])
def test_cooperative_filter_zero_violations_and_blind_collides(vfs, name, kind):
    model = get_model(name)
    coop = vfs[name]["cooperative"]
    d = D[name]
    flt = LayeredSafetyFilter(model, cooperative=coop, safety_distance=d, value_margin=MARGIN[name],
                              conflict_range=2 * d)
    rng = np.random.default_rng(11 if kind == "random" else 12)
    x0 = _sample_pairs(model, coop, flt, N_PAIRS, rng, spread=3 * model.observation_range)
    min_sep, _, _, counts = _encounters(model, flt, x0, STEPS[name], rng, kind)
    assert np.all(np.isfinite(min_sep))
    assert int(np.sum(min_sep < d)) == 0, f"separation violations, min {min_sep.min()}"
    assert counts[CORRECTED] + counts[MOST_SAFE] + counts[SEARCHED] > 1000      # the filter was exercised
    # the failure the filter prevents: the same encounters without it
    blind, _, _, _ = _encounters(model, None, x0, STEPS[name], np.random.default_rng(13), kind)
    assert int(np.sum(blind < d)) > (0.01 if kind == "random" else 0.25) * N_PAIRS


@pytest.mark.parametrize("kind", ["random", "aimed"])
@pytest.mark.parametrize("name", ["quadrotor", "air_taxi"])
def test_worst_case_filter_against_the_worst_case_opponent(vfs, name, kind):
    """The opponent plays the grid's worst-case control (the corner of its box minimizing dV/dt). The worst-case
    games are solved over a finite engagement horizon T_e (an opponent as agile as the ego can force a loss over a
    longer one), so safety is guaranteed at every step whose sampled-data check passes: the ego's separation never
    falls below d before the filter has reported best_effort, and within T_e of the start it never falls below d."""
    model = get_model(name)
    worst = vfs[name]["worst_case"]
    d = D[name]
    flt = LayeredSafetyFilter(model, worst_case=worst, mode="worst_case", safety_distance=d, conflict_range=2 * d,
                              value_margin=MARGIN[name])

    def opponent(x):
        xp = x.reshape(-1, 2, x.shape[1])
        s = model.relative_state(xp[:, 0], xp[:, 1])
        _, grad = worst.value_and_gradient(s, d)
        _, _, g_b = model.affine_terms(s)
        c_b = np.einsum("ni,nij->nj", grad, g_b)
        lo, hi = model.agent_control_bounds(xp[:, 1])
        return np.where(c_b > 0, lo, hi)

    rng = np.random.default_rng(21 if kind == "random" else 22)
    x0 = _sample_pairs(model, worst, flt, N_PAIRS, rng, spread=3 * model.observation_range)
    n_te = int(round(worst.attrs["engagement_horizon"] / model.decision_period))
    min_sep, first_v, first_be, counts = _encounters(model, flt, x0, 3 * n_te, rng, kind, opponent=opponent)
    violated = first_v < 10 ** 9
    silent = violated & (first_be > first_v)
    assert int(silent.sum()) == 0, f"{int(silent.sum())} pairs lost separation without a best_effort flag"
    early = first_v < n_te
    assert int(early.sum()) == 0, f"{int(early.sum())} pairs lost separation within T_e ({n_te} periods)"
    assert counts[CORRECTED] + counts[MOST_SAFE] > 100


# ------------------------------------------------------------------------------- diagnostics and the API
def _dense_scene(rng, n=400, side=40.0):
    pos = rng.uniform(0, side, (n, 2))
    vel = rng.uniform(-0.8, 0.8, (n, 2))
    return np.column_stack([pos, vel]), rng.uniform(-0.5, 0.5, (n, 2))


def _check_diagnostics_brute_force(flt, res, x, agents):
    """Agent i's R_c count, partner, pair value and Prop. 1 flag in `res` (a d = 0.5 m filter of states x) against
    all pairs, for every i in agents."""
    coop, worst = flt.cooperative_vf, flt.worst_case_vf
    shift = 0.5 + flt.value_margin
    rc = flt.conflict_range
    assert math.isfinite(rc) and rc > 0.5
    for i in agents:
        d2 = np.hypot(*(x[:, :2] - x[i, :2]).T)
        nb = np.flatnonzero((d2 <= flt.observation_range) & (np.arange(x.shape[0]) != i))
        assert res.n_in_conflict_range[i] == int(np.sum(d2[nb] < rc))
        if nb.size == 0:
            assert res.partner[i] == -1 and res.status[i] == NO_PARTNER
            continue
        s = x[nb] - x[i]
        dist = np.hypot(s[:, 0], s[:, 1])
        b = np.minimum(coop.value(s, shift), dist - 0.5)
        k = np.flatnonzero(b == b.min())
        assert res.partner[i] == nb[k].min()
        assert res.pair_value[i] == pytest.approx(b.min(), abs=1e-12)
        bw = np.minimum(worst.value(s, 0.5), dist - 0.5)
        unsafe = np.flatnonzero(bw < 0)
        if unsafe.size == 0:
            expect = True
        elif unsafe.size == 1:
            expect = bool(min(coop.value(s[unsafe], 0.5)[0], dist[unsafe][0] - 0.5) >= 0)
        else:
            expect = False
        assert res.conflict_free[i] == expect


def test_prioritization_and_diagnostics_match_brute_force(vfs):
    coop, worst = vfs["quadrotor"]["cooperative"], vfs["quadrotor"]["worst_case"]
    flt = LayeredSafetyFilter(QUAD, cooperative=coop, worst_case=worst, safety_distance=0.5)
    rng = np.random.default_rng(3)
    x, u = _dense_scene(rng)
    res = flt.filter(x, u)
    _check_diagnostics_brute_force(flt, res, x, range(x.shape[0]))
    mutual = mutual_pairs(res.partner)
    assert list(map(tuple, res.collision_pairs.tolist())) == mutual
    lo, hi = QUAD.agent_control_bounds(x)
    assert np.all(res.actions >= lo - 1e-12) and np.all(res.actions <= hi + 1e-12)
    assert np.array_equal(res.changed, np.any(np.abs(res.actions - u) > 1e-12 * (1 + np.abs(u)), axis=1))
    assert np.array_equal(res.intervened, intervened_flags(QUAD, x, res.actions, u))     # as in `_encounters`
    assert res.intervened.any() and not res.intervened[res.status <= NOMINAL_SAFE].any()
    assert set(np.unique(res.status)) <= set(STATUS_NAMES)
    # a cooperative pair solves one problem: each agent applies its own part
    for i, j in mutual[:20]:
        single = flt.filter_agent(x[i], u[i], x[[j]], u[[j]], ego_id=i, neighbor_ids=[j])
        other = flt.filter_agent(x[j], u[j], x[[i]], u[[i]], ego_id=j, neighbor_ids=[i])
        assert single.partner[0] == 0 and other.partner[0] == 0


def test_ten_thousand_agents_in_one_call(vfs):
    """10,000 agents at the density of `_dense_scene` (4 m^2 each) in one call: neighbours from the cell list, every
    agent gets an action in its box, and a sample of agents has the diagnostics of an all-pairs search (the per-agent
    cost at 1,000 and 10,000 agents is in benchmarks/client.py)."""
    coop, worst = vfs["quadrotor"]["cooperative"], vfs["quadrotor"]["worst_case"]
    flt = LayeredSafetyFilter(QUAD, cooperative=coop, worst_case=worst, safety_distance=0.5)
    rng = np.random.default_rng(11)
    x, u = _dense_scene(rng, n=10_000, side=200.0)
    res = flt.filter(x, u)
    lo, hi = QUAD.agent_control_bounds(x)
    assert res.actions.shape == (10_000, 2) and np.all((res.actions >= lo - 1e-12) & (res.actions <= hi + 1e-12))
    assert np.mean(res.partner >= 0) > 0.9       # a crowd: nearly every agent has a neighbour in range
    _check_diagnostics_brute_force(flt, res, x, rng.choice(10_000, 300, replace=False))
    assert list(map(tuple, res.collision_pairs.tolist())) == mutual_pairs(res.partner)


def test_filter_agent_matches_filter(vfs):
    coop, worst = vfs["quadrotor"]["cooperative"], vfs["quadrotor"]["worst_case"]
    flt = LayeredSafetyFilter(QUAD, cooperative=coop, worst_case=worst, safety_distance=0.5)
    rng = np.random.default_rng(4)
    x, u = _dense_scene(rng, n=200, side=20.0)
    res = flt.filter(x, u)
    diag = res.diagnostics()        # every field but the actions, by name
    assert set(diag) == {"partner", "pair_value", "changed", "intervened", "status", "margin", "n_in_conflict_range",
                         "collision_pairs", "conflict_free"}
    assert all(np.array_equal(v, getattr(res, k)) for k, v in diag.items())
    assert "conflict_free" not in LayeredSafetyFilter(QUAD, cooperative=coop, safety_distance=0.5).filter(x, u) \
        .diagnostics()
    for i in range(0, 200, 7):
        others = np.delete(np.arange(200), i)
        one = flt.filter_agent(x[i], u[i], x[others], u[others], ego_id=i, neighbor_ids=others)
        assert np.allclose(one.actions[0], res.actions[i], atol=1e-12)
        assert (others[one.partner[0]] if one.partner[0] >= 0 else -1) == res.partner[i]
        assert one.pair_value[0] == res.pair_value[i]
        assert one.status[0] == res.status[i]
        assert one.intervened[0] == res.intervened[i]
        assert one.n_in_conflict_range[0] == res.n_in_conflict_range[i]
        assert one.conflict_free[0] == res.conflict_free[i]
        assert one.collision_pairs.shape == (0, 2)
    # no neighbour in range: the nominal action clipped to the box
    one = flt.filter_agent([0, 0, 1.0, 0], [0.9, -0.2], np.empty((0, 4)))
    assert one.partner[0] == -1 and one.status[0] == NO_PARTNER
    assert np.allclose(one.actions[0], [0.0, -0.2])          # at vx = v_max no further acceleration
    assert one.changed[0] and not one.intervened[0]         # clipped to the box: changed, but no intervention


def test_filter_agent_out_rewrites_one_result_and_settings_take_effect(vfs):
    """out= returns the given result with the values of a fresh call; a setting assigned between calls (the
    config is cached) takes effect at the next call; bad out / responsibility are refused."""
    coop, worst = vfs["quadrotor"]["cooperative"], vfs["quadrotor"]["worst_case"]
    flt = LayeredSafetyFilter(QUAD, cooperative=coop, worst_case=worst, safety_distance=0.5)
    rng = np.random.default_rng(5)
    x, u = _dense_scene(rng, n=60, side=8.0)
    kept = flt.filter_agent(x[0], u[0], x[1:], u[1:])
    fields = ("actions", "partner", "pair_value", "changed", "status", "margin", "n_in_conflict_range",
              "conflict_free")
    for i in range(0, 60, 3):
        others = np.delete(np.arange(60), i)
        fresh = flt.filter_agent(x[i], u[i], x[others], u[others])
        again = flt.filter_agent(x[i], u[i], x[others], u[others], out=kept)
        assert again is kept
        for f in fields:
            assert np.array_equal(getattr(fresh, f), getattr(again, f)), f
    with pytest.raises(ValueError, match="out must be"):
        flt.filter_agent(x[0], u[0], x[1:], out=flt.filter(x, u))
    # settings are read at the next call: a larger value margin lowers the pair value by the difference
    before = flt.filter_agent(x[0], u[0], x[1:], u[1:]).pair_value[0]
    flt.value_margin += 0.25
    after = flt.filter_agent(x[0], u[0], x[1:], u[1:]).pair_value[0]
    assert after < before
    with pytest.raises(ValueError, match="responsibility"):
        flt.responsibility = -1.0
    with pytest.raises(StateError, match="neighbor_ids must have one id per neighbour"):
        flt.filter_agent(x[0], u[0], x[1:4], neighbor_ids=[5, 6])



def test_read_only_and_strided_inputs_give_the_same_result_without_recompiling(vfs):
    """Read-only, strided and Fortran-ordered inputs (arrays from zarr, np.broadcast_to, column slices) give the
    results of plain arrays, and the kernels never compile another specialization (seconds in a controller loop;
    before, read-only states made `filter` fail inside numba)."""
    coop, worst = vfs["quadrotor"]["cooperative"], vfs["quadrotor"]["worst_case"]
    flt = LayeredSafetyFilter(QUAD, cooperative=coop, worst_case=worst, safety_distance=0.5)
    x, u = _dense_scene(np.random.default_rng(8), n=40, side=7.0)

    def frozen(a):
        a = np.array(a)
        a.flags.writeable = False
        return a

    fields = ("actions", "partner", "pair_value", "status", "margin", "conflict_free")
    ref = flt.filter(x, u)
    for xs, us in ((frozen(x), frozen(u)), (np.asfortranarray(x), u), (np.hstack([x, x])[:, :4], frozen(u))):
        got = flt.filter(xs, us)
        for f in fields:
            assert np.array_equal(getattr(ref, f), getattr(got, f)), f
    one = flt.filter_agent(x[0], u[0], x[1:], u[1:], ego_id=0, neighbor_ids=np.arange(1, 40))
    wide, uwide = np.hstack([x, x]), np.hstack([u, u])
    for args in ((frozen(x[0]), frozen(u[0]), frozen(x[1:]), frozen(u[1:])),
                 (np.repeat(x[0], 2)[::2], uwide[0, 2:], np.asfortranarray(x[1:]), uwide[1:, :2]),
                 (x[0], u[0], wide[1:, :4], np.asfortranarray(u[1:]))):
        got = flt.filter_agent(*args, ego_id=0, neighbor_ids=frozen(np.arange(1, 40)))
        for f in fields:
            assert np.array_equal(getattr(one, f), getattr(got, f)), f
    assert len(flt._filter_all.signatures) == 1 and len(flt._filter_agent.signatures) == 1


def test_filter_agent_refuses_bad_ids(vfs):
    """ids order the cooperative pair problem: they must be integers and distinct (a shared id would give the two
    agents different views of their pair problem)."""
    flt = LayeredSafetyFilter(QUAD, cooperative=vfs["quadrotor"]["cooperative"], safety_distance=0.5)
    ego, nb = np.zeros(4), np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.5, 0.0, 0.0]])
    with pytest.raises(StateError, match="distinct: rows 0 and 2"):
        flt.filter_agent(ego, np.zeros(2), nb, ego_id=3, neighbor_ids=[4, 3])
    with pytest.raises(StateError, match="distinct: rows 1 and 2"):
        flt.filter_agent(ego, np.zeros(2), nb, ego_id=0, neighbor_ids=[4, 4])
    with pytest.raises(StateError, match="neighbor_ids must be integers"):
        flt.filter_agent(ego, np.zeros(2), nb, ego_id=0, neighbor_ids=[1.0, 2.7])
    for bad in (1.5, "a", True, None, 2**70):
        with pytest.raises(StateError, match="ego_id must be a 64-bit integer"):
            flt.filter_agent(ego, np.zeros(2), nb, ego_id=bad, neighbor_ids=[1, 2])
    a = flt.filter_agent(ego, np.zeros(2), nb, ego_id=np.int32(0), neighbor_ids=np.array([1, 2], np.int32))
    b = flt.filter_agent(ego, np.zeros(2), nb, ego_id=0, neighbor_ids=[1, 2])
    assert np.array_equal(a.actions, b.actions) and a.partner[0] == b.partner[0] == 0


def _head_on(speed=0.9, gap=1.2):
    return np.array([[0.0, 0.0, speed, 0.0], [gap, 0.0, -speed, 0.0]])


def test_responsibility_weights_split_the_correction(vfs):
    coop = vfs["quadrotor"]["cooperative"]
    x = _head_on()
    u = np.array([[0.5, 0.0], [-0.5, 0.0]])       # both accelerate into each other
    eq = LayeredSafetyFilter(QUAD, cooperative=coop, safety_distance=0.5, value_margin=0.0).filter(x, u)
    assert np.all(eq.changed)
    da = np.abs(eq.actions - u)
    assert da[0, 0] == pytest.approx(da[1, 0], rel=1e-6)          # equal split by default
    flt = LayeredSafetyFilter(QUAD, cooperative=coop, safety_distance=0.5, value_margin=0.0,
                              responsibility=np.array([1.0, 0.0]))
    res = flt.filter(x, u)
    assert np.allclose(res.actions[1], u[1])                       # r = 0 keeps its nominal action
    assert res.changed[0] and not res.changed[1]
    with pytest.raises(ValueError):
        LayeredSafetyFilter(QUAD, cooperative=coop, responsibility=np.array([1.0, -1.0])).filter(x, u)


def test_most_safe_when_the_box_cannot_satisfy_the_constraint(vfs):
    coop = vfs["quadrotor"]["cooperative"]
    flt = LayeredSafetyFilter(QUAD, cooperative=coop, safety_distance=0.5, value_margin=0.0, vertex_search=False)
    # closing fast and close: no control in the box satisfies the constraint
    x = np.array([[0.0, 0.0, 1.0, 0.0], [0.75, 0.02, -1.0, 0.0]])
    res = flt.filter(x, np.array([[0.5, 0.0], [-0.5, 0.0]]))
    assert res.pair_value[0] < 0.05
    assert set(res.status) <= {MOST_SAFE, BEST_EFFORT}
    # the most-safe control brakes both agents at full authority along the line of sight
    assert res.actions[0, 0] == pytest.approx(-0.5) and res.actions[1, 0] == pytest.approx(0.5)
    assert np.all(res.changed)


def test_far_apart_agents_keep_their_nominal_actions(vfs):
    coop = vfs["quadrotor"]["cooperative"]
    flt = LayeredSafetyFilter(QUAD, cooperative=coop, safety_distance=0.5)
    x = np.array([[0.0, 0.0, 0.2, 0.0], [3.9, 0.0, 0.0, 0.0], [100.0, 0, 0, 0]])
    u = np.array([[0.1, 0.1], [-0.1, 0.0], [0.3, 0.3]])
    res = flt.filter(x, u)
    assert np.allclose(res.actions, u) and not res.changed.any()
    assert list(res.partner) == [1, 0, -1]
    assert list(res.status) == [NOMINAL_SAFE, NOMINAL_SAFE, NO_PARTNER]
    assert res.collision_pairs.tolist() == [[0, 1]]
    assert np.isinf(res.pair_value[2])
    assert res.conflict_free is None                 # Prop. 1 needs both value functions


def test_input_errors(vfs, tiny_store):
    coop = vfs["quadrotor"]["cooperative"]
    flt = LayeredSafetyFilter(QUAD, cooperative=coop, safety_distance=0.5)
    x = _head_on(gap=2.0)
    u = np.zeros((2, 2))
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(StateError, match=r"states\[1, 2\]"):
        flt.filter(bad, u)
    with pytest.raises(StateError, match=r"nominal_actions\[0, 1\]"):
        flt.filter(x, np.array([[0.0, np.inf], [0.0, 0.0]]))
    with pytest.raises(StateError, match="shape"):
        flt.filter(x[:, :3], u)
    with pytest.raises(StateError, match="shape"):
        flt.filter(x, u[:1])
    with pytest.raises(StateError, match="NaN"):
        flt.filter_agent([0, 0, np.nan, 0], [0, 0], x[1:])
    with pytest.raises(StateError, match="real numbers"):       # not silently the real part
        flt.filter(x.astype(complex), u)
    with pytest.raises(StateError, match="real numbers"):
        flt.filter_agent(["0", "0", "0", "0"], [0, 0], x[1:])
    # a relative velocity outside a grid's bounds is an error, never extrapolation (tiny grid: +-1 m/s)
    tiny = ValueFunction.load(tiny_store, "quad_tiny/cooperative")
    small = LayeredSafetyFilter(QUAD, cooperative=tiny, safety_distance=0.5)
    with pytest.raises(StateError, match="vx.*outside"):
        small.filter(np.array([[0.0, 0, 0.9, 0], [3.5, 0, -0.9, 0]]), u)     # pruned pair still checked
    with pytest.raises(ValueError):
        LayeredSafetyFilter(QUAD, cooperative=coop, mode="nope")
    with pytest.raises(ValueError):
        LayeredSafetyFilter(QUAD, worst_case=vfs["quadrotor"]["worst_case"])       # cooperative mode needs coop
    with pytest.raises(ValueError):
        LayeredSafetyFilter(QUAD, cooperative=coop, gamma_cbf=100.0)
    with pytest.raises(ValueError):
        LayeredSafetyFilter(TAXI, cooperative=coop)


def test_neighbor_lists_match_brute_force():
    rng = np.random.default_rng(5)
    for n, side, r in [(0, 1, 1), (1, 1, 1), (7, 0.0, 1.0), (500, 30.0, 4.0), (300, 3000.0, 2.0), (2000, 60, 4)]:
        pos = rng.uniform(0, side, (n, 2)) if side > 0 else np.zeros((n, 2))
        indptr, indices = neighbor_lists(pos, r)
        dd = np.hypot(*(pos[:, None, :] - pos[None, :, :]).transpose(2, 0, 1)) if n else np.zeros((0, 0))
        for i in range(n):
            expect = np.flatnonzero(dd[i] <= r)
            assert np.array_equal(np.sort(indices[indptr[i]:indptr[i + 1]]), expect[expect != i])
        pa, pb = close_pairs(pos, r)
        assert pa.size == indices.size // 2
        assert np.all(pa != pb)


def test_verlet_lists_give_the_fresh_neighbours():
    """verlet_neighbor_lists over a sequence of moving positions (small steps, a jump, another number of agents) gives
    exactly neighbor_lists' neighbours, rebuilds only when an agent has moved more than half the skin, and never
    writes its inputs."""
    rng = np.random.default_rng(8)
    pos = rng.uniform(0, 30, (200, 2))
    ref = (np.empty((0, 2)), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    rebuilt = []
    for k in range(40):
        if k == 20:
            pos = pos + 5.0                     # every agent jumps
        elif k == 30:
            pos = pos[:150].copy()              # agents left
        else:
            pos = pos + rng.uniform(-0.08, 0.08, pos.shape)
        before = [a.copy() for a in ref]
        indptr, indices, *new = verlet_neighbor_lists(pos, 4.0, 1.0, *ref)
        assert all(np.array_equal(a, b) for a, b in zip(ref, before))
        rebuilt.append(new[0] is not ref[0])
        if not rebuilt[-1]:
            assert np.max(np.hypot(*(pos - ref[0]).T)) <= 0.5
        ref = tuple(new)
        fptr, fidx = neighbor_lists(pos, 4.0)
        for i in range(len(pos)):
            assert np.array_equal(np.sort(indices[indptr[i]:indptr[i + 1]]), np.sort(fidx[fptr[i]:fptr[i + 1]]))
    assert rebuilt[0] and rebuilt[20] and rebuilt[30] and sum(rebuilt) < 20


def test_filter_keeps_its_neighbour_search_between_calls(vfs):
    """A filter called along a trajectory (and after its observation range changed) gives bitwise the result of a new
    filter at every step, while reusing its Verlet list on most steps."""
    coop, worst = vfs["quadrotor"]["cooperative"], vfs["quadrotor"]["worst_case"]
    flt = LayeredSafetyFilter(QUAD, cooperative=coop, worst_case=worst, safety_distance=0.5)
    rng = np.random.default_rng(9)
    x, u = _dense_scene(rng, n=150, side=25.0)
    reused = 0
    for k in range(30):
        if k == 15:
            flt.observation_range = 3.0
        last = flt._verlet[0]
        res = flt.filter(x, u)
        reused += flt._verlet[0] is last
        new = LayeredSafetyFilter(QUAD, cooperative=coop, worst_case=worst, safety_distance=0.5,
                                  observation_range=flt.observation_range).filter(x, u)
        for f in ("actions", "partner", "pair_value", "status", "margin", "n_in_conflict_range", "conflict_free",
                  "intervened", "collision_pairs"):
            np.testing.assert_array_equal(getattr(res, f), getattr(new, f), err_msg=f"step {k}: {f}")
        x = QUAD.step_agents(x, res.actions, QUAD.decision_period)
        u = rng.uniform(-0.5, 0.5, u.shape)
    assert reused >= 15


def test_far_apart_agents_are_binned_without_overflow(vfs):
    """Agents billions of metres apart (e.g. parked far away) get exact neighbour lists, and the filter runs on
    them (the cell counts once overflowed int64 and wrote outside the cell array); a span beyond the float range
    is a clear error."""
    for pos, r in [(np.array([[0.0, 0.0], [1.0, 0.0], [3e10, 3e10]]), 4.0),
                   (np.array([[0.0, 0.0], [2.0**32 - 0.5, 2.0**32 - 0.5], [1.0, 0.0]]), 1.0)]:
        indptr, indices = neighbor_lists(pos, r)
        near = {i: sorted(indices[indptr[i]:indptr[i + 1]]) for i in range(3)}
        assert near == {0: [1], 1: [0], 2: []} if pos[2, 0] > 1e9 else near == {0: [2], 1: [], 2: [0]}
    e = 4.0 * (2.0**32 - 0.5)
    x = np.array([[0.0, 0.0, 0.2, 0.0], [1.0, 0.0, -0.2, 0.0], [e, e, 0.0, 0.0]])
    res = LayeredSafetyFilter(QUAD, cooperative=vfs["quadrotor"]["cooperative"]).filter(x, np.zeros((3, 2)))
    assert list(res.partner) == [1, 0, -1]
    with pytest.raises(ValueError, match="float range"):
        neighbor_lists(np.array([[-1e308, 0.0], [1e308, 0.0]]), 1.0)


def test_settings_assigned_later_are_checked_and_defaults_follow(vfs):
    """A setting assigned after construction acts like the same constructor argument: mode picks its value
    function, R_c follows d and gamma follows dt while left to their defaults, None restores a default, and a bad
    value is refused at the next call with the constructor's message."""
    coop, worst = vfs["quadrotor"]["cooperative"], vfs["quadrotor"]["worst_case"]
    x, u = _dense_scene(np.random.default_rng(3), n=40, side=6.0)

    def same(a, b):
        return all(np.array_equal(getattr(a, k), getattr(b, k)) for k in
                   ("actions", "pair_value", "partner", "status", "n_in_conflict_range", "conflict_free"))

    for name, value in [("mode", "worst_case"), ("safety_distance", 0.3), ("decision_period", 0.2),
                        ("observation_range", 2.0), ("n_checks", 2), ("value_margin", 0.1), ("gamma_cbf", 1.0)]:
        flt = LayeredSafetyFilter(QUAD, cooperative=coop, worst_case=worst, safety_distance=0.5)
        flt.filter(x, u)
        setattr(flt, name, value)
        fresh = LayeredSafetyFilter(QUAD, cooperative=coop, worst_case=worst,
                                    **{"safety_distance": 0.5, name: value})
        assert same(flt.filter(x, u), fresh.filter(x, u)), name
        assert (flt.conflict_range, flt.gamma_cbf) == (fresh.conflict_range, fresh.gamma_cbf), name
    flt = LayeredSafetyFilter(QUAD, cooperative=coop, worst_case=worst, safety_distance=0.5)
    default = flt.filter(x, u)
    flt.value_margin = 0.3
    flt.value_margin = None
    assert same(flt.filter(x, u), default)
    for name, value, match in [("mode", "bogus", "mode must be"), ("value_margin", math.nan, "value_margin"),
                               ("observation_range", math.nan, "observation_range"), ("gamma_cbf", 1e6, "gamma_cbf"),
                               ("gamma_cbf", -5.0, "gamma_cbf"), ("max_iter", -1, "max_iter"),
                               ("n_checks", 0, "n_checks"), ("decision_period", 0.0, "decision_period"),
                               ("conflict_range", math.nan, "conflict_range"), ("safety_distance", 5.0, "outside")]:
        flt = LayeredSafetyFilter(QUAD, cooperative=coop, worst_case=worst, safety_distance=0.5)
        setattr(flt, name, value)
        with pytest.raises(ValueError, match=match):
            flt.filter(x, u)
        with pytest.raises(ValueError, match=match):
            flt.filter_agent(x[0], u[0], x[1:])


@pytest.mark.parametrize("name", ["quadrotor", "air_taxi"])
@pytest.mark.parametrize("block", [None, 2, 3])
def test_norm_deficit_tables_bound_the_value_from_below(vfs, name, block):
    """V0(s) >= ||p|| - C at random states in (and beyond) the grid, for the table over all positions and the
    per-block tables (`_block_cell`; a block size that does not divide the cells leaves a smaller last block),
    and every block's C is at most the all-positions C of its cell (the finer table only tightens the bound)."""
    from clients.filter import _block_cell, _n_blocks, _table_cell, norm_deficit_table

    for vf in vfs[name].values():
        packed, lo, inv_dx, npts, per, _ = vf.kernel_args()
        coarse, strides = norm_deficit_table(vf)
        table, strides_b = norm_deficit_table(vf, block)
        np.testing.assert_array_equal(strides, strides_b)
        nby = _n_blocks(vf.shape, block)[1] if block else 1
        assert np.all(table.reshape(-1, coarse.shape[0]) <= coarse)
        rng = np.random.default_rng(3)
        s = rng.uniform(vf.lo, vf.hi, size=(4000, vf.n))
        s[:200, :2] *= 1.5          # some beyond the position extent (V = +inf)
        d = vf.effective_safety_distance()
        v0 = vf.value(s, d) + vf.shift(d)
        cells = [_table_cell(s, p, vf.n, lo, inv_dx, npts, per, strides)[0] for p in range(len(s))]
        c = table[[_block_cell(s, p, lo, inv_dx, npts, block or 1 << 30, nby, coarse.shape[0], cells[p])
                   for p in range(len(s))]]
        assert np.all(v0 >= np.hypot(s[:, 0], s[:, 1]) - c)
        assert np.isinf(v0[:200]).any() and np.isfinite(v0[200:]).all()


@pytest.mark.parametrize("name", ["quadrotor", "air_taxi"])
def test_local_rate_table_bounds_the_barrier_over_one_period(vfs, name):
    """|B(s(tau)) - B(s0)| <= Lambda[cell of s0] tau for random pairs inside the grid and random box controls
    held over tau <= dt (the bound that lets the filter skip a sampled-data check), and Lambda never exceeds the
    global bound (quadrotor: well below it in most cells)."""
    from clients.filter import _table_cell, local_rate_table, norm_deficit_table
    from reach.models import get_model

    model = get_model(name)
    vf = vfs[name]["cooperative"]
    dt = model.decision_period
    table = local_rate_table(vf, model, dt)
    _, strides = norm_deficit_table(vf)
    packed, lo, inv_dx, npts, per, _ = vf.kernel_args()
    v = np.asarray(packed[:, 0], dtype=np.float64).reshape(vf.shape)
    lip = np.array([max(np.max(np.abs(np.diff(v, axis=i))),
                        np.max(np.abs(np.take(v, [0], axis=i) - np.take(v, [-1], axis=i))) if per[i] else 0.0)
                    * inv_dx[i] for i in range(vf.n)])
    lip[:2] = np.maximum(lip[:2], 1.0)
    global_rate = float(np.sum(lip * model.dissipation_bounds(vf.lo, vf.hi.copy())))
    assert np.all(table <= global_rate + 1e-9)
    if name == "quadrotor":     # (the air taxi's position rates, omega x the extent, are large everywhere)
        assert np.median(table) < 0.9 * global_rate
    rng = np.random.default_rng(7)
    flt = LayeredSafetyFilter(model, cooperative=vf)
    x = _sample_pairs(model, vf, flt, 2000, rng, spread=0.0).reshape(-1, 2, model.n_agent_states)
    a, b = np.ascontiguousarray(x[:, 0]), np.ascontiguousarray(x[:, 1])
    s0 = model.relative_state(a, b)
    d = flt.safety_distance

    def barrier(s):       # B = min(V, ||p||) - d inside the grid (the filter's bound is for pairs inside it)
        return np.minimum(vf.value(s, d), np.hypot(s[:, 0], s[:, 1]) - d)

    cells = np.array([_table_cell(s0, p, vf.n, lo, inv_dx, npts, per, strides)[0] for p in range(s0.shape[0])])
    lam = table[cells]
    b0 = barrier(s0)
    ua = rng.uniform(model.control_lo, model.control_hi, (a.shape[0], model.n_controls))
    ub = rng.uniform(model.control_lo, model.control_hi, (a.shape[0], model.n_controls))
    corner = rng.random(a.shape[0]) < 0.5      # half of them bang-bang
    ua[corner] = np.where(ua[corner] > 0, model.control_hi, model.control_lo)
    for tau in (0.25 * dt, 0.5 * dt, dt):
        s1 = model.relative_state(model.step_agents(a, ua, tau), model.step_agents(b, ub, tau))
        inside = vf.in_domain(s0) & vf.in_domain(s1)
        assert inside.mean() > 0.8
        assert np.all(np.abs(barrier(s1) - b0)[inside] <= lam[inside] * tau + 1e-6)
    # the stored-gradient table (the pair problem's skip): >= the interpolant's, and it bounds grad B . s' with the
    # gradient the linear constraint uses (stored gradient, or p / ||p|| on the norm branch), every box control
    table_g = local_rate_table(vf, model, dt, stored_gradient=True)
    assert np.all(table_g >= table - 1e-12)
    lo_a, hi_a = model.agent_control_bounds(a)
    lo_b, hi_b = model.agent_control_bounds(b)
    ua, ub = np.clip(ua, lo_a, hi_a), np.clip(ub, lo_b, hi_b)
    v, grad = vf.value_and_gradient(s0, d)
    dist = np.hypot(s0[:, 0], s0[:, 1])
    norm = dist - d < v
    grad[norm] = 0.0
    grad[norm, 0], grad[norm, 1] = s0[norm, 0] / dist[norm], s0[norm, 1] / dist[norm]
    f, ga, gb = model.affine_terms(s0)
    rate = np.einsum("pi,pi->p", grad, f + np.einsum("pik,pk->pi", ga, ua) + np.einsum("pik,pk->pi", gb, ub))
    ok = vf.in_domain(s0)
    assert np.all(np.abs(rate[ok]) <= table_g[cells][ok] + 1e-9)
