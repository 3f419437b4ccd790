"""Safe-set plots: {V0 >= d} on the relative position plane (x_r, y_r / px, py), like Figs. 2-3 of the paper.

The non-position dimensions are fixed at the requested relative headings / speeds / relative velocities
(linear interpolation between grid nodes, periodic in the heading). Circles mark d and R_c(d).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["PlotError", "safe_set_slices", "plot_safe_set"]


class PlotError(ValueError):
    """Bad plot request (a slice outside the grid, a shift of a discounted grid, ...)."""


def _interp_dim(arr: np.ndarray, coord: np.ndarray, axis: int, x: float, periodic: bool) -> np.ndarray:
    """Linear interpolation of ``arr`` along ``axis`` at ``x`` (periodic: wraps to [-pi, pi))."""
    coord = np.asarray(coord, dtype=np.float64)
    if periodic:
        period = 2.0 * math.pi
        x = (x - coord[0]) % period + coord[0]
        step = period / len(coord)
        i = int(math.floor((x - coord[0]) / step)) % len(coord)
        j = (i + 1) % len(coord)
        w = ((x - coord[0]) - i * step) / step
    else:
        lo, hi = coord[0], coord[-1]
        tol = 1e-9 * max(1.0, abs(hi - lo))
        if not (lo - tol <= x <= hi + tol):
            raise PlotError(f"{x} is outside the grid [{lo}, {hi}]")
        x = min(max(x, lo), hi)
        i = int(np.clip(np.searchsorted(coord, x, side="right") - 1, 0, len(coord) - 2))
        j = i + 1
        w = (x - coord[i]) / (coord[j] - coord[i])
    a = np.take(arr, i, axis=axis)
    b = np.take(arr, j, axis=axis)
    return (1.0 - w) * a + w * b


def safe_set_slices(ds, slices: Sequence[dict[str, float]]) -> list[np.ndarray]:
    """2-D value slices (position dims x, y) of ``ds['value']`` at each ``{dim: value}`` of the other dims."""
    names = list(ds.attrs["state_names"])
    pos = names[:2]
    out = []
    for sl in slices:
        missing = [d for d in names[2:] if d not in sl]
        if missing:
            raise PlotError(f"slice needs a value for {', '.join(missing)}")
        arr = np.asarray(ds["value"].transpose(*names).values, dtype=np.float64)
        # interpolate the trailing dims from the last one down so axis numbers stay valid
        for k in range(len(names) - 1, 1, -1):
            dim = names[k]
            periodic = bool(int(ds[dim].attrs.get("periodic", 0)))
            try:
                arr = _interp_dim(arr, ds[dim].values, k, float(sl[dim]), periodic)
            except PlotError as exc:
                raise PlotError(f"{dim} = {sl[dim]}: {exc}") from None
        assert arr.ndim == 2, pos
        out.append(arr)
    return out


def _conflict_range_at(ds, d: float) -> float | None:
    if "conflict_range" not in ds:
        return None
    sds = np.asarray(ds["safety_distance"].values, dtype=np.float64)
    rcs = np.asarray(ds["conflict_range"].values, dtype=np.float64)
    ok = np.isfinite(rcs)
    if not ok.any():
        return None
    sds, rcs = sds[ok], rcs[ok]
    if d < sds[0] - 1e-12 or d > sds[-1] + 1e-12:
        return None
    return float(np.interp(d, sds, rcs))


def _label(dim: str, value: float, unit: str) -> str:
    if unit == "rad":
        return f"{dim} = {value:.3g} rad ({math.degrees(value):.0f} deg)"
    return f"{dim} = {value:g} {unit}"


def plot_safe_set(ds, out, slices: Sequence[dict[str, float]], safety_distance: float | None = None,
                  title: str | None = None) -> dict:
    """Draw the safe set {V0 >= d} for each slice on the position plane and save a PNG to ``out``.

    Returns a small summary (d, R_c, the fraction of safe nodes per slice).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle, Rectangle

    attrs = ds.attrs
    names = list(attrs["state_names"])
    units = attrs.get("units") or {}
    fixed_d = attrs.get("safety_distance")
    if fixed_d is not None:
        if safety_distance is not None and not math.isclose(float(safety_distance), float(fixed_d), rel_tol=1e-9):
            raise PlotError(f"{attrs.get('name')}: computed with gamma = {attrs.get('gamma')} for safety distance "
                            f"{fixed_d}; it cannot be shifted to {safety_distance}")
        d = float(fixed_d)
        shift = 0.0  # stored value is V_d already
    else:
        d = float(safety_distance) if safety_distance is not None else float(
            (attrs.get("model_parameters") or {}).get("safety_distance", 0.0))
        if not (math.isfinite(d) and d >= 0):
            raise PlotError(f"safety distance must be finite and >= 0, got {d}")
        shift = d
    planes = safe_set_slices(ds, slices)
    x = np.asarray(ds[names[0]].values)
    y = np.asarray(ds[names[1]].values)
    rc = _conflict_range_at(ds, d)

    fig, ax = plt.subplots(figsize=(6.4, 6.0), dpi=110)
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0", "C1", "C2", "C3"])
    handles = []
    fractions = []
    for k, (plane, sl) in enumerate(zip(planes, slices)):
        vd = plane - shift  # V_d on (x, y)
        color = colors[k % len(colors)]
        fractions.append(float(np.mean(vd >= 0)))
        if np.nanmin(vd) < 0 < np.nanmax(vd):
            ax.contourf(x, y, vd.T, levels=[np.nanmin(vd) - 1.0, 0.0], colors=[color], alpha=0.18)
            ax.contour(x, y, vd.T, levels=[0.0], colors=[color], linewidths=1.8)
        elif np.nanmax(vd) < 0:
            # all unsafe: fill the whole plane (levels around the data collapse when |V - d| >> 1, e.g. d = 1e300)
            ax.add_patch(Rectangle((x[0], y[0]), x[-1] - x[0], y[-1] - y[0], color=color, alpha=0.18, lw=0))
        label = ", ".join(_label(dim, float(sl[dim]), units.get(dim, "")) for dim in names[2:])
        handles.append(Line2D([], [], color=color, lw=1.8, label=f"{label} (unsafe inside)"))
    # a circle beyond the plane's farthest corner is invisible, and Agg takes minutes to clip a huge one (d = 1e9)
    farthest = math.hypot(max(abs(x[0]), abs(x[-1])), max(abs(y[0]), abs(y[-1])))
    if d <= farthest:
        ax.add_patch(Circle((0.0, 0.0), d, fill=False, ls="--", lw=1.2, color="k", zorder=5))
    handles.append(Line2D([], [], color="k", ls="--", label=f"d = {d:g} m"))
    if rc is not None:
        if rc <= farthest:
            ax.add_patch(Circle((0.0, 0.0), rc, fill=False, ls=":", lw=1.5, color="tab:red", zorder=5))
        handles.append(Line2D([], [], color="tab:red", ls=":", label=f"R_c = {rc:g} m"))
    ax.plot([0.0], [0.0], marker="o", color="k", ms=4)
    ax.set_xlim(x[0], x[-1])
    ax.set_ylim(y[0], y[-1])
    ax.set_aspect("equal")
    ax.set_xlabel(f"{names[0]} ({units.get(names[0], 'm')})")
    ax.set_ylabel(f"{names[1]} ({units.get(names[1], 'm')})")
    ax.set_title(title or f"{attrs.get('name')}: safe set {{V0 >= d}}, {attrs.get('game')}, "
                          f"horizon {float(attrs.get('horizon', float('nan'))):g} s", fontsize=9)
    ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.85)
    ax.grid(True, lw=0.3, alpha=0.5)
    fig.tight_layout()
    fig.savefig(out, format="png")
    plt.close(fig)
    return {"safety_distance": d, "conflict_range": rc, "safe_fraction": fractions}
