"""The compute pipeline on tiny specs: dataset contents, skip/overwrite, resume after a kill, the shift by d."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from reach.compute import compute_spec
from reach.spec import load_spec
from reach.store import ExistsError, content_hash, open_store

DATA = Path(__file__).resolve().parent / "data"
TINY = {"quad_tiny": ("quadrotor", ("px", "py", "vx", "vy")),
        "taxi_tiny": ("air_taxi", ("x_r", "y_r", "theta_r", "v_a", "v_b"))}


def test_tiny_store_names(tiny_store):
    from tests.conftest import TINY_NAMES

    assert open_store(tiny_store).list() == sorted(TINY_NAMES)


@pytest.mark.parametrize("spec_name", sorted(TINY))
@pytest.mark.parametrize("game", ["cooperative", "worst_case"])
def test_dataset_matches_contract(tiny_store, spec_name, game):
    model, dims = TINY[spec_name]
    spec = load_spec(DATA / f"{spec_name}.toml")
    ds = open_store(tiny_store).open(f"{spec_name}/{game}")
    assert ds["value"].dims == dims and ds["value"].dtype == np.float32
    assert ds["gradient"].dims == dims + ("component",) and ds["gradient"].dtype == np.float32
    assert list(ds["component"].values) == list(dims)
    for dim, lo, hi, n in zip(dims, spec.lo, spec.hi, spec.points):
        c = ds[dim]
        assert c.dtype == np.float64 and c.size == n and "units" in c.attrs
        assert c.values[0] == pytest.approx(lo)
        if c.attrs["periodic"]:
            assert c.values[-1] == pytest.approx(hi - (hi - lo) / n)  # [-pi, pi) without the endpoint
        else:
            assert c.values[-1] == pytest.approx(hi)
    assert ds["conflict_range"].dims == ("safety_distance",)
    assert list(ds["safety_distance"].values) == spec.config.conflict.safety_distances
    assert ds["residual"].dims == ("iteration",) and ds["residual_time"].dims == ("iteration",)
    if game == "worst_case":
        assert ds["value_at_horizon"].dims == ("horizon",) + dims
        assert ds["horizon"].values[-1] == pytest.approx(spec.config.solver.engagement_horizon)
        np.testing.assert_array_equal(ds["value_at_horizon"].values[-1], ds["value"].values)
    else:
        assert "value_at_horizon" not in ds
    a = ds.attrs
    for key in ("name", "model", "model_parameters", "units", "state_names", "control_order", "game",
                "sign_convention", "safety_distance", "gamma", "horizon", "converged", "tolerance", "solver",
                "scheme", "versions", "spec_hash", "validation", "created", "content_hash"):
        assert key in a, key
    assert a["name"] == f"{spec_name}/{game}" and a["model"] == model and a["game"] == game
    assert a["spec_hash"] == spec.hash and a["safety_distance"] is None and a["gamma"] == 0.0
    assert a["state_names"] == list(dims) and len(a["control_order"]) == 4
    assert a["control_order"][0].endswith("_a") and a["control_order"][-1].endswith("_b")
    assert 0.0 <= a["validation"]["falsification_rate"] <= 1.0
    assert a["content_hash"] == content_hash(ds)


@pytest.mark.parametrize("spec_name", sorted(TINY))
def test_conflict_range_shared_by_both_games(tiny_store, spec_name):
    store = open_store(tiny_store)
    coop = store.open(f"{spec_name}/cooperative")["conflict_range"].values
    worst = store.open(f"{spec_name}/worst_case")["conflict_range"].values
    np.testing.assert_array_equal(coop, worst)
    assert np.all(np.diff(worst) >= 0)  # R_c grows with d


def test_value_bounds_and_game_order(tiny_store):
    store = open_store(tiny_store)
    for spec in TINY:
        coop = store.open(f"{spec}/cooperative")
        worst = store.open(f"{spec}/worst_case")
        names = coop.attrs["state_names"]
        px = coop[names[0]].values.reshape([-1] + [1] * (len(names) - 1))
        py = coop[names[1]].values.reshape([1, -1] + [1] * (len(names) - 2))
        dist = np.broadcast_to(np.hypot(px, py), coop["value"].shape)
        # V0 <= l (min over time includes t = 0), and cooperation can only help the ego
        assert np.all(coop["value"].values <= dist + 1e-4)
        assert np.all(worst["value"].values <= dist + 1e-4)


def test_shift_by_d(tiny_store):
    """V_d = V0 - d: the safe set {V_d >= 0} is {V0 >= d} for every d, and matches the closed form."""
    ds = open_store(tiny_store).open("quad_tiny/worst_case")
    v0 = ds["value"].values.astype(np.float64)
    for d in (0.0, 0.25, 0.5, 1.0):
        vd = v0 - d
        np.testing.assert_array_equal(vd >= 0, v0 >= d)
    # worst-case quadrotor with equal acceleration bounds: pure drift, V0 = min_{t<=T} ||p + v t||
    T = float(ds.attrs["horizon"])
    P = np.stack(np.meshgrid(*(ds[n].values for n in ds.attrs["state_names"]), indexing="ij"), -1)
    p, v = P[..., :2], P[..., 2:]
    vv = np.sum(v * v, -1)
    t_star = np.clip(np.where(vv > 0, -np.sum(p * v, -1) / np.where(vv > 0, vv, 1), 0.0), 0.0, T)
    exact = np.linalg.norm(p + v * t_star[..., None], axis=-1)
    interior = (slice(2, -2), slice(2, -2), slice(1, -1), slice(1, -1))
    err = np.abs(v0 - exact)[interior]
    assert np.median(err) < 0.05 and err.max() < 0.35
    d = 0.5
    agree = ((v0 - d) >= 0) == (exact >= d)
    assert agree[interior].mean() > 0.9


def test_rerun_skips_and_different_spec_refused(tiny_store_copy, tmp_path):
    store = open_store(tiny_store_copy)
    before = store.version("quad_tiny/cooperative")
    out = compute_spec(load_spec(DATA / "quad_tiny.toml"), store, progress=False, log=lambda m: None)
    assert [o.status for o in out] == ["skipped", "skipped"]
    assert store.version("quad_tiny/cooperative") == before
    # same name, different spec: refused without overwrite (nothing touched)
    changed = tmp_path / "quad_tiny.toml"
    changed.write_text((DATA / "quad_tiny.toml").read_text().replace("seed = 0", "seed = 7"))
    with pytest.raises(ExistsError, match="--overwrite"):
        compute_spec(load_spec(changed), store, progress=False, log=lambda m: None)
    assert store.version("quad_tiny/cooperative") == before


def test_overwrite_recomputes(tiny_store_copy, tmp_path):
    store = open_store(tiny_store_copy)
    before = store.version("quad_tiny/cooperative")
    changed = tmp_path / "quad_tiny.toml"
    changed.write_text((DATA / "quad_tiny.toml").read_text().replace("seed = 0", "seed = 7"))
    out = compute_spec(load_spec(changed), store, overwrite=True, progress=False, log=lambda m: None)
    assert [o.status for o in out] == ["computed", "computed"]
    after = store.open("quad_tiny/cooperative")
    assert after.attrs["content_hash"] != before
    assert after.attrs["validation"]["seed"] == 7
    assert not (Path(tiny_store_copy) / ".checkpoints" / "quad_tiny" / "cooperative").exists()


_KILL_AFTER_SAVES = textwrap.dedent("""
    import os, signal, sys
    import reach.store as st
    real_save = st.Checkpointer.save
    count = [0]
    def save(self, *a, **k):
        real_save(self, *a, **k)
        count[0] += 1
        if count[0] == int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
    st.Checkpointer.save = save
    from reach.cli import main
    sys.exit(main(["compute", sys.argv[1], "--store", sys.argv[2], "--quiet"]))
