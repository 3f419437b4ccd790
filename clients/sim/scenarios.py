"""Seeded multi-agent scenarios for the quadrotor and air-taxi models.

Time limits are generous (several times the unobstructed travel time) so that an unfinished episode means
deadlock / gridlock rather than delay; delay shows in the travel time.

A :class:`Scenario` is plain data: initial agent states, a fixed number of waypoints per agent (position, desired
heading, desired speed), departure times and episode settings. Every builder takes a ``seed`` and draws all its
random variation from ``numpy.random.default_rng(seed)``, so one (name, seed) pair is one reproducible episode.

Quadrotor (paper Sec. VI-B, Table I/III; world coordinates centred on the origin):
- ``random``: 4 agents, 2 waypoints each, 4 m world (the training environment).
- ``corridor``: 6 agents, 3 waypoints, 6 m world, the first two waypoints shared by all (an air corridor).
- ``two_lines``: 8 agents on two parallel lines in random order, goals on the other line, 6 m world (Table III).
- ``dense``: a stress case with hundreds of agents (default 256) at roughly the ``random`` density.

Air taxi (paper Sec. VI-D, Tables IV/V), 1500 ft (457.2 m) separation, nominal speed 110 kn (56.6 m/s):
- ``merge``: eight routes from the north-east merging into one westbound corridor, 5 waypoints, departures drawn
  uniformly over 60 s.
- ``intersection``: two westbound corridors crossing, 8 aircraft each (16), 6 waypoints; the paper's departure
  schedule (one per corridor every 90 s, the two corridors' aircraft paired at the crossing) causes congestion at
  the crossing.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

FT = 0.3048
AIR_TAXI_SEPARATION = 1500 * FT  # 457.2 m
AIR_TAXI_NOMINAL_SPEED = 56.6  # m/s (110 kn), Table I
QUAD_NOMINAL_SPEED = 0.5  # m/s, Table I
QUAD_SAFETY_DISTANCE = 0.5
QUAD_CONFLICT_RANGE = 1.0  # paper value; replaced by the store's R_c(d) when a store is used
AIR_TAXI_CONFLICT_RANGE = 4600 * FT  # paper value at d = 2200 ft (an upper bound at 1500 ft)


class UnknownScenarioError(KeyError):
    """Raised for a scenario name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown scenario"


@dataclass
class Scenario:
    """One episode's set-up. Arrays are float64; N agents, W waypoints per agent, k state dims."""

    name: str
    model: str
    initial_states: np.ndarray  # (N, k) world states in the model's agent_state_names order
    waypoints: np.ndarray  # (N, W, 2) positions (m)
    waypoint_heading: np.ndarray  # (N, W) desired heading (rad); NaN = any heading
    waypoint_speed: np.ndarray  # (N, W) desired speed (m/s)
    departure_times: np.ndarray  # (N,) s; an agent is absent before it departs
    max_time: float  # s
    bounds: tuple[float, float, float, float]  # xmin, xmax, ymin, ymax for plots
    safety_distance: float  # m
    conflict_range: float  # m (default; a store's R_c(d) replaces it)
    remove_at_goal: bool  # air taxis leave the airspace at their goal; quadrotors hover there
    seed: int = 0
    description: str = ""
    params: dict = field(default_factory=dict)

    @property
    def n_agents(self) -> int:
        return int(self.initial_states.shape[0])

    @property
    def n_waypoints(self) -> int:
        return int(self.waypoints.shape[1])

    def with_(self, **changes) -> "Scenario":
        return replace(self, **changes)


def _leg_headings(start: np.ndarray, waypoints: np.ndarray) -> np.ndarray:
    """Desired heading at each waypoint = direction of the incoming leg (previous waypoint or start -> it)."""
    prev = np.concatenate([start[:, None, :], waypoints[:, :-1, :]], axis=1)
    d = waypoints - prev
    return np.arctan2(d[..., 1], d[..., 0])


def _sample_separated(rng: np.random.Generator, n: int, lo: float, hi: float, min_dist: float,
                      avoid: np.ndarray | None = None, tries: int = 20000) -> np.ndarray:
    """n points uniform in [lo, hi]^2, pairwise (and from ``avoid``) at least min_dist apart (rejection)."""
    pts: list[np.ndarray] = []
    others = np.zeros((0, 2)) if avoid is None else np.asarray(avoid, float).reshape(-1, 2)
    for _ in range(tries):
        p = rng.uniform(lo, hi, size=2)
        ref = np.concatenate([others, np.array(pts).reshape(-1, 2)])
        if ref.shape[0] == 0 or np.min(np.hypot(*(ref - p).T)) >= min_dist:
            pts.append(p)
            if len(pts) == n:
                return np.array(pts)
    raise ValueError(f"could not place {n} points {min_dist} m apart in [{lo}, {hi}]^2")


