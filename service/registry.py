"""The loaded value functions, refreshed from the store when it publishes a new version (hot reload).

``Registry.get(name)`` answers from memory; at most every ``reload_interval`` seconds per name it asks the store
for the published version (``Store.version``: reads two small files) and, when the content hash changed, loads the
new version (``Store.open`` verifies the hash) and swaps it in. Requests in flight keep the entry they started with
(entries are immutable). A version that fails to load leaves the previous one in service and is reported by
``/readyz``; a name that was removed from the store disappears. The registry never writes to the store.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import numpy as np

from clients.value_function import ValueFunction
from reach.store import IntegrityError, Store, StoreError, UnknownValueFunctionError, jsonable, validate_name
from service.errors import ServiceError
from service.metrics import Metrics
from service.models import CatalogueEntry, ConflictRangeRow, Metadata, StateDimension

log = logging.getLogger("service")


@dataclass(frozen=True)
class Entry:
    """One loaded version of a value function (immutable: a reload builds a new entry)."""

    name: str
    vf: ValueFunction
    ds: Any  # xarray.Dataset with `value` (+ `conflict_range`), coords and attrs: what reach.plot draws
    content_hash: str
    loaded_at: float
    catalogue: CatalogueEntry
    metadata: Metadata
    etag: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "etag", f'"{self.content_hash}"')

    @property
    def spec(self) -> str:
        return self.name.split("/")[0]

    @property
    def game(self) -> str:
        return self.name.split("/")[1]


def _float_or_none(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def build_entry(name: str, ds) -> Entry:
    """An :class:`Entry` from a dataset the store loaded (and verified)."""
    vf = ValueFunction.from_dataset(ds, verify=False)  # Store.open verified the content hash
    model = vf.model
    spec, game = name.split("/")
    dims = [
        StateDimension(name=dim, units=str(unit), lo=float(vf.lo[i]), hi=float(vf.hi[i]),
                       periodic=bool(model.periodic[i]), position=i in tuple(model.position_dims))
        for i, (dim, unit) in enumerate(zip(model.state_names, model.state_units))
    ]
    common = dict(
        name=name, spec=spec, game=game, model=model.name, state=dims,
        safety_distance="shiftable" if vf.safety_distance is None else vf.safety_distance,
        default_safety_distance=vf.effective_safety_distance(None),
        content_hash=vf.content_hash, url=f"/v1/value-functions/{name}",
    )
    catalogue = CatalogueEntry(**common)
    table = []
    if "conflict_range" in ds.data_vars and "safety_distance" in ds["conflict_range"].dims:
        cd = np.asarray(ds["conflict_range"].coords["safety_distance"].values, dtype=np.float64)
        cr = np.asarray(ds["conflict_range"].values, dtype=np.float64)
        table = [ConflictRangeRow(safety_distance=float(d), conflict_range=float(r))
                 for d, r in sorted(zip(cd, cr)) if math.isfinite(float(d)) and math.isfinite(float(r))]
    attrs = jsonable(dict(vf.attrs))
    metadata = Metadata(
        **common,
        grid_shape=list(vf.shape),
        gamma=_float_or_none(attrs.get("gamma")),
        horizon=_float_or_none(attrs.get("horizon")),
        converged=attrs.get("converged") if isinstance(attrs.get("converged"), bool) else None,
        conflict_range_table=table,
        validation=attrs.get("validation") if isinstance(attrs.get("validation"), dict) else None,
        attrs=attrs,
    )
    keep = [v for v in ("value", "conflict_range") if v in ds.data_vars]
    light = ds[keep]
    light.attrs = dict(ds.attrs)
    return Entry(name=name, vf=vf, ds=light, content_hash=str(vf.content_hash), loaded_at=time.time(),
                 catalogue=catalogue, metadata=metadata)


class Registry:
    """Value functions in memory, keyed by ``<spec>/<game>``; thread-safe."""

    def __init__(self, store: Store, reload_interval: float = 1.0, metrics: Metrics | None = None):
        self.store = store
        self.reload_interval = float(reload_interval)
        self.metrics = metrics
        self._entries: dict[str, Entry] = {}
        self._checked: dict[str, float] = {}  # monotonic time of the last version check per name
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.problems: dict[str, str] = {}  # name -> why its published version is not (or no longer) served

    # ------------------------------------------------------------------ lookups
    def _lock(self, name: str) -> threading.Lock:
        with self._guard:
            lock = self._locks.get(name)
            if lock is None:
                lock = self._locks[name] = threading.Lock()
            return lock

    def fresh(self, name: str) -> Entry | None:
        """The entry if it was checked against the store within ``reload_interval`` (no I/O), else None."""
        entry = self._entries.get(name)
        if entry is not None and time.monotonic() - self._checked.get(name, -math.inf) < self.reload_interval:
            return entry
        return None

    def expire(self, name: str) -> None:
        """Check ``name`` against the store on the next lookup."""
        self._checked.pop(name, None)

    async def aget(self, name: str) -> Entry:
        """:meth:`get` for async routes: answers from memory, checks/loads in a worker thread when due."""
        entry = self.fresh(name)
        if entry is not None:
            return entry
        return await anyio.to_thread.run_sync(self.get, name)

    def get(self, name: str) -> Entry:
        """The current entry of ``name`` (checks the store's version when due; loads a new one if published).

        Raises ServiceError 404 (unknown or invalid name) or 503 (the published version cannot be loaded and no
        earlier one is in memory).
        """
        try:
            validate_name(name)
        except UnknownValueFunctionError as exc:
            raise ServiceError(404, "unknown_value_function", str(exc)) from None
        entry = self.fresh(name)
        if entry is not None:
            return entry
        with self._lock(name):
            entry = self.fresh(name)
            if entry is not None:
                return entry
            return self._refresh(name)

    def _refresh(self, name: str) -> Entry:
        current = self._entries.get(name)
        now = time.monotonic()
        try:
            version = self.store.version(name)
        except UnknownValueFunctionError as exc:
            self._drop(name)
            raise ServiceError(404, "unknown_value_function", self._unknown_message(name, exc)) from None
        except (StoreError, OSError) as exc:
            return self._failed(name, current, now, exc)
        if current is not None and current.content_hash == version:
            self._checked[name] = now
            return current
        try:
            ds = self.store.open(name)
            entry = build_entry(name, ds)
        except UnknownValueFunctionError as exc:
            self._drop(name)
            raise ServiceError(404, "unknown_value_function", self._unknown_message(name, exc)) from None
        except Exception as exc:  # IntegrityError, a dataset the client refuses, an unreadable file
            return self._failed(name, current, now, exc)
        self._entries[name] = entry
        self._checked[name] = now
        self.problems.pop(name, None)
        if self.metrics is not None:
            self.metrics.reloads.labels(name, "loaded" if current is None else "reloaded").inc()
            self.metrics.loaded.set(len(self._entries))
        if current is not None:
            log.info("%s: hot-reloaded %s -> %s", name, current.content_hash[:16], entry.content_hash[:16])
        return entry

    def _failed(self, name: str, current: Entry | None, now: float, exc: Exception) -> Entry:
        problem = f"{type(exc).__name__}: {exc}"
        if self.problems.get(name) != problem:
            log.error("%s: cannot load the published version: %s", name, problem)
        self.problems[name] = problem
        if self.metrics is not None:
            self.metrics.reloads.labels(name, "failed").inc()
        self._checked[name] = now  # retry after reload_interval, not on every request
        if current is not None:
            return current  # keep serving the last good version
        error = "integrity_error" if isinstance(exc, IntegrityError) else "unavailable"
        raise ServiceError(503, error, f"{name}: the published version cannot be served: {problem}")

    def _drop(self, name: str) -> None:
        self._entries.pop(name, None)
        self._checked.pop(name, None)
        self.problems.pop(name, None)
        if self.metrics is not None:
            self.metrics.loaded.set(len(self._entries))

    def _unknown_message(self, name: str, exc: Exception) -> str:
        try:
            known = ", ".join(self.store.list()) or "none"
        except OSError:
            known = "?"
        return f"unknown value function {name!r} (known: {known})"

    # ------------------------------------------------------------------ whole store
    def names(self) -> list[str]:
        try:
            return self.store.list()
        except OSError:
            return []

    def refresh_all(self) -> list[Entry]:
        """Entries of every value function the store lists (loading/refreshing as due); failures are skipped
        and recorded in :attr:`problems`."""
        out = []
        names = self.names()
        for name in list(self._entries):
            if name not in names:  # removed from the store
                self._drop(name)
        for name in names:
            try:
                out.append(self.get(name))
            except ServiceError:
                continue
        return out

    def loaded(self) -> dict[str, Entry]:
        return dict(self._entries)
