"""Near-collision forensics: why did a pair come closer than d under the layered filter?

:func:`near_collision_forensics` re-runs seeded episodes of a scenario under a :class:`clients.sim.LayeredFilter`
and, for every pair that comes closer than d at some integration sub-step (the simulator's near-collision
definition), records what the pairwise method saw:

- the pair's barrier history B_ij = min(V_coop(s_ij) - d - value_margin, ||p_ij|| - d) over the last steps (the
  filter's own barrier, from agent i's side), with both agents' prioritized partners and filter statuses;
- the *crossing*: the last decision step before the near-collision at which B_ij was still >= 0, classified as
  ``mutual`` (the two agents had chosen each other: the pairwise guarantee applies unless the filter ended in
  best_effort), ``one-sided`` (one of them was busy with a third agent) or ``neither``;
- the agents within R_c of either agent (third agents) and whether either agent was flying a missed-waypoint
  run-up (the nominal tracker's second pass, :class:`clients.sim.nominal._RunUp`).

Near-collision encounters are grouped per pair and episode (consecutive steps of one pair are one encounter).
Used by ``scripts/diagnose_near_collisions.py`` and the forensics section of ``docs/results.md``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .scenarios import SCENARIO_MODEL, make_scenario
from .simulator import Simulator


@dataclass
class Encounter:
    seed: int
    i: int
    j: int
    t_first: float  # s, start of the first decision step with separation < d
    steps: int  # decision steps with separation < d
    min_separation: float  # m
    crossing: str  # mutual / one-sided / neither / none (B_ij < 0 since the pair came into range)
    crossing_t: float  # s, decision step at which B_ij was last >= 0 (NaN if none)
    crossing_status: tuple[str, str]  # filter statuses of i and j at that step
    partners: tuple[int, int]  # prioritized partners of i and j at the first near-collision step
    status: tuple[str, str]  # filter statuses of i and j at the first near-collision step
    n_in_rc: tuple[int, int]  # other agents within R_c of i and j at that step
    third_agents: tuple[int, ...]  # agents other than i, j within R_c of either
    run_up: bool  # i or j was flying a missed-waypoint run-up during the encounter
    history: list = field(default_factory=list)  # (t, B_ij, partner_i, partner_j, status_i, status_j), oldest first


@dataclass
class ForensicsReport:
    scenario: str
    episodes: int
    agent_steps: int
    near_collision_steps: int
    near_collision_steps_decision: int  # agent-steps closer than d at the decision instants only (end of a step)
    run_up_starts: int  # missed waypoints that started a run-up (skipped ones with skip_missed_waypoints)
    encounters: list[Encounter]
    skipped_waypoints: int = 0  # with skip_missed_waypoints
    min_separation: float = float("inf")
    goal_reach_pct: float = float("nan")

    @property
    def near_collision_pct(self) -> float:
        return 100.0 * self.near_collision_steps / max(self.agent_steps, 1)

    @property
    def near_collision_decision_pct(self) -> float:
        return 100.0 * self.near_collision_steps_decision / max(self.agent_steps, 1)

    def summary(self) -> dict:
        enc = self.encounters
        return {"encounters": len(enc), "episodes_with_encounters": len({e.seed for e in enc}),
                "crossing": dict(Counter(e.crossing for e in enc)),
                "with_third_agent_in_rc": sum(1 for e in enc if e.third_agents),
                "with_run_up": sum(1 for e in enc if e.run_up),
                "best_effort_at_crossing": sum(1 for e in enc if "best_effort" in e.crossing_status),
                "near_collision_pct": self.near_collision_pct,
                "near_collision_decision_pct": self.near_collision_decision_pct,
                "run_up_starts": self.run_up_starts}


class SkipMissedSimulator(Simulator):
    """Diagnostic only (not a mode of the benchmark): a waypoint missed by the nominal tracker (the moment it would
    start its second-pass run-up) is skipped instead of flown again; ``skipped`` counts them. After a skipped
    intermediate waypoint the agent tracks the next one; an agent that misses its goal leaves the airspace there
    without reaching it (``missed_goals``; it counts as not reached in :attr:`goal_reach_pct`)."""

    def reset(self) -> None:
        self.skipped = 0
        self.missed_goals = 0
        super().reset()

    def _update_waypoints(self) -> None:
        super()._update_waypoints()
        memory = getattr(self.controller, "_memory", None)
        if memory is None or not memory.runup.size:
            return
        sc = self.scenario
        for i in np.flatnonzero(memory.runup[:sc.n_agents]):
            memory.runup[i] = False
            self.skipped += 1
            self.wp_idx[i] += 1
            if self.wp_idx[i] >= sc.n_waypoints:  # the goal: leave without reaching it
                self.missed_goals += 1
                self.removed[i] = True

    @property
    def goal_reach_pct(self) -> float:
        return 100.0 * (1.0 - self.missed_goals / self.scenario.n_agents)


def _relation(partner_i: int, partner_j: int, i: int, j: int) -> str:
    if partner_i == j and partner_j == i:
        return "mutual"
    if partner_i == j or partner_j == i:
        return "one-sided"
    return "neither"


def near_collision_forensics(name: str, layered, episodes: int = 25, seed: int = 0, conflict_range: float | None = None,
                             scenario_kwargs: dict | None = None, history: int = 12, scenario_factory=None,
                             controller=None, skip_missed_waypoints: bool = False) -> ForensicsReport:
    """Run ``episodes`` seeded episodes of scenario ``name`` under ``layered`` (a :class:`clients.sim.LayeredFilter`)
    and return the near-collision encounters with their circumstances (see the module docstring).
    ``scenario_factory(seed) -> Scenario`` replaces ``make_scenario(name, seed, **scenario_kwargs)``; ``controller``
    replaces the model's default nominal tracker. ``skip_missed_waypoints`` runs :class:`SkipMissedSimulator` (a
    diagnostic: how many near-collisions remain without the tracker's second passes)."""
    from clients.filter import STATUS_NAMES
    from reach.models import get_model

    model = get_model(SCENARIO_MODEL.get(name, layered.model.name))
    inner = layered.inner
    vf, margin, obs = inner.vf, float(inner.value_margin), float(inner.observation_range)
    scenario_kwargs = scenario_kwargs or {}
    encounters: list[Encounter] = []
    agent_steps = nc_steps = nc_decision = run_ups = skipped = 0
    min_sep = float("inf")
    reached = []
    for e in range(episodes):
        sc = (scenario_factory(seed + e) if scenario_factory is not None
              else make_scenario(name, seed=seed + e, **scenario_kwargs))
        d = sc.safety_distance
        sim_cls = SkipMissedSimulator if skip_missed_waypoints else Simulator
        sim = sim_cls(sc, model=model, filter=layered, conflict_range=conflict_range, record=False,
                      controller=controller)
        rc = sim.conflict_range
        memory = getattr(sim.controller, "_memory", None)
        steps: list[dict] = []  # per decision step: t, ids, B (pairs of ids -> B), partner / status by id
        open_: dict[tuple[int, int], Encounter] = {}
        prev_runup = np.zeros(sc.n_agents, bool)
        while not sim.done:
            t0 = sim.t
            x0 = sim.states.copy()
            info = sim.step()
            ids = info["active"]
            runup = np.zeros(sc.n_agents, bool)
            if memory is not None and memory.runup.size:
                k = min(memory.runup.size, sc.n_agents)
                runup[:k] = memory.runup[:k]
            run_ups += int(np.count_nonzero(runup & ~prev_runup))
            prev_runup = runup
            if ids.size < 2 or "partner" not in info.get("filter_info", {}):
                steps.append({"t": t0, "B": {}, "partner": {}, "status": {}})
                continue
            fi = info["filter_info"]
            xa = x0[ids]
            partner = {int(q): (int(ids[p]) if p >= 0 else -1) for q, p in zip(ids, fi["partner"])}
            status = {int(q): STATUS_NAMES[int(s)] for q, s in zip(ids, fi["status"])}
            # barrier of every pair in observation range at the decision instant (agent i's side, i < j)
            a, b = np.triu_indices(ids.size, 1)
            dist = np.hypot(xa[b, 0] - xa[a, 0], xa[b, 1] - xa[a, 1])
            near = dist <= obs
            a, b, dist = a[near], b[near], dist[near]
            B = {}
            if a.size:
                v = vf.value(model.relative_state(xa[a], xa[b]), safety_distance=d) - margin
                for p, q, bb in zip(ids[a], ids[b], np.minimum(v, dist - d)):
                    B[(int(p), int(q))] = float(bb)
            steps.append({"t": t0, "B": B, "partner": partner, "status": status})
            # pair distances at every sub-step of the held action (the simulator's integration)
            x = xa
            h = sim.dt / sim.substeps
            pmin = np.full((ids.size, ids.size), np.inf)
            for _ in range(sim.substeps):
                x = model.step_agents(x, info["safe"], h)
                D = np.hypot(x[:, None, 0] - x[None, :, 0], x[:, None, 1] - x[None, :, 1])
                np.fill_diagonal(D, np.inf)
                pmin = np.minimum(pmin, D)
            nc_decision += int(np.count_nonzero(D.min(axis=1) < d))
            in_rc = np.hypot(xa[:, None, 0] - xa[None, :, 0], xa[:, None, 1] - xa[None, :, 1]) < rc
            np.fill_diagonal(in_rc, False)
            seen = set()
            for p, q in zip(*np.nonzero(np.triu(pmin < d, 1))):
                i, j = int(ids[p]), int(ids[q])
                seen.add((i, j))
                if (i, j) in open_:
                    enc = open_[(i, j)]
                    enc.steps += 1
                    enc.min_separation = min(enc.min_separation, float(pmin[p, q]))
                    enc.run_up |= bool(runup[i] or runup[j])
                    continue
                hist = [(s["t"], s["B"].get((i, j), np.inf), s["partner"].get(i, -1), s["partner"].get(j, -1),
                         s["status"].get(i, "-"), s["status"].get(j, "-")) for s in steps]
                cross = next((h_ for h_ in reversed(hist) if h_[1] >= 0.0), None)
                third = sorted({int(ids[k]) for k in np.flatnonzero(in_rc[p] | in_rc[q])} - {i, j})
                enc = Encounter(seed=sc.seed, i=i, j=j, t_first=t0, steps=1, min_separation=float(pmin[p, q]),
                                crossing=_relation(cross[2], cross[3], i, j) if cross else "none",
                                crossing_t=cross[0] if cross else float("nan"),
                                crossing_status=(cross[4], cross[5]) if cross else ("-", "-"),
                                partners=(partner[i], partner[j]), status=(status[i], status[j]),
                                n_in_rc=(int(in_rc[p].sum()), int(in_rc[q].sum())), third_agents=tuple(third),
                                run_up=bool(runup[i] or runup[j]), history=hist[-history:])
                open_[(i, j)] = enc
                encounters.append(enc)
            for key in [k for k in open_ if k not in seen]:
                del open_[key]
            del steps[:-max(history, 400)]  # the crossing search looks back at most this far
        res = sim.finish()
        agent_steps += res.agent_steps
        nc_steps += res.near_collision_steps
        skipped += getattr(sim, "skipped", 0)
        min_sep = min(min_sep, res.min_separation)
        reached.append(getattr(sim, "goal_reach_pct", 100.0 * float(np.mean(res.goal_reached))))
    return ForensicsReport(scenario=name, episodes=episodes, agent_steps=agent_steps, near_collision_steps=nc_steps,
                           near_collision_steps_decision=nc_decision, run_up_starts=run_ups, encounters=encounters,
                           skipped_waypoints=skipped, min_separation=min_sep,
                           goal_reach_pct=float(np.mean(reached)) if reached else float("nan"))


def markdown_summary(rep: ForensicsReport) -> list[str]:
    """A few Markdown lines: counts of the encounters by cause (no interpretation)."""
    s = rep.summary()
    n = s["encounters"]
    cr = s["crossing"]
    return [f"- near-collision agent-steps: {s['near_collision_pct']:.3f} % at any integration sub-step (the table's "
            f"metric), {s['near_collision_decision_pct']:.3f} % at the decision instants only (the paper's reference "
            f"implementation checks once per step);",
            f"- {n} near-collision encounters (pair and episode) in {s['episodes_with_encounters']}/{rep.episodes} "
            f"episodes; when the pair's barrier was last >= 0 the two agents had chosen each other in "
            f"{cr.get('mutual', 0)}, one of them was busy with a third agent in {cr.get('one-sided', 0)}, neither "
            f"had chosen the other in {cr.get('neither', 0)} (barrier never >= 0 in range: {cr.get('none', 0)});",
            f"- a third agent within R_c of the pair: {s['with_third_agent_in_rc']}/{n}; one of the pair flying a "
            f"missed-waypoint run-up (second pass): {s['with_run_up']}/{n}; run-ups started over all episodes: "
            f"{s['run_up_starts']}."]
