"""Solver: closed form, refinement, convergence stop, CBVF, resume, agreement with plain hj_reachability."""

import numpy as np
import pytest

from reach.grid import GridSpec, make_grid
from reach.models import get_model
from reach.solver import SolverError, SolverSettings, central_gradient, solve, target_function

QUAD = get_model("quadrotor")
SMALL = GridSpec((-3, -3, -2, -2), (3, 3, 2, 2), (19, 19, 13, 13))
T_E = 0.4


def closed_form_worst_case(coordinates, horizon):
    """Quadrotor worst case: controls cancel, V(s, T) = min_{t in [0, T]} ||p + v t|| (pure drift)."""
    grid = np.stack(np.meshgrid(*coordinates, indexing="ij"), -1)
    p, v = grid[..., :2], grid[..., 2:]
    vv = np.sum(v * v, -1)
    t_star = np.clip(-np.sum(p * v, -1) / np.where(vv > 0, vv, 1.0), 0.0, horizon)
    return np.linalg.norm(p + v * t_star[..., None], axis=-1), grid


def inner_errors(result, value, horizon):
    exact, grid = closed_form_worst_case(result.coordinates, horizon)
    # Edges of the position box feed extrapolated data inward at |v| <= 2 m/s for `horizon` s: leave 1 m out.
    inner = (np.abs(grid[..., 0]) <= 2) & (np.abs(grid[..., 1]) <= 2)
    err = np.abs(value - exact)
    return err[inner].mean(), err[inner & (exact > 0.5)].max()


@pytest.fixture(scope="module")
def worst_small():
    return solve(QUAD, SMALL, "worst_case", SolverSettings(engagement_horizon=T_E), progress=False)


def test_worst_case_matches_closed_form(worst_small):
    r = worst_small
    assert r.horizons == pytest.approx((0.1, 0.2, 0.3, 0.4))
    assert r.horizon == pytest.approx(T_E)
    assert r.value_at_horizon.shape == (4,) + SMALL.points
    np.testing.assert_array_equal(r.value_at_horizon[-1], r.value)
    for h, v in zip(r.horizons, r.value_at_horizon):
        mean_err, far_max = inner_errors(r, v, h)
        # Measured on this grid: mean <= 0.0085 m, max 0.12 m where V > 0.5 m (dx = 0.33 m, dv = 0.33 m/s).
        assert mean_err < 0.012, (h, mean_err)
        assert far_max < 0.16, (h, far_max)
    # Tube form: the value can only drop as the horizon grows (up to WENO's small non-monotone wiggles at the
    # kinks, measured 0.010 m = 3 % of dx), and never exceeds l.
    assert np.all(np.diff(r.value_at_horizon, axis=0) <= 0.02)
    assert np.all(r.value <= target_function(QUAD, SMALL) + 1e-6)


def test_grid_refinement_reduces_error():
    errors = []
    for n, m in ((13, 9), (25, 17)):
        spec = GridSpec(SMALL.lo, SMALL.hi, (n, n, m, m))
        r = solve(QUAD, spec, "worst_case", SolverSettings(engagement_horizon=T_E, snapshot_horizons=()),
                  progress=False)
        errors.append(inner_errors(r, r.value, T_E)[0])
    assert errors[1] < 0.6 * errors[0], errors


def test_matches_plain_hj_reachability(worst_small):
    """Same discretization through hj.solve (adaptive CFL steps, our Dynamics): values agree closely."""
    import hj_reachability as hj
    import jax.numpy as jnp

    grid = make_grid(QUAD, SMALL)
    target = jnp.asarray(target_function(QUAD, SMALL))
    settings = hj.SolverSettings.with_accuracy("high", value_postprocessor=lambda t, v: jnp.minimum(v, target))
    values = hj.solve(settings, QUAD.hj_dynamics("worst_case"), grid, jnp.array([0.0, -T_E]), target,
                      progress_bar=False)
    diff = np.abs(np.asarray(values[-1]) - worst_small.value)
    # hj takes 9 CFL steps + a short one, we take 12 equal ones: only the kinks differ (measured mean 9e-5 m,
    # max 0.008 m).
    assert diff.mean() < 5e-4 and diff.max() < 0.02, (diff.mean(), diff.max())


