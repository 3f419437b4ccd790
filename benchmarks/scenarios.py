"""Environment step time with and without the layered filter (same run, same machine).

    .venv/bin/python benchmarks/scenarios.py [--agents 100 1000] [--steps 60] [--repeat 1] [--store DIR] [--out FILE]

For each agent count: the quadrotor ``dense`` scenario (about 4 m^2 per agent), stepped ``--steps`` decision
periods after a warm-up (numba compilation excluded) with the safety-blind nominal controller, then with the
layered filter (and the ECBF / braking baselines for context) on the identical episode. Step time = everything
the simulator does in one decision step (nominal controller, filter, sampled-data integration with separation
checks at the sub-steps, waypoint logic). Each filter's run is stepped in lock-step with a safety-blind run of its
own (one step each per round, alternating order), so that the two see the same machine load; the pairs run one after
the other. Overhead = (t_filter_run - t_none_run) / t_none_run of the pair's median step times; also the median over
rounds of the per-round ratio. The env table also has a `layered, bare call` row: the env stepped behind the
agents' states, the filter call and the action <-> control maps only (no checks, no metrics), the least any wrapper
around this filter can add. Writes a Markdown table (default ``benchmarks/results/scenarios.md``) with the machine
description.

Why pairs and not all runs in one rotation: two layered runs of one rotation (`layered` and `layered_coop`) step the
identical episode one right after the other on shared grids, so the second finds the first's grid rows in the caches
(2026-12-07: `layered_coop` +30 % against `layered` +40 % in one rotation, both +36..+39 % when each ran alone with
the safety-blind run), which no training loop with one filter gets.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.sim.baselines import make_filter  # noqa: E402
from clients.sim.cli import load_layered_inputs  # noqa: E402
from clients.sim.scenarios import make_scenario  # noqa: E402
from clients.sim.simulator import Simulator  # noqa: E402
from benchmarks.machine import machine  # noqa: E402
from reach.models import get_model  # noqa: E402

_LOADED: dict = {}


def _value_functions(model, store) -> dict:
    """The model's cooperative and worst-case value functions, loaded once per process (the pairs run one after
    the other, so no two layered runs are interleaved)."""
    if model.name not in _LOADED:
        coop, worst, _ = load_layered_inputs(model.name, store)
        _LOADED[model.name] = {"cooperative": coop, "worst_case": worst}
    return _LOADED[model.name]


def _make(fname, model, store, d):
    if fname not in ("layered", "layered_coop"):
        return make_filter(fname, model, store=store, safety_distance=d)
    # layered_coop: the same filter without the Prop. 1 diagnostics (cooperative grid only)
    return make_filter("layered", model, safety_distance=d, prop1=fname == "layered", **_value_functions(model, store))


def _interleaved(steppers: dict, steps: int) -> dict[str, list[float]]:
    """Step every runner once per round, in a rotating order, ``steps`` rounds: per-step wall times (s) per name.
    Interleaving at the step level puts every runner under the same machine load (a shared machine's load drifts
    between back-to-back runs by more than the effect measured here)."""
    names = list(steppers)
    times = {k: [] for k in names}
    for r in range(steps):
        for q in range(len(names)):
            k = names[(r + q) % len(names)]
            t = time.perf_counter()
            steppers[k]()
            times[k].append(time.perf_counter() - t)
    return times


def _row(n_agents, fname, times, filter_s):
    """The table row of one pair's per-step times (s): the filter's run against the pair's safety-blind run."""
    base = float(np.median(times["none"]))
    step_s = float(np.median(times[fname]))
    ratio = float(np.median(np.array(times[fname]) / np.array(times["none"])))  # per-round ratios
    row = {"agents": n_agents, "filter": fname, "step_ms": 1e3 * step_s, "none_ms": 1e3 * base,
           "filter_ms": 1e3 * filter_s, "overhead_pct": 100.0 * (step_s - base) / base,
           "ratio_pct": 100.0 * (ratio - 1.0)}
    print(row, flush=True)
    return row


