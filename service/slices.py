"""``slice.png``: the safe-set picture ``reach plot`` draws (``reach.plot.plot_safe_set``), for one slice of the
non-position dimensions, rendered off the event loop and cached per (version, slice, d)."""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict

from pydantic import BaseModel, ConfigDict, Field, create_model

from reach.models import MODELS
from service.errors import ServiceError
from service.registry import Entry


def _slice_dims() -> dict[str, str]:
    """Every non-position state dimension of the registered models -> its description."""
    dims: dict[str, list[str]] = {}
    units: dict[str, str] = {}
    for model in MODELS.values():
        for i, (dim, unit) in enumerate(zip(model.state_names, model.state_units)):
            if i in tuple(model.position_dims):
                continue
            dims.setdefault(dim, []).append(model.name)
            units[dim] = unit
    return {d: f"{d} ({units[d]}) of the slice, for {', '.join(m)}; default: pi for a heading, else 0 when inside "
               "the grid, else the model's nominal speed (v_nominal), else the middle of the grid."
            for d, m in sorted(dims.items())}


class _SliceBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    safety_distance: float | None = Field(default=None, ge=0.0, allow_inf_nan=False,
                                          description="d (m) of the safe set {V0 >= d}; default: the model's.")


#: query parameters of ``slice.png`` (a pydantic model, built from the model registry)
SliceParams = create_model(  # type: ignore[call-overload]
    "SliceParams",
    __base__=_SliceBase,
    **{d: (float | None, Field(default=None, allow_inf_nan=False, description=desc))
       for d, desc in _slice_dims().items()},
)


def default_coordinate(entry: Entry, dim: int) -> float:
    vf = entry.vf
    lo, hi = float(vf.lo[dim]), float(vf.hi[dim])
    if vf.model.periodic[dim]:
        return math.pi
    if lo <= 0.0 <= hi:
        return 0.0
    nominal = (entry.vf.attrs.get("model_parameters") or vf.model.parameters or {}).get("v_nominal")
    if nominal is not None and lo <= float(nominal) <= hi:
        return float(nominal)
    return 0.5 * (lo + hi)


def slice_of(entry: Entry, params: BaseModel) -> tuple[dict[str, float], float | None]:
    vf = entry.vf
    given = params.model_dump(exclude_none=True)
    d = given.pop("safety_distance", None)
    own = set(vf.state_names[2:])
    foreign = sorted(set(given) - own)
    if foreign:
        raise ServiceError(422, "invalid_slice",
                           f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not a slice dimension of "
                           f"{entry.name} (its non-position dimensions: {', '.join(vf.state_names[2:])})")
    sl = {}
    for i, dim in enumerate(vf.state_names):
        if i < 2:
            continue
        sl[dim] = float(given[dim]) if dim in given else default_coordinate(entry, i)
    return sl, d


class SliceRenderer:
    """PNG bytes of a safe-set slice; matplotlib is not thread-safe, so one render at a time."""

    def __init__(self, cache_size: int = 64):
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple, bytes] = OrderedDict()
        self._size = cache_size

    def render(self, entry: Entry, sl: dict[str, float], safety_distance: float | None) -> bytes:
        from reach.plot import PlotError, plot_safe_set

        try:
            d = entry.vf.effective_safety_distance(safety_distance)
        except ValueError as exc:
            raise ServiceError(422, "invalid_safety_distance", str(exc)) from None
        key = (entry.content_hash, tuple(sorted(sl.items())), d)
        with self._lock:
            png = self._cache.get(key)
            if png is not None:
                self._cache.move_to_end(key)
                return png
            buf = io.BytesIO()
            try:
                plot_safe_set(entry.ds, buf, [sl], safety_distance=d)
            except PlotError as exc:
                raise ServiceError(422, "invalid_slice", f"{entry.name}: {exc}") from None
            png = buf.getvalue()
            self._cache[key] = png
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
            return png
