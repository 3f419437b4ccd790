"""`ValueFunction`: one stored value function in memory, with batch lookups through the numba kernel.

    vf = ValueFunction.load("store", "quadrotor/cooperative")     # or a reach.store.Store
    b, grad = vf.value_and_gradient(states)                        # V_d = V0 - d and its gradient, (N,), (N, n)

The grid (value and stored gradient packed per node, see `clients.interp`), its bounds and metadata are held in
memory; the dataset is checked against its content hash when it is adopted.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from clients import interp


class StateError(ValueError):
    """A state the value function cannot answer for: NaN, wrong shape, or a coordinate out of bounds."""


def real_array(x, what: str = "states") -> np.ndarray:
    """x as a float64 array; `StateError` unless it holds integers or floats (numpy would parse strings, drop
    imaginary parts and read booleans as 0 / 1, with a warning at most)."""
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise StateError(f"{what} must be a numeric array: {exc}") from None
    if a.dtype.kind not in "iuf":
        raise StateError(f"{what} must be real numbers, got dtype {a.dtype}")
    return np.asarray(a, dtype=np.float64)


def effective_distance(name: str, fixed, default: float, requested=None, why: str = "") -> float:
    """The safety distance d (m) a lookup of value function `name` answers for: a grid computed for one d
    (`fixed`, gamma > 0) takes only that one, a shiftable grid (`fixed` None) any finite d >= 0, `default` when none
    is requested; ValueError otherwise (`why` is added to the message of the first case)."""
    if requested is not None and type(requested) is not float:
        a = np.asarray(requested, dtype=object if isinstance(requested, (list, tuple)) else None)
        if a.ndim != 0 or a.dtype.kind not in "iuf":        # not a string, a boolean or an array of several
            raise ValueError(f"safety_distance must be a real number (m), got {requested!r}")
        requested = float(a)
    if fixed is not None:
        if requested is not None and not math.isclose(requested, fixed, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(f"{name} was computed for safety_distance={fixed} m{why}; asking for {requested} m is "
                             f"not allowed")
        return fixed
    d = default if requested is None else requested
    if not math.isfinite(d) or d < 0:
        raise ValueError(f"safety_distance must be finite and >= 0, got {requested}")
    return d


class ValueFunction:
    """A value function V0 (m) on a uniform grid; lookups return V_d = V0 - d (m) and its gradient.

    Attributes: name, model (reach Model), game, attrs (dict), content_hash, state_names, lo, hi (grid bounds
    per relative-state dim; for a periodic dim the wrap interval [-pi, pi)), safety_distance (None when the grid
    is shiftable to any d; set for a gamma > 0 grid, which stores V_d for that d only), gamma (1/s).
    """

    def __init__(self, *, name, model, game, attrs, content_hash, coords, value, gradient, conflict_table):
        self.name = name
        self.model = model
        self.game = game
        self.attrs = attrs
        self.content_hash = content_hash
        self.state_names = tuple(model.state_names)
        self.n = len(self.state_names)
        lo, inv_dx, npts, per, strides, hi = interp.grid_geometry(coords, model.periodic)
        self.lo = lo
        self.hi = hi
        self.shape = tuple(int(k) for k in npts)
        self.spacing = 1.0 / inv_dx
        self._packed = interp.pack_grid(value, gradient)
        self._geom = (lo, inv_dx, npts, per, strides)
        sd = attrs.get("safety_distance")
        self.safety_distance = None if sd is None else float(sd)
        self.gamma = float(attrs.get("gamma") or 0.0)
        self._conflict_d, self._conflict_r = conflict_table

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, store, name: str) -> "ValueFunction":
        """Load `name` (e.g. 'quadrotor/cooperative') from a store path or a `reach.store.Store`.

        The store verifies the content hash while loading (`IntegrityError` on mismatch).
        """
        if isinstance(store, (str, os.PathLike)):
            from reach.store import open_store
            store = open_store(store)
        ds = store.open(name)
        return cls.from_dataset(ds, verify=False)

    @classmethod
    def fetch(cls, url: str, name: str, cache_dir=None, token: str | None = None, timeout: float = 60.0,
              allow_stale: bool = False) -> "ValueFunction":
        """Download `name` from a reach service at `url` (read only) and load it; cached locally.

        The download is verified against its content hash before use (`reach.store.IntegrityError` otherwise);
        the cache (default `$REACH_CACHE` or `~/.cache/reach`, laid out like a store) is reused while the service
        still publishes the same version. See `clients.http.ReachClient.fetch`.
        """
        from clients.http import ReachClient

        with ReachClient(url, token=token, timeout=timeout) as client:
            return client.fetch(name, cache_dir=cache_dir, allow_stale=allow_stale)

    @classmethod
    def from_dataset(cls, ds, verify: bool = True) -> "ValueFunction":
        """Adopt an in-memory dataset laid out as in docs/contract.md.

        With verify (default) the `content_hash` attribute must match the data (`reach.store.IntegrityError`
        otherwise; a dataset without one is refused the same way).
        """
        from reach.models import get_model
        from reach.store import IntegrityError, content_hash

        attrs = dict(ds.attrs)
        stored = attrs.get("content_hash")
        if verify:
            if not stored:
                raise IntegrityError("dataset has no content_hash attribute; refusing to load")
            actual = content_hash(ds)
            if actual != stored:
                raise IntegrityError(f"content hash mismatch (stored {stored}, computed {actual}); refusing to load")
        for key in ("model", "game"):
            if key not in attrs:
                raise ValueError(f"dataset attrs lack {key!r}")
        model = get_model(attrs["model"])
        names = tuple(model.state_names)
        if "state_names" in attrs and tuple(attrs["state_names"]) != names:
            raise ValueError(f"dataset state_names {attrs['state_names']} differ from model {model.name}'s {names}")
        for dim in names:
            if dim not in ds.coords:
                raise ValueError(f"dataset lacks the coordinate {dim!r}")
        if "value" not in ds or "gradient" not in ds:
            raise ValueError("dataset must hold the data variables 'value' and 'gradient'")
        value = ds["value"].transpose(*names).values
        gradient = ds["gradient"].transpose(*names, "component")
        comps = tuple(str(c) for c in gradient.coords["component"].values) if "component" in gradient.coords else names
        if comps != names:
            raise ValueError(f"gradient components {comps} differ from the state names {names}")
        coords = [np.asarray(ds.coords[d].values, dtype=np.float64) for d in names]
        if "conflict_range" in ds and "safety_distance" in ds["conflict_range"].dims:
            cd = np.asarray(ds["conflict_range"].coords["safety_distance"].values, dtype=np.float64)
            cr = np.asarray(ds["conflict_range"].values, dtype=np.float64)
            order = np.argsort(cd)
            table = (cd[order], cr[order])
        else:
            table = (None, None)
        return cls(name=attrs.get("name", f"{model.name}/{attrs['game']}"), model=model, game=attrs["game"],
                   attrs=attrs, content_hash=stored, coords=coords, value=value, gradient=gradient.values,
                   conflict_table=table)

    def __repr__(self) -> str:
        return (f"ValueFunction({self.name!r}, model={self.model.name}, game={self.game}, shape={self.shape}, "
                f"safety_distance={self.safety_distance}, hash={str(self.content_hash)[:16]})")

    # ------------------------------------------------------------------ lookups
    def shift(self, safety_distance=None) -> float:
        """The constant subtracted from the stored value for distance d (m): d, or 0 for a gamma > 0 grid."""
        d = self.effective_safety_distance(safety_distance)
        return 0.0 if self.safety_distance is not None else d

    def effective_safety_distance(self, safety_distance=None) -> float:
        """The d (m) that `value(states, safety_distance)` refers to."""
        return effective_distance(self.name, self.safety_distance, self.model.safety_distance, safety_distance,
                                  f" (gamma={self.gamma})")

    def _states(self, states) -> np.ndarray:
        a = real_array(states, f"states (N, {self.n})")
        if a.ndim == 1 and a.shape[0] == self.n:
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != self.n:
            raise StateError(f"states must have shape (N, {self.n}) with columns {', '.join(self.state_names)}; "
                             f"got {np.shape(states)}")
        return np.ascontiguousarray(a)

    def _lookup(self, states, safety_distance, want_grad: bool, raise_bounds: bool = True):
        s = self._states(states)
        shift = self.shift(safety_distance)
        n_pts = s.shape[0]
        values = np.empty(n_pts)
        grads = np.empty((n_pts, self.n)) if want_grad else np.empty((0, self.n))
        status = np.empty(n_pts, dtype=np.int64)
        lo, inv_dx, npts, per, strides = self._geom
        bad = interp.interp_batch(self._packed, lo, inv_dx, npts, per, strides, s, shift, want_grad, values,
                                  grads, status)
        if bad >= 0:
            kind, dim = interp.decode_status(int(status[bad]), self.state_names)
            name = self.state_names[dim]
            if kind == "nan" or raise_bounds:
                if kind == "nan":
                    raise StateError(f"state {bad}: {name} is {s[bad, dim]} (NaN or infinite)")
                raise StateError(f"state {bad}: {name} = {s[bad, dim]:.6g} is outside the grid bounds "
                                 f"[{self.lo[dim]:.6g}, {self.hi[dim]:.6g}] of {self.name} (no extrapolation)")
        return values, grads, status

    def value(self, states, safety_distance=None) -> np.ndarray:
        """V_d (m) at states (N, n) (a single (n,) state is read as N = 1) -> (N,); +inf beyond the position
        extent; `StateError` for NaN, a wrong shape or another coordinate out of bounds."""
        return self._lookup(states, safety_distance, False)[0]

    def value_and_gradient(self, states, safety_distance=None) -> tuple[np.ndarray, np.ndarray]:
        """V_d (N,) and its gradient (N, n) (the stored gradient, interpolated); zero gradient beyond the extent."""
        v, g, _ = self._lookup(states, safety_distance, True)
        return v, g

    def in_domain(self, states) -> np.ndarray:
        """(N,) bool: the state is inside the grid (False beyond the position extent or another bound);
        `StateError` for NaN or a wrong shape."""
        _, _, status = self._lookup(states, None if self.safety_distance is None else self.safety_distance,
                                    False, raise_bounds=False)
        return status == interp.OK

    def conflict_range(self, safety_distance=None) -> float:
        """Potential-conflict range R_c(d) (m), linearly interpolated in the stored table (no extrapolation)."""
        if self._conflict_d is None:
            raise ValueError(f"{self.name} holds no conflict_range table")
        d = self.effective_safety_distance(safety_distance)
        cd, cr = self._conflict_d, self._conflict_r
        if d < cd[0] - 1e-9 * max(1.0, abs(cd[0])) or d > cd[-1] + 1e-9 * max(1.0, abs(cd[-1])):
            raise ValueError(f"safety_distance {d} m is outside the conflict_range table "
                             f"[{cd[0]}, {cd[-1]}] m of {self.name}")
        if cd.size == 1:
            return float(cr[0])
        return float(np.interp(d, cd, cr))

    # ------------------------------------------------------------------ internals shared with the filter
    def kernel_args(self) -> tuple[Any, ...]:
        """(packed, lo, inv_dx, npts, periodic, strides): the arrays `clients.interp.interp_point` takes."""
        return (self._packed,) + self._geom