def _pairs(n_agents, filters, make_runner, steps) -> list[dict]:
    """Each filter's runner stepped in lock-step with a fresh safety-blind runner. make_runner(fname) -> (step
    function, seconds spent in the filter so far: a function)."""
    rows = []
    for fname in filters:
        try:
            runners = {"none": make_runner("none"), fname: make_runner(fname)}
        except Exception as exc:  # e.g. no store for the layered filter
            rows.append({"agents": n_agents, "filter": fname, "error": f"{type(exc).__name__}: {exc}"})
            continue
        f0 = runners[fname][1]()
        times = _interleaved({k: r[0] for k, r in runners.items()}, steps)
        rows.append(_row(n_agents, fname, times, (runners[fname][1]() - f0) / steps))
    return rows


def bench(n_agents: int, steps: int, filters: list[str], store) -> list[dict]:
    """Simulator step of the dense scenario under each filter, each in lock-step with a safety-blind run."""
    model = get_model("quadrotor")
    sc = make_scenario("dense", seed=0, n_agents=n_agents)

    def runner(fname):
        filt = _make(fname, model, store, sc.safety_distance)
        warm = Simulator(sc, model=model, filter=filt, record=False)
        for _ in range(3):  # numba compilation
            warm.step()
        sim = Simulator(sc, model=model, filter=filt, record=False)
        for _ in range(5):  # let the agents start moving
            sim.step()
        return sim.step, lambda: sim.result.filter_time

    return _pairs(n_agents, filters, runner, steps)


class _Timed:
    """A filter behind a stopwatch (the wall time of its `filter` calls, s), so that the env table splits the
    overhead into the filter and the wrapper's own work; every other attribute is the filter's."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def filter(self, states, controls):
        t = time.perf_counter()
        out = self.inner.filter(states, controls)
        self.seconds += time.perf_counter() - t
        return out


# the env step behind the least any wrapper must do: the agents' states, the filter call and the action <-> control
# maps (one kernel each), no checks, no metrics (the floor of a wrapped step's overhead, whatever the design)
BARE_CALL = "layered, bare call"


def _bare_call_step(env, filt):
    from clients.sim.wrappers import _actions_to_controls_kernel, _controls_to_actions_kernel

    core = env.core

    def step(action):
        ids, states = env.safety_states()
        controls, _ = _actions_to_controls_kernel(action, ids, core.u_center, core.u_half)
        safe, _ = filt.filter(states, controls)
        out = action.copy()
        _controls_to_actions_kernel(safe, ids, core.u_center, core.u_half, out)
        return env.step(out)
    return step


def bench_env(n_agents: int, steps: int, filters: list[str], store) -> list[dict]:
    """Trainer-facing step: the Gymnasium joint env (observations + rewards + simulator step) with random
    actions, bare and wrapped in SafeJointEnv (same seed, same action sequence; for `layered` also the bare call,
    `BARE_CALL`), each filter's run in lock-step with a bare run."""
    from clients.sim.wrappers import NavigationAdapter, NavigationEnv, SafeJointEnv, SafetyLayer

    sc_rc = make_scenario("dense", seed=0, n_agents=n_agents).conflict_range
    rng = np.random.default_rng(0)
    m = get_model("quadrotor").n_controls      # the dense scenario's model
    actions = [rng.uniform(-1, 1, size=(n_agents, m)).astype(np.float32) for _ in range(steps + 3)]

    def runner(fname):
        env = NavigationEnv("dense", seed=0, n_agents=n_agents)
        model = env.model
        filt = None
        step = env.step
        if fname == BARE_CALL:
            filt = _Timed(_make("layered", model, store, model.safety_distance))
            step = _bare_call_step(env, filt)
        elif fname != "none":
            filt = _Timed(_make(fname, model, store, model.safety_distance))
            rc = getattr(filt, "conflict_range", None) or sc_rc
            env = SafeJointEnv(env, NavigationAdapter(model), SafetyLayer(model, filter=filt, conflict_range=rc))
            step = env.step
        env.reset(seed=0)
        for a in actions[:3]:  # warm-up (numba compilation)
            step(a)
        it = iter(actions[3:])
        return lambda: step(next(it)), lambda: filt.seconds if filt is not None else 0.0

    return _pairs(n_agents, filters + ([BARE_CALL] if "layered" in filters else []), runner, steps)