""")


def test_killed_compute_resumes_from_checkpoint(tiny_store, tmp_path):
    spec_path = tmp_path / "quad_tiny.toml"  # the same spec as the shared tiny store (same name and hash)
    spec_path.write_text((DATA / "quad_tiny.toml").read_text())
    store_dir = tmp_path / "store"
    script = tmp_path / "killer.py"
    script.write_text(_KILL_AFTER_SAVES)
    # worst_case is solved first; its snapshots every 0.1 s are chunk ends: 2 saves = 0.2 s of 0.4 s
    proc = subprocess.run([sys.executable, str(script), str(spec_path), str(store_dir), "2"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    store = open_store(store_dir)
    assert store.list() == []  # nothing half-published
    ck = store.checkpointer("quad_tiny/worst_case", load_spec(spec_path).hash)
    assert ck.exists()
    saved_time = ck.load()[0]
    assert saved_time == pytest.approx(0.2)

    out = compute_spec(load_spec(spec_path), store, progress=False, log=lambda m: None)
    by_name = {o.name: o for o in out}
    assert by_name["quad_tiny/worst_case"].resumed_from == pytest.approx(saved_time)
    assert by_name["quad_tiny/cooperative"].resumed_from is None
    assert not (store_dir / ".checkpoints" / "quad_tiny" / "worst_case").exists()
    # the resumed solve takes the very same steps as the uninterrupted one
    resumed = store.open("quad_tiny/worst_case")
    reference = open_store(tiny_store).open("quad_tiny/worst_case")
    np.testing.assert_allclose(resumed["value"].values, reference["value"].values, atol=1e-5)
    np.testing.assert_allclose(resumed["value_at_horizon"].values, reference["value_at_horizon"].values, atol=1e-5)
    np.testing.assert_allclose(resumed["residual"].values, reference["residual"].values, rtol=1e-4, atol=1e-6)


def test_cooperative_only_spec_still_gets_rc_table(tmp_path):
    text = (DATA / "quad_tiny.toml").read_text().replace('games = ["cooperative", "worst_case"]',
                                                         'games = ["cooperative"]')
    text = text.replace("n_samples = 64", "n_samples = 0")
    path = tmp_path / "coop_only.toml"
    path.write_text(text)
    store = open_store(tmp_path / "store")
    out = compute_spec(load_spec(path), store, progress=False, log=lambda m: None)
    assert [o.name for o in out] == ["coop_only/cooperative"]
    assert store.list() == ["coop_only/cooperative"]
    ds = store.open("coop_only/cooperative")
    assert np.all(np.isfinite(ds["conflict_range"].values)) and ds["conflict_range"].values[-1] > 0.5
    assert ds.attrs["validation"]["falsification_rate"] is None


def test_discounted_grid_records_its_d(tmp_path):
    text = (DATA / "quad_tiny.toml").read_text().replace("games = ", "gamma = 0.5\nsafety_distance = 0.5\ngames = ")
    text = text.replace("n_samples = 64", "n_samples = 16")
    path = tmp_path / "quad_cbvf.toml"
    path.write_text(text)
    store = open_store(tmp_path / "store")
    compute_spec(load_spec(path), store, progress=False, log=lambda m: None)
    ds = store.open("quad_cbvf/worst_case")
    assert ds.attrs["safety_distance"] == 0.5 and ds.attrs["gamma"] == 0.5
    assert list(ds["safety_distance"].values) == [0.5]  # R_c only at the grid's own d
    assert math.isfinite(float(ds["conflict_range"].values[0]))
    assert float(ds["value"].min()) < 0.0  # V_d stored directly


def test_concurrent_compute_of_same_spec_refused(tmp_path):
    import fcntl

    from reach.store import StoreError

    store = open_store(tmp_path / "store")
    lock = tmp_path / "store" / ".locks" / "quad_tiny.compute.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(StoreError, match="another 'reach compute'"):
            compute_spec(load_spec(DATA / "quad_tiny.toml"), store, progress=False, log=lambda m: None)
    assert store.list() == []
