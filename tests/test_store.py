"""The value-function store: layout, atomic publish, overwrite refusal, integrity, checkpoints (synthetic data)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from reach.store import (ExistsError, IntegrityError, UnknownValueFunctionError, content_hash,
                         open_store)

ROOT = Path(__file__).resolve().parent.parent


def synthetic(seed: int = 0, n: int = 9) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    p = np.linspace(-2.0, 2.0, n)
    v = np.linspace(-1.0, 1.0, 5)
    dims = ("px", "py", "vx", "vy")
    coords = {d: (d, c, {"units": u, "periodic": 0}) for d, c, u in zip(dims, (p, p, v, v), ("m", "m", "m/s", "m/s"))}
    coords["component"] = ("component", np.array(dims))
    coords["safety_distance"] = ("safety_distance", [0.25, 0.5])
    coords["residual_time"] = ("iteration", [0.1, 0.2])
    shape = (n, n, 5, 5)
    return xr.Dataset(
        {
            "value": (dims, rng.random(shape).astype(np.float32)),
            "gradient": (dims + ("component",), rng.random(shape + (4,)).astype(np.float32)),
            "conflict_range": ("safety_distance", [0.8, 1.1]),
            "residual": ("iteration", [0.5, 0.01]),
        },
        coords=coords,
        attrs={"model": "quadrotor", "game": "cooperative", "state_names": list(dims), "safety_distance": None,
               "gamma": 0.0, "horizon": 1.0, "converged": True, "validation": {"n_samples": 3, "rate": 0.0}},
    )


def test_roundtrip_layout_and_metadata(tmp_path):
    store = open_store(tmp_path / "s")
    assert store.list() == []
    ds = synthetic()
    digest = store.publish("quad/cooperative", ds)
    assert store.list() == ["quad/cooperative"]
    assert store.version("quad/cooperative") == digest
    game_dir = tmp_path / "s" / "quad" / "cooperative"
    assert (game_dir / "current").read_text().strip() == f"{digest[:16]}.zarr"
    out = store.open("quad/cooperative")
    np.testing.assert_array_equal(out["value"].values, ds["value"].values)
    np.testing.assert_array_equal(out["gradient"].values, ds["gradient"].values)
    assert list(out["component"].values) == ["px", "py", "vx", "vy"]
    assert out["px"].dtype == np.float64 and out["px"].attrs["units"] == "m"
    assert out.attrs["content_hash"] == digest == content_hash(out)
    assert out.attrs["name"] == "quad/cooperative" and "created" in out.attrs
    assert out.attrs["safety_distance"] is None
    info = store.info("quad/cooperative")
    assert info["content_hash"] == digest and json.dumps(info)
    # Zarr v3, dimension names, sharding and zstd
    meta = json.loads((game_dir / f"{digest[:16]}.zarr" / "value" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["dimension_names"] == ["px", "py", "vx", "vy"]
    codecs = meta["codecs"]
    assert codecs[0]["name"] == "sharding_indexed"
    assert any(c["name"] == "zstd" for c in codecs[0]["configuration"]["codecs"])
    assert not (tmp_path / "s" / ".staging").exists() or not any((tmp_path / "s" / ".staging").iterdir())


def test_refuses_overwrite_unless_asked(tmp_path):
    store = open_store(tmp_path)
    first = store.publish("quad/cooperative", synthetic(0))
    with pytest.raises(ExistsError, match="already exists"):
        store.publish("quad/cooperative", synthetic(1))
    assert store.version("quad/cooperative") == first
    second = store.publish("quad/cooperative", synthetic(1), overwrite=True)
    assert second != first and store.version("quad/cooperative") == second
    np.testing.assert_array_equal(store.open("quad/cooperative")["value"].values, synthetic(1)["value"].values)


@pytest.mark.parametrize("name", ["../x/cooperative", "quad/other", "Quad/cooperative", "quad", "a/b/cooperative",
                                  "/etc/cooperative", "quad/cooperative/..", ""])
def test_invalid_names_never_escape(tmp_path, name):
    store = open_store(tmp_path)
    with pytest.raises(UnknownValueFunctionError):
        store.open(name)
    with pytest.raises(UnknownValueFunctionError):
        store.publish(name, synthetic())
    assert not any(tmp_path.iterdir()) or not (tmp_path.parent / "x").exists()


def test_unknown_name_lists_known(tmp_path):
    store = open_store(tmp_path)
    store.publish("quad/cooperative", synthetic())
    with pytest.raises(UnknownValueFunctionError, match="quad/cooperative") as exc:
        store.open("quad/worst_case")
    assert isinstance(exc.value, KeyError)
    assert "quad/worst_case" in str(exc.value)


def _chunk_files(version: Path, var: str) -> list[Path]:
    return sorted(p for p in (version / var / "c").rglob("*") if p.is_file())


@pytest.mark.parametrize("var", ["value", "gradient", "px"])
def test_flipped_bytes_refused(tmp_path, var):
    store = open_store(tmp_path)
    store.publish("quad/cooperative", synthetic())
    version = store.path("quad/cooperative")
    chunk = _chunk_files(version, var)[0]
    data = bytearray(chunk.read_bytes())
    mid = len(data) // 2
    data[mid] ^= 0xFF
    data[mid + 1] ^= 0x5A
    chunk.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        store.open("quad/cooperative")


def test_tampered_attrs_refused(tmp_path):
    store = open_store(tmp_path)
    store.publish("quad/cooperative", synthetic())
    meta_path = store.path("quad/cooperative") / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["horizon"] = 99.0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="content hash mismatch"):
        store.open("quad/cooperative")


def test_content_hash_covers_values_and_attrs():
    ds = synthetic()
    h = content_hash(ds)
    other = ds.copy(deep=True)
    other["value"].values[0, 0, 0, 0] += 1e-3
    assert content_hash(other) != h
    other = ds.copy(deep=True)
    other.attrs["horizon"] = 2.0
    assert content_hash(other) != h
    other = ds.copy(deep=True)
    other.attrs["created"] = "whenever"
    assert content_hash(other) == h


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_store import synthetic
    import reach.store as st

    point = sys.argv[2]
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    if point == "data":          # staging fully written, before the rename into place
        st._fsync_tree = die
    elif point == "rename":      # inside the rename
        real = os.rename
        os.rename = lambda src, dst: die() if str(dst).endswith(".zarr") else real(src, dst)
    elif point == "pointer":     # version in place, before the `current` pointer switch
        st._atomic_write_text = die
    elif point == "to_zarr":     # while zarr writes chunk files
        import zarr.storage
        real_set = zarr.storage.LocalStore.set
        count = [0]
        async def set_(self, key, value):
            count[0] += 1
            if count[0] == 4:
                die()
            return await real_set(self, key, value)
        zarr.storage.LocalStore.set = set_
    st.open_store(sys.argv[1]).publish("quad/cooperative", synthetic(int(sys.argv[3])), overwrite=True)
""")