def _table(rows):
    out = ["| agents | filter | step (ms) | safety-blind step, same run (ms) | of which filter (ms) | overhead vs none "
           "| median per-round ratio |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['agents']} | {r['filter']} | not run: {r['error']} | | | | |")
        else:
            out.append(f"| {r['agents']} | {r['filter']} | {r['step_ms']:.3f} | {r['none_ms']:.3f} | "
                       f"{r['filter_ms']:.3f} | {r['overhead_pct']:+.1f} % | {r['ratio_pct']:+.1f} % |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure everything this many times (tables: the first; target: every repeat)")
    ap.add_argument("--filters", nargs="+", default=["layered", "layered_coop", "ecbf", "braking"])
    ap.add_argument("--store", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scenarios.md"))
    args = ap.parse_args(argv)
    runs = []  # per repeat: (simulator rows, env rows)
    for _ in range(max(args.repeat, 1)):
        rows, env_rows = [], []
        for n in args.agents:
            rows += bench(n, args.steps, args.filters, args.store)
            env_rows += bench_env(n, args.steps, args.filters, args.store)
        runs.append((rows, env_rows))
    rows, env_rows = runs[0]
    how = (f"median wall time per decision step over {args.steps} steps after warm-up; each filter's run is stepped "
           "in lock-step with a safety-blind run of its own (one step of each per round, alternating order), so that "
           "the two share the machine's load, and the pairs run one after the other (see the script's docstring). "
           "Overhead = ratio of the pair's medians - 1; the last column is the median over the rounds of "
           "t_filter / t_none - 1.")
    lines = ["# Scenario step time with and without the safety filter", "",
             f"Machine: {machine()}. Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
             f"`benchmarks/scenarios.py --agents {' '.join(map(str, args.agents))} --steps {args.steps} "
             f"--repeat {args.repeat}`.", "",
             "## Simulator step", "",
             "Quadrotor `dense` scenario (about 4 m^2 per agent), nominal waypoint tracker; one step = nominal "
             "controller + filter + 5 integration sub-steps with separation checks + waypoint logic; " + how +
             " `layered` = the filter as used in docs/results.md (cooperative + worst-case grids: prioritization, "
             "filter and Prop. 1 diagnostics); `layered_coop` = the same filter given only the cooperative grid "
             "(identical actions, no Prop. 1 diagnostics).",
             ""] + _table(rows) + [
             "", "## Trainer-facing env step", "",
             "`NavigationEnv` (Gymnasium, joint action) on the same scenario with the same random actions: "
             "observations (3 nearest neighbours), rewards and the simulator step; with the filter = wrapped in "
             "`SafeJointEnv` (adapter, filter, metrics; no penalty; 'of which filter' = the mean of its `filter` "
             "calls, the rest of the overhead is the wrapper's own work); " + how + f" `{BARE_CALL}` = no wrapper: the "
             "env step behind the agents' states, the filter call and the action <-> control maps (one kernel each; "
             "no checks, no metrics), the least any wrapper around this filter adds.", ""] + _table(env_rows)
    lines += ["", "## Target: overhead <= 20 % at 100 agents", ""]
    for label, k, fname in (("simulator step", 0, "layered"), ("trainer-facing env step", 1, "layered"),
                            ("env step, no wrapper (the floor)", 1, BARE_CALL)):
        for n in args.agents:
            figs = []
            for run in runs:
                r = next((x for x in run[k] if x["agents"] == n and x["filter"] == fname and "error" not in x), None)
                if r is not None:
                    figs.append((r["overhead_pct"], r["ratio_pct"]))
            if not figs:
                continue
            worst = max(max(a, b) for a, b in figs)
            ok = "met" if worst <= 20.0 else "NOT met"
            each = "; ".join(f"{a:+.0f} % (per-round {b:+.0f} %)" for a, b in figs)
            lines.append(f"- {label}, {n} agents, `{fname}`: {each}" + (f": {ok}" if n == 100 else "") + ".")
    for r in rows:
        if r.get("filter") == "layered" and "error" not in r:
            lines.append(f"- {r['agents']} agents: the filter costs {1e3 * r['filter_ms'] / r['agents']:.1f} us per "
                         f"agent per step, the safety-blind simulator step {1e3 * r['none_ms'] / r['agents']:.1f} "
                         "us per agent.")
    lines += ["", "The simulator is itself numba-vectorized, so its step is cheap; the overhead is measured against "
              "that step, not against a typical Python training environment."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
