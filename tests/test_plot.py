"""Safe-set slices and plots."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reach.plot import PlotError, plot_safe_set, safe_set_slices
from reach.store import open_store


def test_slice_on_nodes_is_exact(tiny_store):
    ds = open_store(tiny_store).open("taxi_tiny/worst_case")
    th = float(ds["theta_r"].values[3])
    va, vb = float(ds["v_a"].values[1]), float(ds["v_b"].values[4])
    (plane,) = safe_set_slices(ds, [{"theta_r": th, "v_a": va, "v_b": vb}])
    np.testing.assert_allclose(plane, ds["value"].values[:, :, 3, 1, 4], rtol=1e-6)


def test_slice_heading_is_periodic(tiny_store):
    ds = open_store(tiny_store).open("taxi_tiny/cooperative")
    base = {"v_a": 56.6, "v_b": 56.6}
    a, b = safe_set_slices(ds, [{"theta_r": 3.0, **base}, {"theta_r": 3.0 - 2 * math.pi, **base}])
    np.testing.assert_allclose(a, b, atol=1e-9)
    # between the last node and +pi it interpolates towards the first node (-pi)
    last = float(ds["theta_r"].values[-1])
    (mid,) = safe_set_slices(ds, [{"theta_r": (last + math.pi) / 2, **base}])
    lo_plane, hi_plane = safe_set_slices(ds, [{"theta_r": last, **base}, {"theta_r": -math.pi, **base}])
    np.testing.assert_allclose(mid, (lo_plane + hi_plane) / 2, atol=1e-6)


def test_slice_outside_grid(tiny_store):
    ds = open_store(tiny_store).open("quad_tiny/cooperative")
    with pytest.raises(PlotError, match="vx"):
        safe_set_slices(ds, [{"vx": 3.0, "vy": 0.0}])


def test_plot_summary_uses_shift_and_rc(tiny_store, tmp_path):
    ds = open_store(tiny_store).open("quad_tiny/worst_case")
    out = tmp_path / "p.png"
    s1 = plot_safe_set(ds, out, [{"vx": 0.0, "vy": 0.0}], safety_distance=0.25)
    s2 = plot_safe_set(ds, out, [{"vx": 0.0, "vy": 0.0}], safety_distance=0.5)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert s1["conflict_range"] == pytest.approx(float(ds["conflict_range"].values[0]))
    assert s2["conflict_range"] == pytest.approx(float(ds["conflict_range"].values[1]))
    assert s1["safe_fraction"][0] > s2["safe_fraction"][0]  # larger d, smaller safe set
    (plane,) = safe_set_slices(ds, [{"vx": 0.0, "vy": 0.0}])
    assert s2["safe_fraction"][0] == pytest.approx(float(np.mean(plane - 0.5 >= 0)))


def test_discounted_grid_cannot_be_shifted(tiny_store, tmp_path):
    ds = open_store(tiny_store).open("quad_tiny/worst_case").copy()
    ds.attrs = dict(ds.attrs, safety_distance=0.5, gamma=0.5)
    plot_safe_set(ds, tmp_path / "ok.png", [{"vx": 0.0, "vy": 0.0}])
    with pytest.raises(PlotError, match="cannot be shifted"):
        plot_safe_set(ds, tmp_path / "bad.png", [{"vx": 0.0, "vy": 0.0}], safety_distance=0.25)


@pytest.mark.parametrize("name,sl", [("quad_tiny/worst_case", {"vx": 0.0, "vy": 0.0}),
                                     ("taxi_tiny/cooperative", {"theta_r": math.pi, "v_a": 56.6, "v_b": 56.6})])
@pytest.mark.parametrize("d,safe", [(1e300, 0.0), (1e9, 0.0), (1e-300, None), (0.0, None)])
def test_plot_any_finite_d(tiny_store, tmp_path, name, sl, d, safe):
    """A shiftable grid takes any finite d >= 0: contour levels outside the data give an empty (or full) safe set."""
    ds = open_store(tiny_store).open(name)
    out = tmp_path / "p.png"
    summary = plot_safe_set(ds, out, [sl], safety_distance=d)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["safety_distance"] == d
    (plane,) = safe_set_slices(ds, [sl])
    assert summary["safe_fraction"][0] == pytest.approx(float(np.mean(plane - d >= 0)) if safe is None else safe)
