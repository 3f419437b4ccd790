"""Random-policy rollout through the layered safety wrapper (trains nothing; shows where a trainer hooks in).

    .venv/bin/python examples/random_rollout.py [--scenario random] [--steps 200] [--store DIR] [--filter layered]

1. Build a PettingZoo ParallelEnv (here the built-in navigation env over the simulator; your own env works the
   same once you write a StateAdapter for it: agent states out, actions <-> physical controls).
2. Wrap it: ``SafeParallelEnv(env, adapter, SafetyLayer(...))``. The SafetyLayer carries the filter, the
   curriculum schedule (filter off for the first part of training, then on while d grows to its target and R_c
   follows d) and the potential-conflict penalty weight.
3. Step it with any policy: the policy's actions are filtered before the env sees them, penalties are added to
   the rewards, and ``infos[agent]["safety"]`` / ``env.last_metrics`` report interventions, near-collisions and
   conflicts for logging.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clients.sim.baselines import make_filter  # noqa: E402
from clients.sim.wrappers import NavigationAdapter, NavigationParallelEnv, SafeParallelEnv, SafetyLayer  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="random")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default=None, help="value-function store for the layered filter")
    ap.add_argument("--spec", default=None, help="value-function spec in the store (default: the model name)")
    ap.add_argument("--filter", default="layered", choices=["layered", "ecbf", "braking", "none"])
    ap.add_argument("--penalty-weight", type=float, default=1.0)
    args = ap.parse_args(argv)

    env = NavigationParallelEnv(args.scenario, seed=args.seed)
    model = env.model
    target_d = model.safety_distance

    # --- hook: the filter (rebuilt by the curriculum whenever d changes) and R_c(d)
    def filter_factory(d):
        kw = {"spec": args.spec} if args.filter == "layered" else {}
        return make_filter(args.filter, model, store=args.store, safety_distance=d, **kw)

    # --- hook: R_c(d) from the store's worst-case value function (the paper's value for the baselines)
    if args.filter == "layered":
        from clients import ValueFunction
        from clients.sim.baselines import open_store

        worst = ValueFunction.load(open_store(args.store), f"{args.spec or model.name}/worst_case")
        conflict_range_fn = worst.conflict_range
    else:
        from clients.sim.scenarios import make_scenario

        rc0 = make_scenario(args.scenario, seed=args.seed).conflict_range
        conflict_range_fn = (lambda d: rc0 * d / target_d)
    # --- hook: the curriculum (here compressed into this short rollout: filter off for the first 30 %, then on
    # with d = target / 2, then target; R_c follows d)
    from clients.training import CurriculumSchedule

    schedule = CurriculumSchedule(total_steps=args.steps, target_distance=target_d, conflict_range=conflict_range_fn,
                                  n_stages=2)
    layer = SafetyLayer(model, filter=filter_factory(target_d), safety_distance=target_d,
                        conflict_range=conflict_range_fn(target_d), penalty_weight=args.penalty_weight,
                        curriculum=schedule, filter_factory=filter_factory)
    safe_env = SafeParallelEnv(env, NavigationAdapter(model), layer)

    rng = np.random.default_rng(args.seed)
    obs, infos = safe_env.reset(seed=args.seed)
    totals = {"reward": 0.0, "interventions": 0, "near_collisions": 0, "conflicts": 0, "agent_steps": 0}
    for t in range(args.steps):
        if not safe_env.agents:
            break
        # --- hook: your policy goes here
        actions = {a: rng.uniform(-1, 1, size=safe_env.action_space(a).shape).astype(np.float32)
                   for a in safe_env.agents}
        obs, rewards, terms, truncs, infos = safe_env.step(actions)
        m = safe_env.last_metrics
        totals["reward"] += sum(rewards.values())
        totals["agent_steps"] += m["agents_in_airspace"]
        totals["interventions"] += round(m["intervention_rate"] * m["agents_in_airspace"])
        totals["near_collisions"] += round(m["near_collision_rate"] * m["agents_in_airspace"])
        totals["conflicts"] += round(m["conflict_rate"] * m["agents_in_airspace"])
        if t % 50 == 0:
            print(f"step {t:4d}: filter_on={m['filter_on']} d={m['safety_distance']:.3g} m "
                  f"R_c={m['conflict_range']:.3g} m agents={m['agents_in_airspace']} "
                  f"min sep={m['min_separation']:.3g} m penalty={m['penalty_sum']:.3f}")
    n = max(totals["agent_steps"], 1)
    print(f"total reward {totals['reward']:.2f}; interventions {100 * totals['interventions'] / n:.1f} %, "
          f"near-collisions {100 * totals['near_collisions'] / n:.2f} % (at the target d), "
          f"conflicts {100 * totals['conflicts'] / n:.1f} % of {n} agent-steps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
