"""Trajectory pictures: paths, waypoints, and the d and R_c circles at the episode's closest moment."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .simulator import EpisodeResult


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_episode(r: EpisodeResult, ax=None, title: str | None = None, unit: float | None = None):
    """Draw one recorded episode on ``ax`` (created if None). ``unit``: divide lengths by it (1000 -> km)."""
    plt = _plt()
    if r.positions is None:
        raise ValueError("episode was run without record=True")
    unit = unit or (1000.0 if r.model == "air_taxi" else 1.0)
    label = "km" if unit == 1000.0 else "m"
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5.2, 5.2))
    pos = r.positions / unit
    n = pos.shape[1]
    colors = plt.cm.tab20(np.linspace(0, 1, max(n, 2)) % 1.0) if n > 10 else plt.cm.tab10(np.arange(n) % 10)
    lw = 0.6 if n > 50 else 1.2
    for i in range(n):
        ax.plot(pos[:, i, 0], pos[:, i, 1], "-", color=colors[i], lw=lw, alpha=0.9)
        first = np.flatnonzero(np.isfinite(pos[:, i, 0]))
        if first.size:
            ax.plot(pos[first[0], i, 0], pos[first[0], i, 1], "o", color=colors[i], ms=3)
    if r.waypoints is not None and n <= 50:
        wps = r.waypoints / unit
        ax.scatter(wps[:, :-1, 0].ravel(), wps[:, :-1, 1].ravel(), marker="x", c="0.4", s=18, lw=1, zorder=3,
                   label="waypoint")
        ax.scatter(wps[:, -1, 0], wps[:, -1, 1], marker="*", c="g", s=40, zorder=3, label="goal")
    t_min = r.min_separation_time
    i, j = r.min_separation_pair
    if np.isfinite(t_min) and i >= 0 and r.times is not None:
        k = int(np.argmin(np.abs(r.times - t_min)))
        for a in (i, j):
            p = pos[k, a]
            if np.all(np.isfinite(p)):
                ax.add_patch(plt.Circle(p, r.safety_distance / unit, fill=False, color="r", lw=1.2))
                ax.add_patch(plt.Circle(p, r.conflict_range / unit, fill=False, color="orange", lw=0.8, ls="--"))
        live = np.isfinite(pos[k, :, 0])
        ax.scatter(pos[k, live, 0], pos[k, live, 1], c="k", s=8, zorder=4)
        ax.plot([], [], color="r", lw=1.2, label=f"d = {r.safety_distance:g} m")
        ax.plot([], [], color="orange", lw=0.8, ls="--", label=f"R_c = {r.conflict_range:.3g} m")
    if r.bounds is not None:
        x0, x1, y0, y1 = (b / unit for b in r.bounds)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xlabel(f"x ({label})")
    ax.set_ylabel(f"y ({label})")
    ax.set_title(title or f"{r.scenario} / {r.filter} (seed {r.seed}), min sep {r.min_separation:.3g} m",
                 fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
    if own:
        fig.tight_layout()
        return fig
    return ax


def save_comparison(results: Sequence[EpisodeResult], path: str | Path) -> Path:
    """One panel per episode (one filter each, same scenario and seed), side by side, saved as PNG."""
    plt = _plt()
    k = len(results)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 4.4), squeeze=False)
    for ax, r in zip(axes[0], results):
        plot_episode(r, ax=ax, title=f"{r.filter}: min sep {r.min_separation:.3g} m, "
                                     f"{int(np.sum(r.goal_reached))}/{r.n_agents} at goal")
    fig.suptitle(f"{results[0].scenario} (seed {results[0].seed})", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_animation(r: EpisodeResult, path: str | Path, max_frames: int = 90, fps: int = 12) -> Path:
    """Animated GIF of one recorded episode: agents with their d circles (red where a pair is closer than d),
    trails, waypoints. At most ``max_frames`` frames (the recording is subsampled evenly)."""
    plt = _plt()
    from matplotlib.animation import FuncAnimation, PillowWriter

    if r.positions is None or r.times is None:
        raise ValueError("episode was run without record=True")
    unit = 1000.0 if r.model == "air_taxi" else 1.0
    pos = r.positions / unit
    frames = np.unique(np.linspace(0, len(pos) - 1, min(max_frames, len(pos))).astype(int))
    n = pos.shape[1]
    fig, ax = plt.subplots(figsize=(4.6, 4.6))
    plot_episode(r, ax=ax)  # static background: paths, waypoints, axes
    for line in ax.lines:
        line.set_alpha(0.2)
    for patch in list(ax.patches):  # the closest-moment circles belong to the still picture
        patch.remove()
    circles = [plt.Circle((np.nan, np.nan), r.safety_distance / 2 / unit, fill=False, lw=0.8) for _ in range(n)]
    for c in circles:
        ax.add_patch(c)
    dots = ax.scatter(np.zeros(n), np.zeros(n), c="k", s=6, zorder=5)
    stamp = ax.text(0.02, 0.97, "", transform=ax.transAxes, va="top", fontsize=8)

    def draw(k):
        p = pos[k]
        live = np.isfinite(p[:, 0])
        gap = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])
        np.fill_diagonal(gap, np.inf)
        close = np.nanmin(np.where(np.isfinite(gap), gap, np.inf), axis=1) < r.safety_distance / unit
        for i, c in enumerate(circles):
            c.center = tuple(p[i]) if live[i] else (np.nan, np.nan)
            c.set_edgecolor("r" if close[i] else "0.3")
        dots.set_offsets(np.where(live[:, None], p, np.nan))
        stamp.set_text(f"t = {r.times[k]:.1f} s")
        return circles + [dots, stamp]

    anim = FuncAnimation(fig, draw, frames=frames, blit=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    anim.save(path, writer=PillowWriter(fps=fps), dpi=70)
    plt.close(fig)
    return path