def test_cooperative_converges_before_max_horizon():
    settings = SolverSettings(tolerance=1e-3, window=0.5, max_horizon=20.0)
    r = solve(QUAD, SMALL, "cooperative", settings, progress=False)
    assert r.converged and r.horizon < settings.max_horizon
    assert r.residuals[-1] < settings.tolerance <= r.residuals[-2]  # stopped at the first window under tol
    np.testing.assert_allclose(r.residual_times, 0.5 * np.arange(1, len(r.residuals) + 1))
    assert r.residuals[-1] < 0.01 * r.residuals[0]
    assert r.value_at_horizon is None and r.horizons == ()
    assert r.gradient.shape == SMALL.points + (4,)


def test_max_horizon_stop_is_not_converged(worst_small):
    r = solve(QUAD, SMALL, "cooperative", SolverSettings(tolerance=1e-3, window=0.2, max_horizon=T_E),
              progress=False)
    assert not r.converged and r.horizon == pytest.approx(T_E)
    assert len(r.residuals) == 2 and r.residuals[-1] >= 1e-3
    # Cooperation can only help: V_coop >= V_worst at the same horizon.
    assert np.all(r.value >= worst_small.value - 1e-4)


def test_cbvf_discount_keeps_sign_and_moves_away_from_zero():
    """CBVF, gamma > 0: B = max_u min_t e^{gamma t} l(x(t)) with l = ||p|| - d. Where V_d = V0 - d > 0 the
    discount weights later (larger) times up, so B >= V_d; where V_d < 0 it weights the violation up, B <= V_d.
    The zero level set is the same."""
    d, settings = 0.5, SolverSettings(engagement_horizon=T_E, snapshot_horizons=())
    plain = solve(QUAD, SMALL, "worst_case", settings, progress=False)
    disc = solve(QUAD, SMALL, "worst_case", settings, gamma=2.0, safety_distance=d, progress=False)
    assert disc.safety_distance == d and disc.gamma == 2.0
    v_d = plain.value - d
    # Next to the zero level (|V_d| < dx / 3) the two discretizations differ by up to 0.05 m (measured).
    safe, unsafe = v_d > 0.1, v_d < -0.1
    assert np.all(disc.value[safe] >= v_d[safe] - 2e-3)
    assert np.all(disc.value[unsafe] <= v_d[unsafe] + 2e-3)
    assert np.all(disc.value[safe] > 0) and np.all(disc.value[unsafe] < 0)
    assert np.max(disc.value - v_d) > 0.05  # the discount does change the value


def test_overflowing_values_are_an_error_not_a_converged_grid():
    """With gamma > 0, V < 0 grows like exp(gamma t): a long horizon overflows float32. Before, the -inf residual
    passed the test residual < tolerance and the grid was published as converged."""
    tiny = GridSpec((-2, -2, -1, -1), (2, 2, 1, 1), (11, 11, 7, 7))
    settings = SolverSettings(tolerance=0.005, window=0.2, chunk=0.2, max_horizon=4.0)
    with pytest.raises(SolverError, match="overflowed .* by t = 3.6 s"):
        solve(QUAD, tiny, "cooperative", settings, gamma=10.0, safety_distance=0.5, progress=False)


class MemoryCheckpoint:
    """In-memory `Checkpoint`; `fail_after` saves, it raises (a killed run)."""

    def __init__(self, fail_after=None):
        self.state, self.saves, self.fail_after = None, 0, fail_after

    def load(self):
        return self.state

    def save(self, time, values, residual_times, residuals):
        self.state = (time, values.copy(), residual_times.copy(), residuals.copy())
        self.saves += 1
        if self.fail_after is not None and self.saves >= self.fail_after:
            raise KeyboardInterrupt("killed")


