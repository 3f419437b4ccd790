"""Why do near-collisions happen under the layered filter? Per-encounter forensics of a scenario.

    .venv/bin/python scripts/diagnose_near_collisions.py [intersection] [--episodes 25] [--seed 0] [--store DIR]
        [--value-margin M] [--set interval=20 --set jitter=3 --set crossing_lead=none] [--history 12] [--json FILE]

For every pair that comes closer than d (any integration sub-step): the pair, when, how close, both agents'
prioritized partners and filter statuses, the agents within R_c, whether one of them was flying a missed-waypoint
run-up, and the pair's barrier history B_ij (the filter's barrier: min(V_coop - d - value margin, ||p|| - d)) with the
partners and statuses at each step. See :mod:`clients.sim.forensics`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.sim.baselines import make_filter  # noqa: E402
from clients.sim.cli import load_layered_inputs  # noqa: E402
from clients.sim.forensics import markdown_summary, near_collision_forensics  # noqa: E402
from clients.sim.scenarios import SCENARIO_MODEL, SCENARIOS, make_scenario  # noqa: E402
from reach.models import get_model  # noqa: E402


def _value(text: str):
    if text.lower() in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        return float(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", nargs="?", default="intersection", choices=sorted(SCENARIOS))
    ap.add_argument("--episodes", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None)
    ap.add_argument("--value-margin", type=float, default=None, help="filter value margin (default: the grid's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="scenario builder argument, e.g. --set interval=20 (repeatable; 'none' for None)")
    ap.add_argument("--history", type=int, default=12, help="barrier history steps printed per encounter")
    ap.add_argument("--json", default=None, help="also write the encounters as JSON")
    args = ap.parse_args(argv)
    kw = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    model = get_model(SCENARIO_MODEL[args.scenario])
    probe = make_scenario(args.scenario, seed=args.seed, **kw)
    coop, worst, rc = load_layered_inputs(model.name, args.store, probe.safety_distance)
    fkw = {} if args.value_margin is None else {"value_margin": args.value_margin}
    layered = make_filter("layered", model, cooperative=coop, worst_case=worst, safety_distance=probe.safety_distance,
                          **fkw)
    rep = near_collision_forensics(args.scenario, layered, episodes=args.episodes, seed=args.seed,
                                   conflict_range=rc, scenario_kwargs=kw, history=args.history)
    print(f"# {args.scenario} under layered: {probe.description}; d = {probe.safety_distance:g} m, R_c = {rc:.4g} m, "
          f"value margin {layered.inner.value_margin:g} m, {args.episodes} episodes from seed {args.seed}\n")
    for e in rep.encounters:
        print(f"seed {e.seed} pair ({e.i}, {e.j}) t={e.t_first:.0f} s, {e.steps} steps, "
              f"min sep {e.min_separation:.0f} m; partners {e.partners}, status {e.status}, within R_c {e.n_in_rc}, "
              f"third agents {list(e.third_agents)}, run-up {e.run_up}; B last >= 0 at t={e.crossing_t:.0f} s: "
              f"{e.crossing} {e.crossing_status}")
        for t, b, pi, pj, si, sj in e.history:
            mark = "  <- crossing" if (not math.isnan(e.crossing_t) and t == e.crossing_t) else ""
            print(f"    t={t:6.0f}  B={b:8.1f}  partner_i={pi:3d} partner_j={pj:3d}  {si:>12s} / {sj:<12s}{mark}")
    print()
    print("\n".join(markdown_summary(rep)))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": rep.summary(), "encounters": [asdict(e) for e in
                                                                                         rep.encounters]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
