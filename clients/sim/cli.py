"""``reach simulate SCENARIO --filter none|layered|ecbf|braking|all --episodes 25 --seed 0 --out DIR [--store DIR]``

Runs N seeded episodes of a scenario under each requested filter (episode e uses seed ``seed + e``, the same
episodes for every filter) and writes ``<out>/<scenario>.md`` and ``<out>/<scenario>.csv`` (one row per filter)
plus trajectory PNGs: ``<scenario>_seed<seed>.png`` (every filter on the first episode, side by side) and
``<scenario>_<filter>_closest.png`` (the episode with the smallest separation, d and R_c circles drawn around the
closest pair at that moment); with ``--animate`` also ``<scenario>_<filter>.gif`` (the first episode, animated).

The store (``--store``, default ``$REACH_STORE`` or ``./store``) provides ``<model>/cooperative`` and
``<model>/worst_case`` for the layered filter and the potential-conflict range R_c(d) used by the conflict metric
(for every filter). Without them, ``layered`` is reported as unavailable and R_c falls back to the paper's value.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from reach.cli import output_dir_problem

from .baselines import FILTER_NAMES, make_filter
from .metrics import Row, aggregate, markdown_table, write_csv
from .scenarios import SCENARIOS, make_scenario, scenario_model
from .simulator import EpisodeResult, Simulator


def _int_at_least(low: int):
    """argparse type: an integer >= low (a usage error, not a traceback after the episodes ran)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("scenario", choices=sorted(SCENARIOS) + ["all"], help="scenario name, or all")
    parser.add_argument("--filter", default="all", choices=list(FILTER_NAMES) + ["all"],
                        help="safety filter to run (default: all, compared on the same episodes)")
    parser.add_argument("--episodes", type=_int_at_least(1), default=25,
                        help="seeded episodes per filter (default 25)")
    parser.add_argument("--seed", type=_int_at_least(0), default=0, help="seed of the first episode (default 0)")
    parser.add_argument("--out", default="out/simulate", help="output directory")
    parser.add_argument("--store", default=None, help="value-function store (default $REACH_STORE or ./store)")
    parser.add_argument("--spec", default=None,
                        help="value-function spec in the store (default: the scenario's model name)")
    parser.add_argument("--agents", type=_int_at_least(2), default=None,
                        help="override the number of agents (dense only)")
    parser.add_argument("--no-plots", action="store_true", help="skip the trajectory PNGs")
    parser.add_argument("--animate", action="store_true",
                        help="also write an animated GIF of the first episode per filter (<scenario>_<filter>.gif)")
    return parser


def load_layered_inputs(model_name: str, store=None, safety_distance: float | None = None, spec: str | None = None):
    """(cooperative vf, worst-case vf, R_c) from the store's ``<spec>/cooperative`` and ``<spec>/worst_case``
    (spec defaults to the model name), or raise a clear error naming what is missing."""
    from clients import ValueFunction

    from .baselines import open_store

    st = open_store(store)
    spec = spec or model_name
    coop = ValueFunction.load(st, f"{spec}/cooperative")
    worst = ValueFunction.load(st, f"{spec}/worst_case")
    if coop.model.name != model_name or worst.model.name != model_name:
        raise ValueError(f"value functions {spec}/* are for model {coop.model.name!r}, not {model_name!r}")
    d = safety_distance if safety_distance is not None else (worst.safety_distance or coop.model.safety_distance)
    return coop, worst, float(worst.conflict_range(d if worst.safety_distance is None else None))


def run_scenario(name: str, filters: Sequence[str], episodes: int = 25, seed: int = 0, store=None,
                 scenario_kwargs: dict | None = None, record: bool = True, log=print, spec: str | None = None,
                 filter_kwargs: dict | None = None) -> tuple[list[Row], dict[str, list[EpisodeResult]], dict]:
    """Run every filter on the same ``episodes`` seeded episodes of scenario ``name``.

    Returns the table rows, the episode results per filter, and notes (R_c source, unavailable filters)."""
    from reach.models import get_model

    scenario_kwargs = scenario_kwargs or {}
    model = get_model(scenario_model(name))
    probe = make_scenario(name, seed=seed, **scenario_kwargs)
    notes: dict = {"conflict_range_source": "paper default", "unavailable": {}}
    conflict_range = probe.conflict_range
    layered_inputs = None
    try:
        layered_inputs = load_layered_inputs(model.name, store, probe.safety_distance, spec=spec)
        conflict_range = layered_inputs[2]
        notes["conflict_range_source"] = f"store {spec or model.name}/worst_case"
    except Exception as exc:  # missing store / grid: layered unavailable, metrics use the paper's R_c
        notes["store_error"] = f"{type(exc).__name__}: {exc}"
    notes["conflict_range"] = conflict_range
    rows: list[Row] = []
    results: dict[str, list[EpisodeResult]] = {}
    # the simulator's own kernels compiled before any timing (else the first filter's step times carry it)
    warm = Simulator(probe, model=model, conflict_range=conflict_range, record=False)
    for _ in range(3):
        warm.step()
    for fname in filters:
        if fname == "layered" and layered_inputs is None:
            notes["unavailable"]["layered"] = notes.get("store_error", "no store")
            log(f"[{name}] layered: unavailable ({notes['unavailable']['layered']})")
            continue
        kwargs = dict((filter_kwargs or {}).get(fname, {}))
        if fname == "layered":
            kwargs.update(cooperative=layered_inputs[0], worst_case=layered_inputs[1])
        filt = make_filter(fname, model, safety_distance=probe.safety_distance, **kwargs)
        # warm-up call (numba compilation) so that the step times measure steady-state work
        x0 = probe.initial_states[probe.departure_times <= probe.departure_times.min()]
        filt.filter(x0, np.zeros((x0.shape[0], model.n_controls)))
        eps = []
        t0 = time.perf_counter()
        for e in range(episodes):
            sc = make_scenario(name, seed=seed + e, **scenario_kwargs)
            eps.append(Simulator(sc, model=model, filter=filt, conflict_range=conflict_range, record=record).run())
        row = aggregate(eps)
        rows.append(row)
        results[fname] = eps
        log(f"[{name}] {fname}: {episodes} episodes in {time.perf_counter() - t0:.1f} s; near-collision "
            f"{row.mean['near_collision_pct']:.3f} %, goal {row.mean['goal_reach_pct']:.1f} %, min sep "
            f"{row.min_separation_m:.3g} m")
    return rows, results, notes


