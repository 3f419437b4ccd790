"""The compute pipeline: spec -> solve (checkpointed) -> R_c table -> validation -> Dataset -> atomic publish.

For each game of a spec (worst_case first, so its R_c table goes into both games' datasets):
solve with a store checkpointer (a killed run resumes), take the gradient from the solve result, compute the
potential-conflict range table from the worst-case grid, run the sampled validation, build the xarray Dataset
of docs/contract.md and publish it. A value function already published with the same spec hash is skipped
unless ``overwrite``; one published from a different spec is an ``ExistsError`` unless ``overwrite``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fcntl
import importlib.metadata
import os
import sys
import time
from typing import Any, Callable

import numpy as np

from reach.spec import Spec, load_spec
from reach.store import ExistsError, Store, StoreError, jsonable, open_store

__all__ = ["GameOutcome", "compute_spec", "compute", "build_dataset", "SIGN_CONVENTION", "package_versions"]

SIGN_CONVENTION = ("V > 0 safe; value = V0 (m), the closest approach distance the pair can guarantee, target "
                   "l = ||p_rel||; V_d = V0 - d; safe set {V0 >= d}")


@dataclasses.dataclass
class GameOutcome:
    """What happened to one value function of a spec."""

    name: str
    status: str  # "computed" | "skipped"
    content_hash: str | None = None
    seconds: float = 0.0
    resumed_from: float | None = None  # checkpoint time (s) a computation resumed from
    horizon: float | None = None
    converged: bool | None = None
    conflict_range: dict[float, float] | None = None
    falsification_rate: float | None = None


def package_versions() -> dict[str, str]:
    out = {}
    for pkg in ("reach", "hj_reachability", "jax", "jaxlib", "numpy", "numba", "xarray", "zarr"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            continue
    out["python"] = ".".join(str(v) for v in sys.version_info[:3])
    return out


def _model_parameters(model) -> dict[str, Any]:
    params = dict(model.parameters)
    params.update(decision_period=float(model.decision_period), observation_range=float(model.observation_range),
                  safety_distance=float(model.safety_distance))
    return jsonable(params)


def _result_get(result, *names, default=None):
    for n in names:
        if hasattr(result, n):
            return getattr(result, n)
    return default


def build_dataset(spec: Spec, game: str, result, conflict_table: dict[float, float], validation: dict):
    """The contract's Dataset for one game from a ``reach.solver.SolveResult``."""
    import xarray as xr

    model = spec.model
    dims = tuple(model.state_names)
    coords_1d = spec.grid_spec().coordinates(model)
    coords: dict[str, Any] = {}
    for dim, vec, unit, periodic in zip(dims, coords_1d, model.state_units, model.periodic):
        coords[dim] = xr.Variable((dim,), np.asarray(vec, dtype=np.float64),
                                  attrs={"units": unit, "periodic": int(bool(periodic))})
    coords["component"] = xr.Variable(("component",), np.array(dims))
    value = np.asarray(result.value, dtype=np.float32)
    gradient = np.asarray(result.gradient, dtype=np.float32)
    shape = tuple(len(c) for c in coords_1d)
    if value.shape != shape:
        raise ValueError(f"solver value has shape {value.shape}, grid is {shape}")
    if gradient.shape == (len(dims),) + shape:  # component-first layout -> component last
        gradient = np.moveaxis(gradient, 0, -1)
    if gradient.shape != shape + (len(dims),):
        raise ValueError(f"solver gradient has shape {gradient.shape}, expected {shape + (len(dims),)}")

    sds = sorted(conflict_table)
    coords["safety_distance"] = xr.Variable(("safety_distance",), np.asarray(sds, dtype=np.float64),
                                            attrs={"units": "m"})
    residual_times = np.asarray(_result_get(result, "residual_times", default=[]), dtype=np.float64).reshape(-1)
    residuals = np.asarray(_result_get(result, "residuals", default=[]), dtype=np.float64).reshape(-1)
    coords["residual_time"] = xr.Variable(("iteration",), residual_times, attrs={"units": "s"})

    data_vars: dict[str, Any] = {
        "value": xr.Variable(dims, value, attrs={"units": "m", "long_name": "V0 (V_d if gamma > 0)"}),
        "gradient": xr.Variable(dims + ("component",), gradient, attrs={"long_name": "dV/ds"}),
        "conflict_range": xr.Variable(("safety_distance",),
                                      np.asarray([conflict_table[d] for d in sds], dtype=np.float64),
                                      attrs={"units": "m", "long_name": "potential-conflict range R_c(d)"}),
        "residual": xr.Variable(("iteration",), residuals,
                                attrs={"units": "m", "long_name": "max |V(t) - V(t - window)|"}),
    }
    snaps = _result_get(result, "value_at_horizon", "snapshots")
    snap_h = _result_get(result, "horizons", "snapshot_horizons")
    if game == "worst_case" and snaps is not None and snap_h is not None and len(snap_h):
        snaps = np.asarray(snaps, dtype=np.float32)
        coords["horizon"] = xr.Variable(("horizon",), np.asarray(snap_h, dtype=np.float64), attrs={"units": "s"})
        data_vars["value_at_horizon"] = xr.Variable(("horizon",) + dims, snaps, attrs={"units": "m"})

    horizon = float(result.horizon)
    s = spec.config.solver
    attrs = {
        "name": spec.value_function_name(game),
        "spec": spec.name,
        "model": model.name,
        "model_parameters": _model_parameters(model),
        "units": {**{n: u for n, u in zip(dims, model.state_units)}, "value": "m", "conflict_range": "m",
                  "horizon": "s", "gamma": "1/s", "safety_distance": "m"},
        "state_names": list(dims),
        "control_order": list(model.control_order),
        "game": game,
        "sign_convention": SIGN_CONVENTION,
        "safety_distance": spec.discounted_safety_distance,
        "gamma": float(spec.gamma),
        "horizon": horizon,
        "converged": bool(result.converged),
        "tolerance": float(s.tolerance),
        "solver": str(_result_get(result, "solver", default="hj_reachability")),
        "scheme": str(_result_get(result, "scheme", default=s.scheme)),
        "versions": package_versions(),
        "spec_hash": spec.hash,
        "spec_config": spec.config.model_dump(mode="json"),
        "validation": jsonable(validation),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if game == "worst_case":
        attrs["engagement_horizon"] = float(s.engagement_horizon)
    return xr.Dataset(data_vars, coords=coords, attrs=jsonable(attrs))


def _solve(spec: Spec, game: str, store: Store, progress: bool, log: Callable[[str], None]):
    from reach.solver import solve

    name = spec.value_function_name(game)
    checkpoint = store.checkpointer(name, spec.hash)
    if checkpoint.exists():
        log(f"{name}: found a checkpoint, resuming")
    result = solve(spec.model, spec.grid_spec(), game, spec.solver_settings(game), gamma=spec.gamma,
                   safety_distance=spec.discounted_safety_distance, progress=progress, checkpoint=checkpoint)
    return result, checkpoint.loaded_time


def _conflict_table(spec: Spec, worst_value) -> dict[float, float]:
    from reach.conflict import conflict_range_table

    coords = spec.grid_spec().coordinates(spec.model)
    sds = list(spec.config.conflict.safety_distances)
    d_fixed = spec.discounted_safety_distance
    if d_fixed is not None:
        # a discounted grid stores V_d for one d: R_c is only defined at that d
        table = conflict_range_table(np.asarray(worst_value) + d_fixed, coords, spec.model, [d_fixed])
    else:
        table = conflict_range_table(np.asarray(worst_value), coords, spec.model, sds)
    if isinstance(table, dict):
        return {float(k): float(v) for k, v in table.items()}
    arr = np.asarray(table, dtype=np.float64).reshape(-1)
    keys = [d_fixed] if d_fixed is not None else sds
    return {float(k): float(v) for k, v in zip(keys, arr)}


def _validate(spec: Spec, game: str, result) -> dict:
    v = spec.config.validation
    if v.n_samples == 0:
        return {"n_samples": 0, "margin": float(v.margin), "seed": int(v.seed), "falsification_rate": None,
                "skipped": True}
    from reach.validation import validate

    coords = spec.grid_spec().coordinates(spec.model)
    out = validate(spec.model, game, np.asarray(result.value), coords,
                   spec.validation_safety_distance, v.margin, v.n_samples, v.seed, float(result.horizon))
    out = dict(out)
    out.setdefault("n_samples", int(v.n_samples))
    out.setdefault("margin", float(v.margin))
    out.setdefault("seed", int(v.seed))
    out.setdefault("safety_distance", spec.validation_safety_distance)
    return out


def compute_spec(spec: Spec | str, store: Store | str | None = None, overwrite: bool = False,
                 progress: bool = True, log: Callable[[str], None] | None = None) -> list[GameOutcome]:
    """Compute and publish every game of ``spec``; returns one outcome per game (in the spec's order)."""
    if not isinstance(spec, Spec):
        spec = load_spec(spec)
    if not isinstance(store, Store):
        store = open_store(store)
    log = log or (lambda msg: print(msg, file=sys.stderr))

    with _compute_lock(store, spec.name):
        return _compute_locked(spec, store, overwrite, progress, log)


@contextlib.contextmanager
def _compute_lock(store: Store, spec_name: str):
    """One `reach compute` per spec and store at a time (they would share checkpoints)."""
    lock_dir = store.root / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{spec_name}.compute.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another 'reach compute' of spec {spec_name!r} is running on {str(store.root)!r}") \
                from None
        yield
    finally:
        os.close(fd)


def _compute_locked(spec: Spec, store: Store, overwrite: bool, progress: bool,
                    log: Callable[[str], None]) -> list[GameOutcome]:
    names = {g: spec.value_function_name(g) for g in spec.games}
    todo: dict[str, bool] = {}
    for game, name in names.items():
        if store.exists(name):
            same = store.info(name).get("spec_hash") == spec.hash
            if not overwrite and not same:
                raise ExistsError(f"value function {name!r} already exists in {str(store.root)!r} from a different "
                                  f"spec (use --overwrite to replace it)")
            todo[game] = overwrite
        else:
            todo[game] = True

    outcomes: dict[str, GameOutcome] = {}
    for game, name in names.items():
        if not todo[game]:
            info = store.info(name)
            outcomes[game] = GameOutcome(name, "skipped", info.get("content_hash"), horizon=info.get("horizon"),
                                         converged=info.get("converged"),
                                         falsification_rate=(info.get("validation") or {}).get("falsification_rate"))
    if not any(todo.values()):
        return [outcomes[g] for g in spec.games]

    # worst case first: its grid gives the R_c table for both games
    table: dict[float, float] | None = None
    worst_name = spec.value_function_name("worst_case")
    order = sorted((g for g in spec.games if todo[g]), key=lambda g: g != "worst_case")
    if "worst_case" not in order:
        if store.exists(worst_name) and store.info(worst_name).get("spec_hash") == spec.hash:
            ds = store.open(worst_name)
            table = {float(d): float(r) for d, r in zip(ds["safety_distance"].values, ds["conflict_range"].values)}
        else:
            t0 = time.perf_counter()
            log(f"{worst_name}: solving the worst-case game for the R_c table (not published: not in games)")
            res, _ = _solve(spec, "worst_case", store, progress, log)
            table = _conflict_table(spec, res.value)
            store.clear_checkpoint(worst_name)
            log(f"{worst_name}: R_c table in {time.perf_counter() - t0:.1f} s")

    for game in order:
        name = names[game]
        t0 = time.perf_counter()
        log(f"{name}: solving ({spec.model.name}, grid {'x'.join(str(p) for p in spec.points)}, horizon "
            f"{'T_e = ' if game == 'worst_case' else 'max '}{spec.horizon_for(game)} s)")
        result, resumed = _solve(spec, game, store, progress, log)
        if game == "worst_case":
            table = _conflict_table(spec, result.value)
        assert table is not None
        validation = _validate(spec, game, result)
        ds = build_dataset(spec, game, result, table, validation)
        digest = store.publish(name, ds, overwrite=overwrite)
        store.clear_checkpoint(name)
        seconds = time.perf_counter() - t0
        outcomes[game] = GameOutcome(name, "computed", digest, seconds, resumed, float(result.horizon),
                                     bool(result.converged), dict(table), validation.get("falsification_rate"))
        log(f"{name}: published {digest[:16]} in {seconds:.1f} s (horizon {float(result.horizon):g} s, "
            f"converged {bool(result.converged)})")
    return [outcomes[g] for g in spec.games]


def compute(spec_path: str, store: str | None = None, overwrite: bool = False, progress: bool = True):
    """Convenience wrapper: ``compute_spec(load_spec(spec_path), open_store(store), ...)``."""
    return compute_spec(load_spec(spec_path), open_store(store), overwrite=overwrite, progress=progress)
