"""Episode metrics (paper Sec. VI) and table output.

Per episode (from :class:`clients.sim.simulator.EpisodeResult`):
- near-collision %: share of (agent, decision step) pairs, agents in the airspace, in which the agent came closer
  than d to another agent at any sub-step of that step;
- conflict %: share of (agent, step) pairs with more than one other agent inside R_c at the end of the step;
- travel time: mean over agents that reached their goal of (goal time - departure time), s;
- goal reach %: agents that passed their last waypoint; waypoints: mean number passed per agent;
- intervention %: share of (agent, step) pairs where the filter changed the nominal control (clipped to the state's
  box: clipping alone is no intervention);
- mean separation: mean over (agent, step) of the nearest-neighbour distance; min separation: the episode minimum;
- step time: wall time per decision step, split into environment and filter time.

A table row aggregates N episodes: mean and standard deviation over episodes of each per-episode number (the
paper's "mean +- std" convention), plus pooled near-collision and the minimum separation over all episodes.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .simulator import EpisodeResult


def episode_metrics(r: EpisodeResult) -> dict[str, float]:
    n_steps = max(r.agent_steps, 1)
    reached = r.goal_reached if r.goal_reached is not None else np.zeros(r.n_agents, bool)
    tt = r.travel_time if r.travel_time is not None else np.full(r.n_agents, np.nan)
    wp = r.waypoints_reached if r.waypoints_reached is not None else np.zeros(r.n_agents)
    return {
        "near_collision_pct": 100.0 * r.near_collision_steps / n_steps,
        "conflict_pct": 100.0 * r.conflict_steps / n_steps,
        "travel_time_s": float(np.nanmean(tt)) if np.isfinite(tt).any() else float("nan"),
        "goal_reach_pct": 100.0 * float(np.mean(reached)),
        "waypoints": float(np.mean(wp)),
        "intervention_pct": 100.0 * r.intervention_steps / n_steps,
        "mean_separation_m": r.separation_sum / r.separation_count if r.separation_count else float("nan"),
        "min_separation_m": float(r.min_separation),
        "step_time_ms": 1e3 * (r.env_time + r.filter_time) / max(r.steps, 1),
        "filter_time_ms": 1e3 * r.filter_time / max(r.steps, 1),
        "deadlocked": float(not bool(np.all(reached))),
        "steps": float(r.steps),
        "agent_steps": float(r.agent_steps),
        "near_collision_steps": float(r.near_collision_steps),
    }


METRIC_COLUMNS = ("near_collision_pct", "conflict_pct", "travel_time_s", "goal_reach_pct", "waypoints",
                  "intervention_pct", "mean_separation_m", "min_separation_m", "step_time_ms", "filter_time_ms")


@dataclass
class Row:
    scenario: str
    model: str
    filter: str
    episodes: int
    n_agents: int
    safety_distance: float
    conflict_range: float
    mean: dict[str, float]
    std: dict[str, float]
    pooled_near_collision_pct: float
    min_separation_m: float
    episodes_with_near_collision: int
    episodes_not_finished: int

    def as_dict(self) -> dict[str, float | str | int]:
        d: dict[str, float | str | int] = {
            "scenario": self.scenario, "model": self.model, "filter": self.filter, "episodes": self.episodes,
            "n_agents": self.n_agents, "safety_distance_m": self.safety_distance,
            "conflict_range_m": self.conflict_range,
        }
        for k in METRIC_COLUMNS:
            d[k] = self.mean[k]
            d[k + "_std"] = self.std[k]
        d["pooled_near_collision_pct"] = self.pooled_near_collision_pct
        d["min_separation_all_m"] = self.min_separation_m
        d["episodes_with_near_collision"] = self.episodes_with_near_collision
        d["episodes_not_finished"] = self.episodes_not_finished
        return d


def aggregate(results: Sequence[EpisodeResult]) -> Row:
    if not results:
        raise ValueError("no episodes to aggregate")
    per = [episode_metrics(r) for r in results]
    mean, std = {}, {}
    for k in METRIC_COLUMNS:
        vals = np.array([p[k] for p in per], float)
        finite = vals[np.isfinite(vals)]
        mean[k] = float(finite.mean()) if finite.size else float("nan")
        std[k] = float(finite.std()) if finite.size else float("nan")
    mean["min_separation_m"] = float(min(r.min_separation for r in results))
    r0 = results[0]
    steps = sum(r.agent_steps for r in results)
    return Row(scenario=r0.scenario, model=r0.model, filter=r0.filter, episodes=len(results),
               n_agents=r0.n_agents, safety_distance=r0.safety_distance, conflict_range=r0.conflict_range,
               mean=mean, std=std,
               pooled_near_collision_pct=100.0 * sum(r.near_collision_steps for r in results) / max(steps, 1),
               min_separation_m=float(min(r.min_separation for r in results)),
               episodes_with_near_collision=sum(1 for r in results if r.near_collision_steps > 0),
               episodes_not_finished=sum(1 for r in results if r.deadlocked))


def _fmt(x: float, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def _pm(m: float, s: float, digits: int) -> str:
    if math.isnan(m):
        return "-"
    return f"{_fmt(m, digits)} ± {_fmt(s, digits)}"


def markdown_table(rows: Iterable[Row]) -> str:
    head = ("| scenario | filter | N | episodes | near-collision % | conflict % | travel time (s) | goal reach % "
            "| intervention % | mean sep. (m) | min sep. (m) | unfinished | step (ms) | filter (ms) |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        m, s = r.mean, r.std
        ttd = 1 if r.model == "air_taxi" else 2
        sepd = 0 if r.model == "air_taxi" else 3
        lines.append(
            f"| {r.scenario} | {r.filter} | {r.n_agents} | {r.episodes} "
            f"| {_pm(m['near_collision_pct'], s['near_collision_pct'], 3)} "
            f"| {_pm(m['conflict_pct'], s['conflict_pct'], 1)} "
            f"| {_pm(m['travel_time_s'], s['travel_time_s'], ttd)} "
            f"| {_pm(m['goal_reach_pct'], s['goal_reach_pct'], 1)} "
            f"| {_fmt(m['intervention_pct'], 1)} | {_fmt(m['mean_separation_m'], sepd)} "
            f"| {_fmt(r.min_separation_m, sepd)} | {r.episodes_not_finished}/{r.episodes} "
            f"| {_fmt(m['step_time_ms'], 2)} | {_fmt(m['filter_time_ms'], 2)} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: Iterable[Row], path) -> None:
    rows = list(rows)
    if not rows:
        return
    dicts = [r.as_dict() for r in rows]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(dicts[0].keys()))
        w.writeheader()
        w.writerows(dicts)