def _quad_states(pos: np.ndarray) -> np.ndarray:
    return np.column_stack([pos, np.zeros_like(pos)])


def quadrotor_random(seed: int = 0, n_agents: int = 4, n_waypoints: int = 2, world: float = 4.0,
                     max_time: float = 120.0) -> Scenario:
    rng = np.random.default_rng(seed)
    h = world / 2
    margin = 0.25
    start = _sample_separated(rng, n_agents, -h + margin, h - margin, 2 * QUAD_SAFETY_DISTANCE)
    wps = np.empty((n_agents, n_waypoints, 2))
    # goals are where agents stop and hover: keep them apart from each other, and keep every intermediate
    # waypoint 2 d away from all goals (else a hovering agent could block another's waypoint for good)
    goals = _sample_separated(rng, n_agents, -h + margin, h - margin, 2 * QUAD_SAFETY_DISTANCE)
    wps[:, -1] = goals
    for w in range(n_waypoints - 1):
        for i in range(n_agents):
            wps[i, w] = _sample_separated(rng, 1, -h + margin, h - margin, 2 * QUAD_SAFETY_DISTANCE, avoid=goals)[0]
    return _quad_scenario("random", seed, start, wps, world, max_time,
                          f"{n_agents} quadrotors, {n_waypoints} random waypoints each, {world:g} m world")


def quadrotor_corridor(seed: int = 0, n_agents: int = 6, world: float = 6.0, max_time: float = 300.0) -> Scenario:
    rng = np.random.default_rng(seed)
    h = world / 2
    margin = 0.3
    start = _sample_separated(rng, n_agents, -h + margin, h - margin, 2 * QUAD_SAFETY_DISTANCE)
    # the corridor: two shared waypoints 1.5 - 2.5 m apart near the centre
    c = rng.uniform(-0.5, 0.5, size=2)
    ang = rng.uniform(-np.pi, np.pi)
    length = rng.uniform(1.5, 2.5)
    e = np.array([np.cos(ang), np.sin(ang)])
    w1, w2 = c - 0.5 * length * e, c + 0.5 * length * e
    goals = _sample_separated(rng, n_agents, -h + margin, h - margin, 2 * QUAD_SAFETY_DISTANCE,
                              avoid=np.array([w1, w2]))
    wps = np.empty((n_agents, 3, 2))
    wps[:, 0], wps[:, 1], wps[:, 2] = w1, w2, goals
    return _quad_scenario("corridor", seed, start, wps, world, max_time,
                          f"{n_agents} quadrotors, 3 waypoints, the first two shared (air corridor), {world:g} m world")


def quadrotor_two_lines(seed: int = 0, n_agents: int = 8, world: float = 6.0, max_time: float = 120.0) -> Scenario:
    """Paper Table III: 8 agents on two parallel lines in random order, goals on the other line."""
    if n_agents % 2:
        raise ValueError("two_lines needs an even number of agents")
    rng = np.random.default_rng(seed)
    h = world / 2
    per_line = n_agents // 2
    spacing = (world - 1.0) / per_line
    xs = -h + 0.5 + spacing * (np.arange(per_line) + 0.5)
    y_line = h - 0.5
    lines = [np.column_stack([xs, np.full(per_line, -y_line)]), np.column_stack([xs, np.full(per_line, y_line)])]
    start = np.concatenate([lines[0][rng.permutation(per_line)], lines[1][rng.permutation(per_line)]])
    goals = np.concatenate([lines[1][rng.permutation(per_line)], lines[0][rng.permutation(per_line)]])
    order = rng.permutation(n_agents)
    start, goals = start[order], goals[order]
    return _quad_scenario("two_lines", seed, start, goals[:, None, :], world, max_time,
                          f"{n_agents} quadrotors on two parallel lines (random order), goals on the other line, "
                          f"{world:g} m world")