@pytest.mark.parametrize("point", ["to_zarr", "data", "rename", "pointer"])
@pytest.mark.parametrize("existing", [False, True])
def test_sigkill_during_publish_leaves_nothing_visible(tmp_path, point, existing):
    root = tmp_path / "s"
    store = open_store(root)
    old = store.publish("quad/cooperative", synthetic(0)) if existing else None
    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    proc = subprocess.run([sys.executable, str(script), str(root), point, "1"], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    if existing:
        assert store.list() == ["quad/cooperative"]
        assert store.version("quad/cooperative") == old
        np.testing.assert_array_equal(store.open("quad/cooperative")["value"].values, synthetic(0)["value"].values)
    else:
        assert store.list() == []
        with pytest.raises(UnknownValueFunctionError):
            store.open("quad/cooperative")
    # a re-run completes it and cleans the stale staging area
    new = store.publish("quad/cooperative", synthetic(1), overwrite=True)
    assert store.version("quad/cooperative") == new != old
    np.testing.assert_array_equal(store.open("quad/cooperative")["value"].values, synthetic(1)["value"].values)
    staging = root / ".staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_live_writer_staging_not_cleaned(tmp_path):
    import fcntl

    store = open_store(tmp_path)
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / "abc.zarr").mkdir()
    with open(staging / "abc.lock", "w") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        # another process's lock: flock locks are per open file description, so a second open conflicts
        assert store.clean_staging() == []
        assert (staging / "abc.zarr").exists()
    assert store.clean_staging() == ["abc"]
    assert not (staging / "abc.zarr").exists()


def test_checkpointer_roundtrip_and_spec_guard(tmp_path):
    store = open_store(tmp_path)
    ck = store.checkpointer("quad/cooperative", "hash-a")
    assert ck.load() is None
    vals = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    ck.save(0.6, vals, np.array([0.2, 0.4, 0.6]), np.array([1.0, 0.5, 0.2]))
    assert ck.path == tmp_path / ".checkpoints" / "quad" / "cooperative" / "checkpoint.npz"
    t, v, rt, rv = ck.load()
    assert t == 0.6 and ck.loaded_time == 0.6
    np.testing.assert_array_equal(v, vals)
    np.testing.assert_array_equal(rv, [1.0, 0.5, 0.2])
    assert store.checkpointer("quad/cooperative", "hash-b").load() is None  # another spec's checkpoint
    assert [p.name for p in ck.directory.iterdir()] == ["checkpoint.npz"]  # no temp files left
    store.clear_checkpoint("quad/cooperative")
    assert ck.load() is None


def test_default_store_path_from_env(tmp_path, monkeypatch):
    import reach

    monkeypatch.setenv("REACH_STORE", str(tmp_path / "env-store"))
    assert open_store().root == tmp_path / "env-store"
    assert reach.open_store().root == tmp_path / "env-store"
    monkeypatch.delenv("REACH_STORE")
    assert open_store().root == Path("./store")


def test_reach_package_import_is_light():
    code = "import sys, reach, reach.store, reach.models; print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
