"""Benchmark: our solver vs plain hj_reachability on the default quadrotor cooperative grid.

(a) plain hj_reachability as the paper's reference implementation used it: a `ControlAndDisturbanceAffineDynamics`
    with constant control boxes and the library's dissipation bounds (global Lax-Friedrichs, pointwise
    overestimate), `hj.solve` over a fixed time vector, WENO3 + TVD-RK3 (`SolverSettings.with_accuracy("high")`),
    value postprocessor min(V, l).
(b) `reach.solver.solve`: same scheme, exact model bounds, constant CFL step, stops at convergence.

Accuracy: both against a finer-grid solution of our solver (multilinear interpolation onto the coarse nodes),
and against each other. Also: the worst-case game vs its closed form V = min_t ||p + v t||.

Timing: by default each solve is timed once, in a process started cold, so the first solve of each shape includes
JAX's JIT compilation (and, for the first one, the first use of the device). That is the CPU figure's method. With
--warm every solve is run once untimed (compiling it) and the second call, with the same grid, dynamics, settings
and time vector, is timed: the compiled solve time, which is what separates the solvers on a GPU (there a cold
small solve is mostly compilation). Accuracy figures do not depend on the option.

Usage: python benchmarks/solver.py [--points 31] [--fine 41] [--horizon 10] [--warm]
       [--out benchmarks/results/solver.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine  # noqa: E402


def secs(x: float) -> str:
    """Wall seconds with enough digits for a compiled GPU solve (tenths of a second from 10 s up)."""
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def solve_timed(warm: bool, *args, **kwargs):
    """reach.solver.solve(*args, **kwargs); with warm, a first call compiles and the second is returned (its
    wall_time is the compiled solve's)."""
    from reach.solver import solve

    if warm:
        solve(*args, **kwargs)
    return solve(*args, **kwargs)


def plain_hj(grid_spec, horizon: float, window: float, game: str = "cooperative", warm: bool = False):
    """Reference-implementation style solve; returns (value at horizon, residual per window, wall time).

    warm: run hj.solve once untimed with the same settings, dynamics, grid and time vector (hj.solve is jitted
    with the dynamics and the settings' callables as static arguments, so the same objects reuse the compiled
    solve), then time the second call (hj.solve and the copy to the host only)."""
    import hj_reachability as hj
    import jax.numpy as jnp

    from reach.grid import make_grid
    from reach.models import get_model
    from reach.solver import target_function

    class QuadrotorPair(hj.ControlAndDisturbanceAffineDynamics):
        """s = (px, py, vx, vy), ego control (max), other as disturbance (max: cooperative, min: worst case)."""

        def __init__(self):
            box = hj.sets.Box(jnp.array([-0.5, -0.5]), jnp.array([0.5, 0.5]))
            super().__init__("max", "max" if game == "cooperative" else "min", box, box)

        def open_loop_dynamics(self, state, time):
            return jnp.array([state[2], state[3], 0.0, 0.0])

        def control_jacobian(self, state, time):
            return jnp.array([[0.0, 0.0], [0.0, 0.0], [-1.0, 0.0], [0.0, -1.0]])

        def disturbance_jacobian(self, state, time):
            return jnp.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])

    model = get_model("quadrotor")
    t0 = time.perf_counter()
    grid = make_grid(model, grid_spec)
    target = jnp.asarray(target_function(model, grid_spec))
    settings = hj.SolverSettings.with_accuracy("high", value_postprocessor=lambda t, v: jnp.minimum(v, target))
    n = int(round(horizon / window))
    times = jnp.linspace(0.0, -horizon, n + 1)
    dynamics = QuadrotorPair()
    if warm:
        np.asarray(hj.solve(settings, dynamics, grid, times, target, progress_bar=False))
        t0 = time.perf_counter()
    values = hj.solve(settings, dynamics, grid, times, target, progress_bar=False)
    values = np.asarray(values)
    wall = time.perf_counter() - t0
    residuals = np.max(np.abs(np.diff(values, axis=0)), axis=tuple(range(1, values.ndim)))
    return values[-1], residuals, wall