def quadrotor_dense(seed: int = 0, n_agents: int = 256, area_per_agent: float = 4.0, max_time: float = 120.0) -> Scenario:
    """Stress case: ``n_agents`` on a jittered lattice at about ``area_per_agent`` m^2 each, goals a few metres away."""
    rng = np.random.default_rng(seed)
    world = float(np.sqrt(n_agents * area_per_agent))
    side = int(np.ceil(np.sqrt(n_agents)))
    pitch = world / side
    g = (np.arange(side) + 0.5) * pitch - world / 2
    lattice = np.array(np.meshgrid(g, g)).reshape(2, -1).T
    jitter = 0.5 * max(pitch - 2 * QUAD_SAFETY_DISTANCE, 0.0)
    cells = rng.permutation(lattice.shape[0])
    start = lattice[cells[:n_agents]] + rng.uniform(-jitter, jitter, size=(n_agents, 2))
    # goals: a random permutation of other lattice cells within a few metres (a local shuffle)
    shift = rng.uniform(-3.0, 3.0, size=(n_agents, 2))
    goals = np.clip(start + shift, -world / 2 + 0.3, world / 2 - 0.3)
    # snap goals onto distinct lattice points nearest to the drawn targets so that hovering agents stay apart
    taken = np.zeros(lattice.shape[0], bool)
    for i in rng.permutation(n_agents):
        dist = np.hypot(*(lattice - goals[i]).T)
        dist[taken] = np.inf
        j = int(np.argmin(dist))
        taken[j] = True
        goals[i] = lattice[j]
    return _quad_scenario("dense", seed, start, goals[:, None, :], world, max_time,
                          f"{n_agents} quadrotors, {world:.1f} m world, goals shuffled locally")


def _quad_scenario(name, seed, start, wps, world, max_time, description) -> Scenario:
    n, w = wps.shape[:2]
    heading = _leg_headings(start, wps)
    speed = np.full((n, w), QUAD_NOMINAL_SPEED)
    speed[:, -1] = 0.0  # stop (hover) at the goal
    heading[:, -1] = np.nan  # a stopped quadrotor has no heading
    h = world / 2
    return Scenario(name=name, model="quadrotor", initial_states=_quad_states(start), waypoints=wps,
                    waypoint_heading=heading, waypoint_speed=speed, departure_times=np.zeros(n),
                    max_time=max_time, bounds=(-h, h, -h, h), safety_distance=QUAD_SAFETY_DISTANCE,
                    conflict_range=QUAD_CONFLICT_RANGE, remove_at_goal=False, seed=seed, description=description,
                    params={"world": world})


def _air_taxi_states(origin: np.ndarray, first_wp: np.ndarray, speed: float) -> np.ndarray:
    d = first_wp - origin
    th = np.arctan2(d[:, 1], d[:, 0])
    return np.column_stack([origin, th, np.full(origin.shape[0], speed)])


def air_taxi_merge(seed: int = 0, n_routes: int = 8, departure_window: float = 60.0,
                   route_length: tuple[float, float] = (12000.0, 24000.0), max_time: float = 2400.0) -> Scenario:
    """Eight routes from vertiports to the north/east merge at M = (0, 0) into one westbound corridor (2 more
    waypoints, 3.5 km apart). The vertiports lie ``route_length`` km from M (evenly spread lengths, randomly
    assigned to the routes, +-500 m jitter); one aircraft per route departs at a uniform random time in the
    departure window."""
    rng = np.random.default_rng(seed)
    spacing = 3500.0
    bearings = np.deg2rad(np.linspace(0.0, 120.0, n_routes))  # where the routes come from (0 = east)
    dist = np.linspace(route_length[0], route_length[1], n_routes)[rng.permutation(n_routes)]
    dist = dist + rng.uniform(-500.0, 500.0, size=n_routes)
    dirs = np.column_stack([np.cos(bearings), np.sin(bearings)])
    origin = dirs * dist[:, None]
    merge = np.zeros(2)
    wps = np.empty((n_routes, 5, 2))
    wps[:, 0] = origin * (2 / 3)
    wps[:, 1] = origin * (1 / 3)
    wps[:, 2] = merge
    wps[:, 3] = merge + np.array([-spacing, 0.0])
    wps[:, 4] = merge + np.array([-2 * spacing, 0.0])
    dep = rng.uniform(0.0, departure_window, size=n_routes)
    heading = _leg_headings(origin, wps)
    speed = np.full((n_routes, 5), AIR_TAXI_NOMINAL_SPEED)
    ext = float(dist.max()) + 2000.0
    return Scenario(name="merge", model="air_taxi", initial_states=_air_taxi_states(origin, wps[:, 0],
                    AIR_TAXI_NOMINAL_SPEED), waypoints=wps, waypoint_heading=heading, waypoint_speed=speed,
                    departure_times=dep, max_time=max_time, bounds=(-2 * spacing - 2000, ext, -3000, ext),
                    safety_distance=AIR_TAXI_SEPARATION, conflict_range=AIR_TAXI_CONFLICT_RANGE,
                    remove_at_goal=True, seed=seed,
                    description=f"{n_routes} routes merging into one westbound corridor, departures over "
                                f"{departure_window:g} s, 1500 ft separation",
                    params={"departure_window": departure_window})