@pytest.mark.parametrize("game", ["cooperative", "worst_case"])
def test_resume_equals_uninterrupted(game):
    spec = GridSpec((-3, -3, -2, -2), (3, 3, 2, 2), (13, 13, 9, 9))
    settings = SolverSettings(chunk=0.5 if game == "cooperative" else 0.1, engagement_horizon=T_E,
                              max_horizon=4.0)
    full = solve(QUAD, spec, game, settings, progress=False)
    ckpt = MemoryCheckpoint(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        solve(QUAD, spec, game, settings, progress=False, checkpoint=ckpt)
    assert ckpt.state[0] == pytest.approx(1.0 if game == "cooperative" else 0.2)
    ckpt.fail_after = None
    resumed = solve(QUAD, spec, game, settings, progress=False, checkpoint=ckpt)
    np.testing.assert_array_equal(resumed.value, full.value)
    np.testing.assert_array_equal(resumed.residuals, full.residuals)
    assert resumed.horizon == full.horizon and resumed.converged == full.converged
    if game == "worst_case":
        np.testing.assert_array_equal(resumed.value_at_horizon, full.value_at_horizon)
    # A finished checkpoint resumes to the same result without stepping.
    again = solve(QUAD, spec, game, settings, progress=False, checkpoint=ckpt)
    assert again.n_steps == 0
    np.testing.assert_array_equal(again.value, full.value)


def test_air_taxi_smoke_periodic_and_state_dependent_controls():
    model = get_model("air_taxi")
    spec = GridSpec((-3000, -3000, -np.pi, model.parameters["v_min"], model.parameters["v_min"]),
                    (3000, 3000, np.pi, model.parameters["v_max"], model.parameters["v_max"]), (11, 11, 8, 5, 5))
    r = solve(model, spec, "worst_case", SolverSettings(engagement_horizon=2.0, window=1.0), progress=False)
    assert r.coordinates[2][0] == pytest.approx(-np.pi) and r.coordinates[2][-1] < np.pi
    assert np.all(np.isfinite(r.value)) and np.all(r.value <= target_function(model, spec) + 1e-3)
    assert r.horizons == pytest.approx((1.0, 2.0))
    # Exact bounds: x_r' <= v_max + v_max + 0.1 * 3000 m/s; the CFL step follows from them.
    alpha = model.dissipation_bounds(spec.lo, spec.hi)
    assert alpha[0] == pytest.approx(2 * 90.03 + 300.0)
    assert r.time_step <= 0.75 / np.sum(alpha / spec.spacings(model)) + 1e-12


def test_central_gradient_periodic_and_edges():
    x = np.linspace(0, 1, 6)
    th = np.linspace(-np.pi, np.pi, 8, endpoint=False)
    X, T = np.meshgrid(x, th, indexing="ij")
    g = central_gradient(3 * X + np.sin(T), (x, th), (False, True))
    np.testing.assert_allclose(g[..., 0], 3.0, rtol=1e-6)
    h = th[1] - th[0]
    np.testing.assert_allclose(g[..., 1], np.cos(T) * np.sin(h) / h, atol=1e-6)


def test_argument_errors():
    with pytest.raises(ValueError, match="scheme"):
        SolverSettings(scheme="WENO7")
    with pytest.raises(ValueError, match="safety_distance"):
        solve(QUAD, SMALL, "cooperative", gamma=1.0, progress=False)
    with pytest.raises(ValueError, match="safety_distance"):
        solve(QUAD, SMALL, "cooperative", safety_distance=0.5, progress=False)
    with pytest.raises(ValueError, match="game"):
        solve(QUAD, SMALL, "friendly", progress=False)
    with pytest.raises(ValueError, match="dims"):
        solve(QUAD, GridSpec((0,) * 3, (1,) * 3, (5,) * 3), "cooperative", progress=False)


@pytest.mark.parametrize("scheme", ["first_order", "WENO3", "WENO5", "ENO2"])
def test_upwind_grads_match_hj(scheme):
    """Our axis-sliced upwind derivatives are hj's `Grid.upwind_grad_values`, bit for bit (periodic dim too)."""
    import hj_reachability as hj
    import jax
    import jax.numpy as jnp
    from reach.solver import _upwind_grads

    model = get_model("air_taxi")
    spec = GridSpec((-3000, -3000, -np.pi, 30.87, 30.87), (3000, 3000, np.pi, 90.03, 90.03), (9, 10, 11, 7, 6))
    grid = make_grid(model, spec)
    values = jnp.asarray(np.random.default_rng(0).normal(size=spec.points) + 1.0, jnp.float32)
    hj_scheme = getattr(hj.finite_differences.upwind_first, scheme)
    left, right = jax.jit(lambda g, v: g.upwind_grad_values(hj_scheme, v))(grid, values)
    ours_left, ours_right = jax.jit(lambda g, v: _upwind_grads(g, scheme, v))(grid, values)
    for i in range(5):
        np.testing.assert_array_equal(np.asarray(ours_left[i]), np.asarray(left[..., i]))
        np.testing.assert_array_equal(np.asarray(ours_right[i]), np.asarray(right[..., i]))