def on_coarse(fine, coarse):
    """A finer solution interpolated onto the coarse grid's nodes."""
    from reach.validation import interpolate
    pts = np.stack(np.meshgrid(*coarse.coordinates, indexing="ij"), -1).reshape(-1, len(coarse.coordinates))
    (v,) = interpolate([fine.value], fine.coordinates, (False,) * 4, pts)
    return v.reshape(coarse.value.shape)


def errors(value, reference, coords, inner=2.0, v_inner=np.inf):
    """max and mean |value - reference| over nodes with |px|, |py| <= inner (m), away from the box edges, and
    |vx|, |vy| <= v_inner (m/s)."""
    g = np.meshgrid(*coords, indexing="ij")
    m = (np.abs(g[0]) <= inner) & (np.abs(g[1]) <= inner) & (np.abs(g[2]) <= v_inner) & (np.abs(g[3]) <= v_inner)
    e = np.abs(value - reference)[m]
    return float(e.max()), float(e.mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=31, help="nodes per dim of the benchmark grid")
    ap.add_argument("--fine", type=int, default=41, help="nodes per dim of the reference grid (0: skip)")
    ap.add_argument("--horizon", type=float, default=10.0, help="(a)'s fixed horizon (s): the spec's max_horizon")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="m per window (the spec's)")
    ap.add_argument("--window", type=float, default=0.5, help="s (the spec's)")
    ap.add_argument("--warm", action="store_true",
                    help="time the second (compiled) call of each solve instead of a single cold one")
    ap.add_argument("--out", default=None, help="write a markdown report here")
    args = ap.parse_args()

    from reach.grid import GridSpec
    from reach.models import get_model
    from reach.solver import SolverSettings

    model = get_model("quadrotor")
    spec = GridSpec((-3, -3, -2, -2), (3, 3, 2, 2), (args.points,) * 4)
    settings = SolverSettings(tolerance=args.tolerance, window=args.window, max_horizon=args.horizon,
                              chunk=args.window)
    lines = [f"machine: {machine()}",
             f"grid: quadrotor cooperative, px, py in [-3, 3] m, vx, vy in [-2, 2] m/s, {args.points}^4 nodes",
             "timing: " + ("warm: each solve run once to compile, the second call timed" if args.warm else
                           "cold: each solve timed once, JIT compilation included")]
    print(*lines, sep="\n", flush=True)

    ours = solve_timed(args.warm, model, spec, "cooperative", settings, progress=False)
    lines.append(f"(b) reach.solver: {secs(ours.wall_time)} s wall, converged={ours.converged} at horizon "
                 f"{ours.horizon:g} s ({ours.n_steps} RK3 steps of {ours.time_step:.4f} s), last residual "
                 f"{ours.residuals[-1]:.2e} m")
    print(lines[-1], flush=True)

    ref_value, ref_res, ref_wall = plain_hj(spec, args.horizon, args.window, warm=args.warm)
    under = np.flatnonzero(ref_res < args.tolerance)
    lines.append(f"(a) plain hj_reachability, fixed horizon {args.horizon:g} s: {secs(ref_wall)} s wall; its residual "
                 f"first drops under {args.tolerance:g} m at {args.window * (under[0] + 1) if len(under) else 'never'}"
                 f" s, last residual {ref_res[-1]:.2e} m")
    print(lines[-1], flush=True)
    # Same horizon as (b) needed, to separate the per-step cost from the convergence stop.
    same_value, _, same_wall = plain_hj(spec, ours.horizon, args.window, warm=args.warm)
    lines.append(f"(a') plain hj_reachability to (b)'s horizon {ours.horizon:g} s: {secs(same_wall)} s wall")
    print(lines[-1], flush=True)

    e_ab = errors(ours.value, ref_value, ours.coordinates)
    lines.append(f"|(b) - (a)| inner max {e_ab[0]:.4f} m, mean {e_ab[1]:.5f} m")
    print(lines[-1], flush=True)
    rows = []
    if args.fine:
        fine_spec = GridSpec(spec.lo, spec.hi, (args.fine,) * 4)
        fine = solve_timed(args.warm, model, fine_spec, "cooperative", settings, progress=False)
        ref = on_coarse(fine, ours)
        lines.append(f"reference: reach.solver on {args.fine}^4, {secs(fine.wall_time)} s, converged={fine.converged} "
                     f"at {fine.horizon:g} s")
        print(lines[-1], flush=True)
        for label, value in (("(a) hj fixed horizon", ref_value), ("(a') hj to (b)'s horizon", same_value),
                             ("(b) reach.solver", ours.value)):
            rows.append((label, *errors(value, ref, ours.coordinates),
                         *errors(value, ref, ours.coordinates, v_inner=1.5)))

    # Worst case vs the closed form (T_e = 0.4 s), both solvers.
    wc = solve_timed(args.warm, model, spec, "worst_case",
                     SolverSettings(engagement_horizon=0.4, snapshot_horizons=()), progress=False)
    g = np.stack(np.meshgrid(*wc.coordinates, indexing="ij"), -1)
    p, v = g[..., :2], g[..., 2:]
    vv = np.sum(v * v, -1)
    t_star = np.clip(-np.sum(p * v, -1) / np.where(vv > 0, vv, 1.0), 0.0, 0.4)
    exact = np.linalg.norm(p + v * t_star[..., None], axis=-1)
    wc_err = errors(wc.value, exact, wc.coordinates) + errors(wc.value, exact, wc.coordinates, v_inner=1.5)
    wc_ref, _, wc_ref_wall = plain_hj(spec, 0.4, 0.4, "worst_case", warm=args.warm)
    wc_ref_err = errors(wc_ref, exact, wc.coordinates) + errors(wc_ref, exact, wc.coordinates, v_inner=1.5)
    for label, e, wall in (("(b) reach.solver", wc_err, wc.wall_time), ("(a) plain hj", wc_ref_err, wc_ref_wall)):
        lines.append(f"worst case T_e = 0.4 s vs closed form, {label}: {secs(wall)} s; max / mean error "
                     f"{e[0]:.4f} / {e[1]:.5f} m (|p| <= 2), {e[2]:.4f} / {e[3]:.5f} m (|p| <= 2, |v| <= 1.5)")
        print(lines[-1], flush=True)

    speedup_fixed = ref_wall / ours.wall_time
    speedup_same = same_wall / ours.wall_time
    lines.append(f"speed-up (a)/(b): {speedup_fixed:.2f}x; (a')/(b): {speedup_same:.2f}x"
                 + (" (warm: compiled solves)" if args.warm else ""))
    print(lines[-1], flush=True)

    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        md = ["# Solver benchmark", "", "Command: `python benchmarks/solver.py " +
              " ".join(f"--{k}" if v is True else f"--{k} {v}" for k, v in vars(args).items()
                       if k != "out" and v is not None and v is not False) + "`",
              "", *[f"- {x}" for x in lines], ""]
        if rows:
            md += [f"Accuracy of the cooperative value vs the {args.fine}^4 reference (reach.solver; so it shares "
                   "(b)'s model, which also bounds the relative speed at |v_i| = 2 m/s, and its scheme):", "",
                   "| solve | max err, abs(p) <= 2 (m) | mean err (m) | max err, also abs(v) <= 1.5 (m) | mean err (m) |",
                   "|---|---|---|---|---|"]
            md += [f"| {r[0]} | {r[1]:.4f} | {r[2]:.5f} | {r[3]:.4f} | {r[4]:.5f} |" for r in rows]
            md.append("")
        out.write_text("\n".join(md))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