def air_taxi_intersection(seed: int = 0, per_corridor: int = 8, interval: float = 90.0, jitter: float = 15.0,
                          crossing_lead: float | None = 22.0, crossing_angle_deg: float = 50.0,
                          max_time: float = 2400.0) -> Scenario:
    """Two westbound corridors crossing at the origin (6 waypoints 3.5 km apart on each, none at the crossing).

    Departure schedule of the paper's intersection scenario (the authors' scenario definition: one departure per
    corridor every 90 s, +-15 s uniform jitter, and the second corridor's schedule offset so that its k-th aircraft
    reaches the crossing about 22 s, i.e. about R_c at nominal speed, before the first corridor's k-th aircraft):
    every pair of aircraft meets at the crossing, which is how the paper induces congestion there. Here the two
    corridors are equally long up to the crossing, so the offset of the departures equals ``crossing_lead``.
    ``crossing_lead=None`` draws the offset between the corridors uniformly in [0, interval) instead (the schedule
    this project used before, with ``interval=20, jitter=3``: a much denser stream, one aircraft per corridor every
    20 s, i.e. in-trail spacing of about R_c; see docs/results.md, "Denser intersection")."""
    rng = np.random.default_rng(seed)
    spacing = 3500.0
    half = np.deg2rad(crossing_angle_deg) / 2
    n = 2 * per_corridor
    s_wp = (np.arange(6) - 2.5) * spacing  # along-track waypoint stations, none at the crossing itself
    s0 = s_wp[0] - spacing
    origin = np.empty((n, 2))
    wps = np.empty((n, 6, 2))
    dep = np.empty(n)
    offset = rng.uniform(0.0, interval)  # drawn in either case, so that the jitter draws do not depend on the mode
    if crossing_lead is not None:
        offset = -float(crossing_lead)  # equal distances to the crossing: depart earlier by the lead
    for c, ang in enumerate((np.pi - half, np.pi + half)):  # WNW and WSW headings, both westbound
        e = np.array([np.cos(ang), np.sin(ang)])
        sl = slice(c * per_corridor, (c + 1) * per_corridor)
        origin[sl] = s0 * e
        wps[sl] = s_wp[None, :, None] * e[None, None, :]
        dep[sl] = np.arange(per_corridor) * interval + rng.uniform(-jitter, jitter, size=per_corridor) + c * offset
    dep -= dep.min()
    heading = _leg_headings(origin, wps)
    speed = np.full((n, 6), AIR_TAXI_NOMINAL_SPEED)
    ext = abs(s0) + 2000.0
    ylim = np.sin(half) * ext + 1000.0
    sched = (f"one every {interval:g} s (+-{jitter:g} s)" + (f", paired at the crossing {crossing_lead:g} s apart"
                                                             if crossing_lead is not None else ""))
    return Scenario(name="intersection", model="air_taxi", initial_states=_air_taxi_states(origin, wps[:, 0],
                    AIR_TAXI_NOMINAL_SPEED), waypoints=wps, waypoint_heading=heading, waypoint_speed=speed,
                    departure_times=dep, max_time=max_time, bounds=(-ext, ext, -ylim, ylim),
                    safety_distance=AIR_TAXI_SEPARATION, conflict_range=AIR_TAXI_CONFLICT_RANGE,
                    remove_at_goal=True, seed=seed,
                    description=f"two westbound corridors crossing at {crossing_angle_deg:g} deg, {per_corridor} "
                                f"aircraft each, {sched}, 1500 ft separation",
                    params={"interval": interval, "jitter": jitter, "crossing_lead": crossing_lead})


SCENARIOS: dict[str, Callable[..., Scenario]] = {
    "random": quadrotor_random,
    "corridor": quadrotor_corridor,
    "two_lines": quadrotor_two_lines,
    "dense": quadrotor_dense,
    "merge": air_taxi_merge,
    "intersection": air_taxi_intersection,
}
SCENARIO_MODEL = {"random": "quadrotor", "corridor": "quadrotor", "two_lines": "quadrotor", "dense": "quadrotor",
                  "merge": "air_taxi", "intersection": "air_taxi"}


def _known(name: str) -> str:
    """name, or UnknownScenarioError naming the registered scenarios."""
    if not isinstance(name, str) or name not in SCENARIOS:
        raise UnknownScenarioError(f"unknown scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}")
    return name


def scenario_model(name: str) -> str:
    """The model name of scenario ``name`` (UnknownScenarioError, as `make_scenario`, for an unregistered one)."""
    return SCENARIO_MODEL[_known(name)]


def make_scenario(name: str, seed: int = 0, **kwargs) -> Scenario:
    """Build scenario ``name`` for ``seed``; keyword arguments override the builder's defaults."""
    return SCENARIOS[_known(name)](seed=seed, **kwargs)
