"""Shared fixtures.

``tiny_store`` computes the tiny specs in ``tests/data/`` once per machine and code version, and shares the store
between pytest-xdist workers (a fixed directory in the system temp dir, keyed by the specs' hashes and the
source of ``reach/``, guarded by an fcntl file lock: one worker computes, the others wait and reuse it).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
TINY_SPECS = (DATA / "quad_tiny.toml", DATA / "taxi_tiny.toml")

#: the value functions in ``tiny_store``
TINY_NAMES = ("quad_tiny/cooperative", "quad_tiny/worst_case", "taxi_tiny/cooperative", "taxi_tiny/worst_case")


def _tiny_store_key() -> str:
    from reach.spec import load_spec

    h = hashlib.sha256()
    for path in TINY_SPECS:
        spec = load_spec(path)
        h.update(f"{spec.name}:{spec.hash}\n".encode())
    for src in sorted((ROOT / "reach").rglob("*.py")):
        h.update(str(src.relative_to(ROOT)).encode() + b"\0" + src.read_bytes())
    return h.hexdigest()[:16]


def _remove_stale(keep: Path, max_age_s: float = 24 * 3600) -> None:
    """Drop tiny stores of older code versions (untouched for a day)."""
    import time

    for old in keep.parent.glob("reach-tiny-store-*"):
        if old.is_dir() and old != keep and time.time() - old.stat().st_mtime > max_age_s:
            shutil.rmtree(old, ignore_errors=True)


def build_tiny_store() -> Path:
    """Compute (or reuse) the shared tiny store; returns its path."""
    from reach.compute import compute_spec
    from reach.spec import load_spec
    from reach.store import open_store

    root = Path(tempfile.gettempdir()) / f"reach-tiny-store-{_tiny_store_key()}"
    done = root / ".complete"
    lock_path = Path(str(root) + ".lock")
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            if not done.exists():
                store = open_store(root)
                for path in TINY_SPECS:
                    compute_spec(load_spec(path), store, progress=False, log=lambda msg: None)
                done.write_text("ok\n")
                _remove_stale(root)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    return root


@pytest.fixture(scope="session")
def tiny_store() -> Path:
    """Path of a store holding tiny value functions (READ-ONLY: copy it, or use ``tiny_store_copy``, to modify).

    Names (spec ``tests/data/<spec>.toml``, both games each):
      - ``quad_tiny/cooperative``, ``quad_tiny/worst_case``: model ``quadrotor``, grid px, py in [-2, 2] m
        (11 points), vx, vy in [-1, 1] m/s (7 points); cooperative horizon <= 1 s, worst case T_e = 0.4 s;
        R_c table at d = 0.25, 0.5 m.
      - ``taxi_tiny/cooperative``, ``taxi_tiny/worst_case``: model ``air_taxi``, grid x_r, y_r in [-3000, 3000] m
        (11 points), theta_r periodic [-pi, pi) (8 points), v_a, v_b in [30.87, 90.03] m/s (5 points);
        cooperative horizon <= 6 s, worst case T_e = 4 s; R_c table at d = 152.4, 457.2 m.
    Undiscounted (gamma = 0): ``value`` is V0, shift by any d. Open with ``reach.open_store(tiny_store)`` or
    ``clients.ValueFunction.load(tiny_store, name)``.
    """
    return build_tiny_store()


@pytest.fixture
def tiny_store_copy(tiny_store, tmp_path) -> Path:
    """A private, writable copy of ``tiny_store``."""
    dst = tmp_path / "store"
    shutil.copytree(tiny_store, dst, ignore=shutil.ignore_patterns(".complete"))
    return dst


@pytest.fixture
def store_env(tmp_path, monkeypatch) -> Path:
    """An empty store directory, also set as ``$REACH_STORE``."""
    path = tmp_path / "store"
    monkeypatch.setenv("REACH_STORE", str(path))
    return path


os.environ.setdefault("MPLBACKEND", "Agg")
