"""Potential-conflict range R_c(d) from worst-case grids."""

import math

import numpy as np
import pytest

from reach.conflict import SUBSAMPLES, conflict_range, conflict_range_table
from reach.models import get_model

QUAD = get_model("quadrotor")
T_E = 0.4


def quad_coords(n=31, m=9, half=3.0):
    return (np.linspace(-half, half, n), np.linspace(-half, half, n), np.linspace(-2, 2, m), np.linspace(-2, 2, m))


def closed_form(coords, horizon):
    """Quadrotor worst case, V(s, T) = min_{t in [0, T]} ||p + v t||."""
    g = np.stack(np.meshgrid(*coords, indexing="ij"), -1)
    p, v = g[..., :2], g[..., 2:]
    vv = np.sum(v * v, -1)
    t = np.clip(-np.sum(p * v, -1) / np.where(vv > 0, vv, 1.0), 0.0, horizon)
    return np.linalg.norm(p + v * t[..., None], axis=-1)


def test_closed_form_quadrotor_range():
    """Unsafe iff p = -v t + e, ||e|| < d, t <= T: R_c = max ||v|| T + d = 2 sqrt(2) T + d (v box corner)."""
    coords = quad_coords()
    value = closed_form(coords, T_E)
    dx = coords[0][1] - coords[0][0]
    for d in (0.25, 0.5, 0.75):
        expected = 2 * math.sqrt(2) * T_E + d
        r = conflict_range(value, coords, QUAD, d)
        # Upper bound of the interpolant's range: never below the truth by more than interpolation error,
        # never above it by more than one sampling diagonal plus that error.
        assert expected - 0.02 <= r.conflict_range <= expected + math.sqrt(2) * dx / SUBSAMPLES + 0.02, (d, r)
    table = conflict_range_table(value, coords, QUAD, [0.25, 0.5, 0.75])
    assert table.dtype == np.float64 and np.all(np.diff(table) > 0)


def test_solver_worst_case_range():
    from reach.grid import GridSpec
    from reach.solver import SolverSettings, solve
    spec = GridSpec((-3, -3, -2, -2), (3, 3, 2, 2), (25, 25, 9, 9))
    r = solve(QUAD, spec, "worst_case", SolverSettings(engagement_horizon=T_E), progress=False)
    rc = conflict_range_table(r.value, r.coordinates, QUAD, [0.5])[0]
    dx = 6 / 24
    assert abs(rc - (2 * math.sqrt(2) * T_E + 0.5)) < dx, rc


def test_unsafe_at_edge_is_infinite_with_reason():
    coords = quad_coords(n=11, half=1.0)
    value = closed_form(coords, T_E)
    r = conflict_range(value, coords, QUAD, 0.5)
    assert math.isinf(r.conflict_range) and "edge" in r.reason
    with pytest.warns(RuntimeWarning, match="edge"):
        assert math.isinf(conflict_range_table(value, coords, QUAD, [0.5])[0])


def test_no_unsafe_state_and_pure_distance():
    coords = quad_coords()
    value = closed_form(coords, 0.0)  # horizon 0: V = ||p||
    assert conflict_range(value, coords, QUAD, 0.0).conflict_range == 0.0
    dx = coords[0][1] - coords[0][0]
    r = conflict_range(value, coords, QUAD, 1.0).conflict_range
    assert 1.0 - 1e-9 <= r <= 1.0 + math.sqrt(2) * dx / SUBSAMPLES + 1e-9


def test_air_taxi_layout_with_periodic_dim():
    model = get_model("air_taxi")
    coords = (np.linspace(-3000, 3000, 21), np.linspace(-3000, 3000, 21), np.linspace(-np.pi, np.pi, 8, endpoint=False),
              np.linspace(30.87, 90.03, 3), np.linspace(30.87, 90.03, 3))
    g = np.meshgrid(*coords, indexing="ij")
    value = np.hypot(g[0], g[1]) - 100.0 * (g[4] > 60)  # some slices less safe than others
    r = conflict_range(value, coords, model, 670.56).conflict_range
    assert 770.56 - 1e-6 <= r <= 770.56 + math.hypot(300, 300) / SUBSAMPLES + 1e-6
    with pytest.raises(ValueError, match="shape"):
        conflict_range(value[:-1], coords, model, 670.56)
