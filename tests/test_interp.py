"""The interpolation kernel through `ValueFunction.from_dataset` on synthetic datasets laid out as the contract.

Exact on multilinear functions, periodic wrap, +inf beyond the position extent, errors for NaN / shape / bounds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr
from scipy.interpolate import RegularGridInterpolator

from clients import StateError, ValueFunction
from reach.models import get_model
from reach.store import IntegrityError, content_hash


def make_dataset(model_name: str, game: str, coords, value, gradient, *, safety_distance=None, gamma=0.0,
                 conflict=None, name=None) -> xr.Dataset:
    """A value-function dataset as in docs/contract.md (content hash set)."""
    model = get_model(model_name)
    names = model.state_names
    cvars = {}
    for dim, c, unit, per in zip(names, coords, model.state_units, model.periodic):
        cvars[dim] = (dim, np.asarray(c, dtype=np.float64), {"units": unit, "periodic": int(per)})
    cvars["component"] = ("component", np.array(names))
    data = {"value": (names, np.asarray(value, dtype=np.float32)),
            "gradient": (names + ("component",), np.asarray(gradient, dtype=np.float32))}
    ds = xr.Dataset(data, coords=cvars)
    if conflict is not None:
        dd, rr = conflict
        ds["conflict_range"] = xr.DataArray(np.asarray(rr, dtype=np.float64), dims=("safety_distance",),
                                            coords={"safety_distance": np.asarray(dd, dtype=np.float64)})
    ds.attrs = {"name": name or f"{model_name}/{game}", "model": model_name, "game": game,
                "state_names": list(names), "control_order": list(model.control_order),
                "sign_convention": "V > 0 safe", "safety_distance": safety_distance, "gamma": gamma,
                "units": "m"}
    ds.attrs["content_hash"] = content_hash(ds)
    return ds


def quad_coords(n_p=41, n_v=21, p=2.0, v=1.0):
    return [np.linspace(-p, p, n_p), np.linspace(-p, p, n_p), np.linspace(-v, v, n_v), np.linspace(-v, v, n_v)]


def mesh(coords):
    return np.meshgrid(*coords, indexing="ij")


def multilinear_fields(coords, rng):
    """A random multilinear function (value) and n other random multilinear functions (gradient slots)."""
    n = len(coords)
    grids = mesh(coords)

    def one():
        out = rng.normal()
        for i in range(n):
            out = out + rng.normal() * grids[i]
        for i in range(n):
            for j in range(i + 1, n):
                out = out + rng.normal() * grids[i] * grids[j]
        prod = rng.normal()
        for g in grids:
            prod = prod * g
        return out + prod

    value = one()
    grad = np.stack([one() for _ in range(n)], axis=-1)
    return value, grad


def test_exact_on_multilinear_functions():
    rng = np.random.default_rng(0)
    coords = quad_coords(9, 5)
    value, grad = multilinear_fields(coords, rng)
    vf = ValueFunction.from_dataset(make_dataset("quadrotor", "worst_case", coords, value, grad))
    pts = np.column_stack([rng.uniform(c[0], c[-1], 2000) for c in coords])
    # the same multilinear functions evaluated exactly (multilinear interpolation reproduces them)
    ref_v = RegularGridInterpolator(coords, value.astype(np.float32).astype(np.float64))(pts)
    v, g = vf.value_and_gradient(pts, safety_distance=0.0)
    np.testing.assert_allclose(v, ref_v, rtol=1e-9, atol=1e-9)
    for k in range(4):
        ref_g = RegularGridInterpolator(coords, grad[..., k].astype(np.float32).astype(np.float64))(pts)
        np.testing.assert_allclose(g[:, k], ref_g, rtol=1e-9, atol=1e-9)
    # and against the closed form itself (float32 storage only)
    x = pts.T
    np.testing.assert_allclose(vf.value(pts, 0.0), RegularGridInterpolator(coords, value)(pts), rtol=1e-5, atol=1e-4)
    # nodes are reproduced exactly
    idx = (3, 4, 1, 2)
    node = np.array([[coords[d][idx[d]] for d in range(4)]])
    assert vf.value(node, 0.0)[0] == pytest.approx(float(np.float32(value[idx])), abs=1e-6)
    assert x.shape[0] == 4


def test_safety_distance_shift_and_default():
    rng = np.random.default_rng(1)
    coords = quad_coords(5, 3)
    value, grad = multilinear_fields(coords, rng)
    vf = ValueFunction.from_dataset(make_dataset("quadrotor", "cooperative", coords, value, grad))
    pts = np.zeros((1, 4))
    v0 = vf.value(pts, 0.0)[0]
    assert vf.value(pts, 0.3)[0] == pytest.approx(v0 - 0.3)
    assert vf.value(pts)[0] == pytest.approx(v0 - vf.model.safety_distance)
    _, g0 = vf.value_and_gradient(pts, 0.0)
    _, g1 = vf.value_and_gradient(pts, 0.7)
    np.testing.assert_array_equal(g0, g1)
    with pytest.raises(ValueError):
        vf.value(pts, -1.0)
    assert vf.value(pts, np.float32(0.25))[0] == vf.value(pts, 0.25)[0] and vf.value(pts, 1)[0] == vf.value(pts, 1.0)[0]
    for bad in ("0.3", True, np.array([0.3]), [0.3], object()):      # read as 0.3 or 1 before, or a bare TypeError
        with pytest.raises(ValueError, match="safety_distance must be a real number"):
            vf.value(pts, bad)


def random_taxi_grid(seed: int, nth: int = 8):
    """A random air-taxi value function on a coarse grid with nth headings: (vf, coords, value)."""
    rng = np.random.default_rng(seed)
    th = -math.pi + 2 * math.pi * np.arange(nth) / nth
    coords = [np.linspace(-3000, 3000, 7), np.linspace(-3000, 3000, 7), th,
              np.linspace(30.87, 90.03, 3), np.linspace(30.87, 90.03, 3)]
    value = rng.normal(size=tuple(len(c) for c in coords))
    grad = rng.normal(size=value.shape + (5,))
    return ValueFunction.from_dataset(make_dataset("air_taxi", "cooperative", coords, value, grad)), coords, value


def test_periodic_heading_wraps():
    model = get_model("air_taxi")
    nth = 8
    vf, coords, value = random_taxi_grid(2, nth)
    th = coords[2]
    assert model.periodic == (False, False, True, False, False)
    base = np.array([[100.0, -250.0, 0.3, 40.0, 80.0]])
    v1, g1 = vf.value_and_gradient(base, 0.0)
    for shift in (2 * math.pi, -2 * math.pi, 6 * math.pi):
        p = base.copy()
        p[0, 2] += shift
        v2, g2 = vf.value_and_gradient(p, 0.0)
        np.testing.assert_allclose(v2, v1, rtol=1e-9)
        np.testing.assert_allclose(g2, g1, rtol=1e-9)
    # between the last node (pi - dx) and the wrap point pi: interpolates towards the first node (-pi)
    dx = 2 * math.pi / nth
    node = [3, 2, nth - 1, 1, 2]
    p = np.array([[coords[0][3], coords[1][2], th[-1] + 0.25 * dx, coords[3][1], coords[4][2]]])
    want = 0.75 * np.float32(value[3, 2, nth - 1, 1, 2]) + 0.25 * np.float32(value[3, 2, 0, 1, 2])
    assert vf.value(p, 0.0)[0] == pytest.approx(float(want), rel=1e-6)
    assert node[2] == nth - 1
    # any finite heading is in the domain
    p[0, 2] = 123.4
    assert vf.in_domain(p)[0]


def test_huge_headings_wrap_exactly():
    """Headings of many turns (up to the largest float) answer for the heading they are, reduced exactly,
    never extrapolate nor give NaN (before, (x - lo) / dx lost the cell beyond ~1e16 and overflowed near 1e308)."""
    vf, _, value = random_taxi_grid(3)
    lo, inv_dx, npts = (a[2] for a in vf._geom[:3])
    period = npts / inv_dx      # the grid's period as the kernel holds it (a float near 2 pi)
    for heading in (1e7, -3e9, 1e20, -1e20, 1.7e308, -1.7e308, 4.4e15 * math.pi):
        p = np.array([[100.0, -250.0, heading, 40.0, 80.0]])
        q = p.copy()
        q[0, 2] = lo + math.fmod(heading - lo, period) % period     # the same heading, in [lo, lo + period)
        v, g = vf.value_and_gradient(p, 0.0)
        vq, gq = vf.value_and_gradient(q, 0.0)
        assert vf.in_domain(p)[0] and np.isfinite(v[0]) and abs(v[0]) <= np.abs(value).max() + 1e-6
        np.testing.assert_allclose(v, vq, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(g, gq, rtol=1e-6, atol=1e-6)


def test_beyond_position_extent_is_no_interaction():
    rng = np.random.default_rng(3)
    coords = quad_coords(5, 3)
    value, grad = multilinear_fields(coords, rng)
    vf = ValueFunction.from_dataset(make_dataset("quadrotor", "worst_case", coords, value, grad))
    pts = np.array([[2.5, 0.0, 0.1, 0.1], [0.0, -7.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.0, -2.0, 1.0, -1.0]])
    v, g = vf.value_and_gradient(pts)
    assert np.isinf(v[0]) and v[0] > 0 and np.isinf(v[1])
    np.testing.assert_array_equal(g[:2], 0.0)
    assert np.isfinite(v[2:]).all()     # the grid's corner is inside (closed bounds)
    np.testing.assert_array_equal(vf.in_domain(pts), [False, False, True, True])


def test_errors_name_the_problem():
    rng = np.random.default_rng(4)
    coords = quad_coords(5, 3)
    value, grad = multilinear_fields(coords, rng)
    vf = ValueFunction.from_dataset(make_dataset("quadrotor", "worst_case", coords, value, grad))
    with pytest.raises(StateError, match="vx"):
        vf.value([[0.0, 0.0, 1.5, 0.0]])           # velocity out of bounds: never extrapolated
    with pytest.raises(StateError, match="vy"):
        vf.value([[9.0, 0.0, 0.0, -1.01]])         # other coordinates are errors even beyond the extent
    with pytest.raises(StateError, match="py.*NaN"):
        vf.value_and_gradient([[0.0, np.nan, 0.0, 0.0]])
    with pytest.raises(StateError, match="shape"):
        vf.value(np.zeros((3, 5)))
    with pytest.raises(StateError, match="shape"):
        vf.value(np.zeros((2, 2, 4)))
    with pytest.raises(StateError, match="state 2"):
        vf.value([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    assert issubclass(StateError, ValueError)
    with pytest.raises(StateError):
        vf.in_domain([[np.inf, 0.0, 0.0, 0.0]])
    # a single state (n,) is one row
    assert vf.value(np.zeros(4)).shape == (1,)
    # only real numbers: numpy would parse strings and drop imaginary parts
    for bad in (np.zeros((1, 4), complex), [["0", "0", "0", "0"]], np.array([[0, 0, 0, 0]], dtype=object),
                [[0.0, 0.0, None, 0.0]], np.zeros((1, 4), bool)):
        with pytest.raises(StateError, match="real numbers"):
            vf.value(bad)
    assert vf.value(np.zeros((2, 4), dtype=np.int32)).shape == (2,) and vf.value([[0, 0, 0, 0]]).shape == (1,)


def test_points_on_the_bounds_are_inside():
    rng = np.random.default_rng(5)
    coords = quad_coords(5, 3)
    value, grad = multilinear_fields(coords, rng)
    vf = ValueFunction.from_dataset(make_dataset("quadrotor", "worst_case", coords, value, grad))
    corner = np.array([[-2.0, 2.0, -1.0, 1.0]])
    assert vf.value(corner, 0.0)[0] == pytest.approx(float(np.float32(value[0, -1, 0, -1])), abs=1e-6)
    assert vf.in_domain(corner)[0]


def test_content_hash_is_checked():
    rng = np.random.default_rng(6)
    coords = quad_coords(5, 3)
    value, grad = multilinear_fields(coords, rng)
    ds = make_dataset("quadrotor", "worst_case", coords, value, grad)
    vf = ValueFunction.from_dataset(ds)
    assert vf.content_hash == ds.attrs["content_hash"]
    bad = ds.copy(deep=True)
    bad["value"].values[0, 0, 0, 0] += 1.0
    with pytest.raises(IntegrityError):
        ValueFunction.from_dataset(bad)
    nohash = ds.copy(deep=True)
    del nohash.attrs["content_hash"]
    with pytest.raises(IntegrityError):
        ValueFunction.from_dataset(nohash)


def test_gamma_grid_allows_only_its_distance():
    rng = np.random.default_rng(7)
    coords = quad_coords(5, 3)
    value, grad = multilinear_fields(coords, rng)
    vf = ValueFunction.from_dataset(make_dataset("quadrotor", "cooperative", coords, value, grad,
                                                 safety_distance=0.5, gamma=0.2))
    pts = np.zeros((1, 4))
    stored = vf.value(pts)[0]
    assert vf.value(pts, 0.5)[0] == stored        # stores V_d directly: no shift
    with pytest.raises(ValueError, match="0.5"):
        vf.value(pts, 0.3)
    assert vf.safety_distance == 0.5


def test_conflict_range_table():
    rng = np.random.default_rng(8)
    coords = quad_coords(5, 3)
    value, grad = multilinear_fields(coords, rng)
    vf = ValueFunction.from_dataset(make_dataset("quadrotor", "worst_case", coords, value, grad,
                                                 conflict=([0.25, 0.5, 1.0], [0.8, 1.0, 1.6])))
    assert vf.conflict_range(0.5) == pytest.approx(1.0)
    assert vf.conflict_range(0.75) == pytest.approx(1.3)
    assert vf.conflict_range() == pytest.approx(1.0)      # the model's default d = 0.5 m
    with pytest.raises(ValueError, match="outside"):
        vf.conflict_range(2.0)


def test_matches_scipy_on_random_grid():
    rng = np.random.default_rng(9)
    coords = quad_coords(13, 7)
    value = rng.normal(size=(13, 13, 7, 7))
    grad = rng.normal(size=value.shape + (4,))
    vf = ValueFunction.from_dataset(make_dataset("quadrotor", "worst_case", coords, value, grad))
    pts = np.column_stack([rng.uniform(c[0], c[-1], 5000) for c in coords])
    v, g = vf.value_and_gradient(pts, 0.0)
    ref = RegularGridInterpolator(coords, value.astype(np.float32).astype(np.float64))(pts)
    np.testing.assert_allclose(v, ref, rtol=1e-9, atol=1e-9)
    refg = RegularGridInterpolator(coords, grad.astype(np.float32).astype(np.float64))(pts)
    np.testing.assert_allclose(g, refg, rtol=1e-9, atol=1e-9)