def write_outputs(name: str, rows: list[Row], results: dict[str, list[EpisodeResult]], notes: dict, out: Path,
                  plots: bool = True, animate: bool = False) -> dict[str, Path]:
    paths: dict[str, Path] = {}
    if not rows:
        return paths
    out.mkdir(parents=True, exist_ok=True)
    probe = next(iter(results.values()))[0]
    md = [f"# {name}\n", f"{rows[0].n_agents} agents, d = {rows[0].safety_distance:g} m, R_c = "
          f"{notes['conflict_range']:.4g} m ({notes['conflict_range_source']}), {rows[0].episodes} episodes "
          f"(seeds {probe.seed}..{probe.seed + rows[0].episodes - 1}).\n", markdown_table(rows)]
    for f, why in notes.get("unavailable", {}).items():
        md.append(f"\n`{f}` not run: {why}\n")
    paths["md"] = out / f"{name}.md"
    paths["md"].write_text("\n".join(md))
    paths["csv"] = out / f"{name}.csv"
    write_csv(rows, paths["csv"])
    if plots:
        from .plots import plot_episode, save_comparison, _plt

        firsts = [eps[0] for eps in results.values() if eps and eps[0].positions is not None]
        if firsts:
            paths["comparison"] = save_comparison(firsts, out / f"{name}_seed{firsts[0].seed}.png")
        plt = _plt()
        for f, eps in results.items():
            worst = min(eps, key=lambda r: r.min_separation)
            if worst.positions is None:
                continue
            fig = plot_episode(worst)
            p = out / f"{name}_{f}_closest.png"
            fig.savefig(p, dpi=110)
            plt.close(fig)
            paths[f"closest_{f}"] = p
    if animate:
        from .plots import save_animation

        for f, eps in results.items():
            if eps and eps[0].positions is not None:
                paths[f"animation_{f}"] = save_animation(eps[0], out / f"{name}_{f}.gif")
    return paths


def run(args: argparse.Namespace) -> int:
    names = sorted(SCENARIOS) if args.scenario == "all" else [args.scenario]
    filters = list(FILTER_NAMES) if args.filter == "all" else [args.filter]
    out = Path(args.out)
    # checked before any episode runs (mkdir would fail only after them); created when there is something to
    # write, so that a failed run leaves no empty directory
    problem = output_dir_problem(out)
    if problem:
        print(f"reach simulate: --out {out}: {problem}", file=sys.stderr)
        return 2
    if args.agents is not None and args.scenario not in ("dense", "all"):
        print("reach simulate: --agents applies to the dense scenario only", file=sys.stderr)
        return 2
    done: list[str] = []
    try:
        for name in names:
            kw = {"n_agents": args.agents} if (args.agents and name == "dense") else {}
            rows, results, notes = run_scenario(name, filters, episodes=args.episodes, seed=args.seed,
                                                store=args.store, scenario_kwargs=kw, record=not args.no_plots,
                                                spec=args.spec)
            paths = write_outputs(name, rows, results, notes, out, plots=not args.no_plots,
                                  animate=args.animate and not args.no_plots)
            if rows:
                print(markdown_table(rows))
            for k, p in paths.items():
                print(f"wrote {p}")
            if args.filter == "layered" and not rows:
                return 2
            done.append(name)
    except KeyboardInterrupt:    # simulate has no checkpoint: say what was written
        kept = f"the finished scenarios ({', '.join(done)}) are in {out}" if done else "nothing was written"
        print(f"reach simulate: interrupted; {kept}", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog="reach simulate", description=__doc__.split("\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
