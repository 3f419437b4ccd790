"""Models: numba kernels vs JAX Hamiltonian side, frame conventions, integration accuracy, limits, bounds."""

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

from reach.models import MODELS, UnknownModelError, get_model
from reach.models import air_taxi, quadrotor

BOXES = {  # relative-state boxes the grids use
    "quadrotor": (np.array([-3.0, -3.0, -2.0, -2.0]), np.array([3.0, 3.0, 2.0, 2.0])),
    "air_taxi": (np.array([-6000.0, -6000.0, -math.pi, air_taxi.V_MIN, air_taxi.V_MIN]),
                 np.array([6000.0, 6000.0, math.pi, air_taxi.V_MAX, air_taxi.V_MAX])),
}


def random_states(name, rng, n):
    lo, hi = BOXES[name]
    s = rng.uniform(lo, hi, size=(n, len(lo)))
    # Put some states exactly at the speed bounds (state-dependent controls).
    if name == "air_taxi":
        s[: n // 4, 3] = air_taxi.V_MAX
        s[n // 4: n // 2, 4] = air_taxi.V_MIN
    else:
        s[: n // 4, 2] = 2 * quadrotor.V_MAX
        s[n // 4: n // 2, 3] = -2 * quadrotor.V_MAX
    return s


def random_agents(name, rng, n):
    if name == "quadrotor":
        return np.column_stack([rng.uniform(-3, 3, (n, 2)), rng.uniform(-1, 1, (n, 2))])
    return np.column_stack([rng.uniform(-3000, 3000, (n, 2)), rng.uniform(-math.pi, math.pi, n),
                            rng.uniform(air_taxi.V_MIN, air_taxi.V_MAX, n)])


def random_controls(model, rng, n):
    return rng.uniform(model.control_lo, model.control_hi, size=(n, model.n_controls))


def test_registry_and_unknown_model():
    assert set(MODELS) == {"quadrotor", "air_taxi"}
    with pytest.raises(UnknownModelError) as err:
        get_model("blimp")
    assert "blimp" in str(err.value) and "air_taxi" in str(err.value) and "quadrotor" in str(err.value)
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)


def test_models_import_without_jax():
    code = "import sys, reach.models; assert 'jax' not in sys.modules, 'models imported jax'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("game", ["cooperative", "worst_case"])
def test_jax_dynamics_match_numba(name, game):
    import jax
    import jax.numpy as jnp

    model = get_model(name)
    rng = np.random.default_rng(0)
    s = random_states(name, rng, 64)
    u_a, u_b = random_controls(model, rng, 64), random_controls(model, rng, 64)
    grad = rng.normal(size=s.shape)
    f, g_a, g_b = model.affine_terms(s)
    expected_rate = f + np.einsum("kij,kj->ki", g_a, u_a) + np.einsum("kij,kj->ki", g_b, u_b)

    dyn = model.hj_dynamics(game)
    rate = jax.vmap(lambda x, a, b: dyn(x, a, b, 0.0))(jnp.asarray(s), jnp.asarray(u_a), jnp.asarray(u_b))
    np.testing.assert_allclose(np.asarray(rate), expected_rate, rtol=1e-5, atol=1e-3)

    # Hamiltonian = brute force over the corners of the (state-dependent) control boxes.
    lo_a, hi_a, lo_b, hi_b = model.relative_control_bounds(s)
    ham = np.asarray(jax.vmap(lambda x, p: dyn.hamiltonian(x, 0.0, 0.0, p))(jnp.asarray(s), jnp.asarray(grad)))
    m = model.n_controls
    for k in range(len(s)):
        pf = grad[k] @ f[k]
        best_a = max(grad[k] @ g_a[k] @ np.where(c, hi_a[k], lo_a[k]) for c in itertools.product([0, 1], repeat=m))
        vals_b = [grad[k] @ g_b[k] @ np.where(c, hi_b[k], lo_b[k]) for c in itertools.product([0, 1], repeat=m)]
        best_b = max(vals_b) if game == "cooperative" else min(vals_b)
        assert ham[k] == pytest.approx(pf + best_a + best_b, rel=1e-4, abs=1e-2)

    # The optimal controls attain the Hamiltonian.
    u_opt_a, u_opt_b = jax.vmap(lambda x, p: dyn.optimal_control_and_disturbance(x, 0.0, p))(
        jnp.asarray(s), jnp.asarray(grad))
    attained = np.einsum("ki,ki->k", grad, np.asarray(jax.vmap(lambda x, a, b: dyn(x, a, b, 0.0))(
        jnp.asarray(s), u_opt_a, u_opt_b)))
    np.testing.assert_allclose(attained, ham, rtol=1e-4, atol=1e-2)


def test_cbvf_term_in_hamiltonian():
    import jax.numpy as jnp
    model = get_model("quadrotor")
    s, p = jnp.array([1.0, 0.5, 0.3, -0.2]), jnp.array([0.4, 0.1, -0.3, 0.2])
    h0 = model.hj_dynamics("cooperative", 0.0).hamiltonian(s, 0.0, 2.0, p)
    h1 = model.hj_dynamics("cooperative", 0.7).hamiltonian(s, 0.0, 2.0, p)
    assert float(h1 - h0) == pytest.approx(0.7 * 2.0, rel=1e-6)


def test_quadrotor_relative_state_is_other_minus_ego():
    model = get_model("quadrotor")
    ego, other = np.array([[1.0, 2.0, 0.5, -0.5]]), np.array([[0.0, 4.0, -0.2, 0.1]])
    np.testing.assert_allclose(model.relative_state(ego, other), other - ego)


def test_air_taxi_relative_state_body_frame_and_wrap():
    model = get_model("air_taxi")
    # Ego heading north (pi/2); other 100 m north -> straight ahead; other 100 m west -> on the left (y_r > 0).
    ego = np.array([[0.0, 0.0, math.pi / 2, 50.0]] * 2)
    other = np.array([[0.0, 100.0, math.pi / 2, 60.0], [-100.0, 0.0, math.pi / 2, 60.0]])
    s = model.relative_state(ego, other)
    np.testing.assert_allclose(s[:, :2], [[100.0, 0.0], [0.0, 100.0]], atol=1e-9)
    np.testing.assert_allclose(s[:, 3:], [[50.0, 60.0]] * 2)
    # Heading difference wraps to [-pi, pi): 3 - (-3) = 6 -> 6 - 2 pi.
    s = model.relative_state(np.array([[0, 0, -3.0, 50]]), np.array([[1, 1, 3.0, 50]]))
    assert s[0, 2] == pytest.approx(6.0 - 2 * math.pi)
    s = model.relative_state(np.array([[0, 0, 0.0, 50]]), np.array([[1, 1, math.pi, 50]]))
    assert s[0, 2] == pytest.approx(-math.pi)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_relative_state_row_matches_batch(name):
    """The per-pair kernel (what the filter's neighbour loop inlines) gives the batch relative state bitwise, for
    rows of two different arrays at different indices, into any row of the output."""
    from numba import njit

    model = get_model(name)
    row = model.kernels.relative_state_row

    @njit
    def pairs(ego, other, ii, jj, out):
        for p in range(ii.shape[0]):
            row(ego, ii[p], other, jj[p], out, out.shape[0] - 1 - p)

    rng = np.random.default_rng(3)
    ego = rng.uniform(-7.0, 7.0, size=(6, model.n_agent_states))
    other = rng.uniform(-7.0, 7.0, size=(9, model.n_agent_states))
    ii = rng.integers(0, 6, size=20)
    jj = rng.integers(0, 9, size=20)
    out = np.full((20, model.n_states), np.nan)
    pairs(ego, other, ii, jj, out)
    np.testing.assert_array_equal(out[::-1], model.relative_state(ego[ii], other[jj]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_relative_dynamics_consistent_with_agents(name):
    """d/dt relative_state(step_agents(...)) equals f + G_a u_a + G_b u_b (frames and control order agree)."""
    model = get_model(name)
    rng = np.random.default_rng(1)
    ego, other = random_agents(name, rng, 32), random_agents(name, rng, 32)
    if name == "quadrotor":  # keep speeds off the limits so no saturation happens inside h
        ego[:, 2:] *= 0.5
        other[:, 2:] *= 0.5
    else:
        ego[:, 3] = np.clip(ego[:, 3], 40, 80)
        other[:, 3] = np.clip(other[:, 3], 40, 80)
    u_a, u_b = random_controls(model, rng, 32), random_controls(model, rng, 32)
    h = 1e-4
    s0 = model.relative_state(ego, other)
    s1 = model.relative_state(model.step_agents(ego, u_a, h), model.step_agents(other, u_b, h))
    s_m = model.relative_state(model.step_agents(ego, u_a, h / 2), model.step_agents(other, u_b, h / 2))
    d = s1 - s0
    d[:, list(np.flatnonzero(model.periodic))] = (d[:, list(np.flatnonzero(model.periodic))] + np.pi) % (
        2 * np.pi) - np.pi
    f, g_a, g_b = model.affine_terms(s_m)
    rate = f + np.einsum("kij,kj->ki", g_a, u_a) + np.einsum("kij,kj->ki", g_b, u_b)
    np.testing.assert_allclose(d / h, rate, rtol=1e-5, atol=1e-5 * np.abs(rate).max())


def reference_step(name, x, u, dt, n=20000):
    """Forward Euler with tiny steps and hard speed saturation (first order, but n is large)."""
    x = x.copy()
    h = dt / n
    for _ in range(n):
        if name == "quadrotor":
            x[:, :2] += h * x[:, 2:]
            x[:, 2:] = np.clip(x[:, 2:] + h * u, -quadrotor.V_MAX, quadrotor.V_MAX)
        else:
            x[:, 0] += h * x[:, 3] * np.cos(x[:, 2])
            x[:, 1] += h * x[:, 3] * np.sin(x[:, 2])
            x[:, 2] += h * u[:, 0]
            x[:, 3] = np.clip(x[:, 3] + h * u[:, 1], air_taxi.V_MIN, air_taxi.V_MAX)
    if name == "air_taxi":
        x[:, 2] = (x[:, 2] + np.pi) % (2 * np.pi) - np.pi
    return x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_step_agents_matches_fine_reference(name):
    model = get_model(name)
    rng = np.random.default_rng(2)
    x, u = random_agents(name, rng, 16), random_controls(model, rng, 16)
    # Drive some agents into the speed limits within the step.
    if name == "quadrotor":
        x[:4, 2:], u[:4] = 0.95, 0.5
        x[4:8, 2:], u[4:8] = -0.97, -0.5
    else:
        x[:4, 3], u[:4, 1] = air_taxi.V_MAX - 0.5, 2.0
        x[4:8, 3], u[4:8, 1] = air_taxi.V_MIN + 0.3, -1.0
    dt = model.decision_period
    got = model.step_agents(x, u, dt)
    ref = reference_step(name, x, u, dt)
    scale = np.array([1e-5, 1e-5, 1e-6, 1e-6]) if name == "quadrotor" else np.array([2e-3, 2e-3, 1e-9, 1e-9])
    err = np.abs(got - ref)
    assert np.all(err <= scale + 1e-12), f"max error per state {err.max(axis=0)} > {scale}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_speed_limits_hold(name):
    model = get_model(name)
    rng = np.random.default_rng(3)
    x = random_agents(name, rng, 200)
    for _ in range(50):
        lo, hi = model.agent_control_bounds(x)
        u = rng.uniform(np.array(model.control_lo) * 1.5, np.array(model.control_hi) * 1.5, size=lo.shape)
        x = model.step_agents(x, u, model.decision_period * rng.uniform(0.5, 3.0))
        if name == "quadrotor":
            assert np.all(np.abs(x[:, 2:]) <= quadrotor.V_MAX)
        else:
            assert np.all((x[:, 3] >= air_taxi.V_MIN) & (x[:, 3] <= air_taxi.V_MAX))
            assert np.all((x[:, 2] >= -np.pi) & (x[:, 2] < np.pi))
    # At a bound, the control that would leave the interval is unavailable.
    if name == "quadrotor":
        lo, hi = model.agent_control_bounds(np.array([[0, 0, 1.0, -1.0]]))
        np.testing.assert_allclose([lo[0], hi[0]], [[-0.5, 0.0], [0.0, 0.5]])
    else:
        lo, hi = model.agent_control_bounds(np.array([[0, 0, 0, air_taxi.V_MAX], [0, 0, 0, air_taxi.V_MIN]]))
        np.testing.assert_allclose(hi[:, 1], [0.0, 2.0])
        np.testing.assert_allclose(lo[:, 1], [-1.0, 0.0])


def sampled_rates(model, s, rng):
    """|s'| at states s for random admissible controls and for every box corner of the controls."""
    f, g_a, g_b = model.affine_terms(s)
    lo_a, hi_a, lo_b, hi_b = model.relative_control_bounds(s)
    rates = []
    m = model.n_controls
    for ca in itertools.product([0, 1], repeat=m):
        for cb in itertools.product([0, 1], repeat=m):
            u_a, u_b = np.where(ca, hi_a, lo_a), np.where(cb, hi_b, lo_b)
            rates.append(np.abs(f + np.einsum("kij,kj->ki", g_a, u_a) + np.einsum("kij,kj->ki", g_b, u_b)))
    u_a, u_b = rng.uniform(lo_a, hi_a), rng.uniform(lo_b, hi_b)
    rates.append(np.abs(f + np.einsum("kij,kj->ki", g_a, u_a) + np.einsum("kij,kj->ki", g_b, u_b)))
    return np.max(rates, axis=0).max(axis=0)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("box", ["full", "sub"])
def test_dissipation_bounds_exact(name, box):
    model = get_model(name)
    rng = np.random.default_rng(4)
    lo, hi = BOXES[name]
    if box == "sub":
        lo, hi = np.sort(rng.uniform(lo, hi, size=(2, len(lo))), axis=0)
    bound = model.dissipation_bounds(lo, hi)
    sampled = sampled_rates(model, rng.uniform(lo, hi, size=(20000, len(lo))), rng)
    assert np.all(bound >= sampled - 1e-9)
    # Attained: at the corners of the state box (plus heading extrema of cos/sin when inside the interval).
    axes = [[l, h] for l, h in zip(lo, hi)]
    if name == "air_taxi":
        axes[2] += [t for t in (-np.pi, -np.pi / 2, 0.0, np.pi / 2) if lo[2] <= t <= hi[2]]
    corners = np.array(list(itertools.product(*axes)))
    np.testing.assert_allclose(sampled_rates(model, corners, rng), bound, rtol=1e-12, atol=1e-12)



def _layouts(a):
    """The values of ``a`` (N,k) in layouts the kernels are not compiled for: read-only, Fortran, strided."""
    readonly = np.frombuffer(a.tobytes()).reshape(a.shape)  # like a JAX array seen through np.asarray
    wide = np.zeros((2 * a.shape[0], 2 * a.shape[1]))
    wide[::2, ::2] = a
    return {"readonly": readonly, "fortran": np.asfortranarray(a), "strided": wide[::2, ::2]}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_numpy_api_accepts_any_array_layout(name):
    """Every numpy-facing method gives the same answer for read-only / Fortran / strided inputs as for plain ones."""
    model = get_model(name)
    rng = np.random.default_rng(5)
    x, other = random_agents(name, rng, 6), random_agents(name, rng, 6)
    s, u = random_states(name, rng, 6), random_controls(model, rng, 6)
    calls = {  # method -> (call with the arrays in one layout, the plain arrays)
        "step_agents": (lambda x, u: model.step_agents(x, u, model.decision_period), (x, u)),
        "agent_control_bounds": (model.agent_control_bounds, (x,)),
        "relative_state": (model.relative_state, (x, other)),
        "relative_control_bounds": (model.relative_control_bounds, (s,)),
        "affine_terms": (model.affine_terms, (s,)),
    }
    for call, (fn, plain) in calls.items():
        expected = fn(*plain)
        expected = (expected,) if isinstance(expected, np.ndarray) else expected
        for layout in ("readonly", "fortran", "strided"):
            args = [_layouts(a)[layout] for a in plain]
            assert all(not a.flags.writeable or not a.flags.c_contiguous for a in args), layout
            got = fn(*args)
            got = (got,) if isinstance(got, np.ndarray) else got
            assert len(got) == len(expected)
            for g, e in zip(got, expected):
                np.testing.assert_array_equal(g, e, err_msg=f"{name}.{call}, {layout} input")
