"""Vectorized sampled-data multi-agent simulator.

Each decision step: the nominal controller (or the caller) proposes controls for the agents in the airspace, an
optional safety filter replaces them, and the controls are held (zero-order hold) for the model's decision period
while the agents are integrated with the model's own ``step_agents`` (exact integration with speed limits) over
``substeps`` equal sub-steps. Separation is checked at every sub-step, so a pair that comes closer than d between
two decision instants is counted.

Agents are absent before their departure time; air taxis leave at their goal (``Scenario.remove_at_goal``);
quadrotors hover at their goal and stay in the airspace (and in every metric) until the episode ends. An episode
ends when every agent has reached its goal or at ``Scenario.max_time``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numba import njit

from clients.filter import intervenes
from clients.value_function import real_array
from reach.models.base import kernel_layout

from .nominal import WAYPOINT_THRESHOLDS, default_tracker, waypoint_reached
from .scenarios import Scenario

DEFAULT_SUBSTEPS = {"quadrotor": 5, "air_taxi": 10}


class SafetyFilter(Protocol):
    """What the simulator calls: ``filter(states (n,k), nominal (n,m)) -> (safe (n,m), info dict)``."""

    name: str

    def filter(self, states: np.ndarray, nominal: np.ndarray) -> tuple[np.ndarray, dict]: ...


def kernel_array(x, width: int, what: str, rows: int | None = None) -> np.ndarray:
    """x as the C-contiguous, aligned, writeable float64 (N, width) array the kernels take (N = rows when given),
    copied only when it is not one already: a read-only array (np.frombuffer, a JAX array) does not type-check
    against the models' compiled signatures, and every other layout would compile a kernel of its own. ValueError
    (the client's `StateError`) for another shape or a non-real dtype."""
    a = x if type(x) is np.ndarray and x.dtype == np.float64 else real_array(x, what)    # the loop's common case
    if a.ndim != 2 or a.shape[1] != width or (rows is not None and a.shape[0] != rows):
        raise ValueError(f"{what} must have shape ({'N' if rows is None else rows}, {width}), got {a.shape}")
    return kernel_layout(a)


def intervened_flags(model, states: np.ndarray, safe: np.ndarray, controls: np.ndarray) -> np.ndarray:
    """(N,) bool: the applied control differs from the proposed one clipped to the state's control box
    (`model.agent_control_bounds`) by more than `clients.filter.INTERVENTION_TOL` of the box, in one kernel (clipping
    alone is no intervention: every filter, `none` included, applies controls inside the box); states must be finite
    (N, k), safe and controls (N, m), any layout (read-only ones too). The layered filter reports the same flags itself
    (`FilterResult.intervened`)."""
    x = kernel_array(states, model.n_agent_states, "agent_states")
    # the kernel does not check bounds: the shapes are checked here
    safe = kernel_array(safe, model.n_controls, "safe controls", rows=x.shape[0])
    controls = kernel_array(controls, model.n_controls, "controls", rows=x.shape[0])
    out, ok = _intervened_kernel(model)(x, safe, controls)
    if not ok:
        raise ValueError("agent_states contains NaN or inf")
    return out


def filter_interventions(model, states: np.ndarray, safe: np.ndarray, controls: np.ndarray, info) -> np.ndarray:
    """The intervention flags of a filter call: the filter's own (an (N,) bool ``intervened`` in its info, as the
    layered filter reports them, computed by the same rule in its kernel) when it gives them, else
    `intervened_flags`."""
    flags = info.get("intervened") if isinstance(info, dict) else None
    if isinstance(flags, np.ndarray) and flags.dtype == np.bool_ and flags.shape == (np.shape(safe)[0],):
        return flags
    return intervened_flags(model, states, safe, controls)


_INTERVENED_KERNELS: dict = {}


def _intervened_kernel(model):
    """The intervention-flag kernel of a model (built once per model and process: it calls the model's bounds
    kernel itself, one dispatch per step instead of two)."""
    kernel = _INTERVENED_KERNELS.get(model.name)
    if kernel is not None:
        return kernel
    bounds = model.kernels.agent_control_bounds

    @njit(nogil=True)
    def kernel(states, safe, controls):
        n, m = safe.shape
        out = np.zeros(n, dtype=np.bool_)
        for i in range(n):
            for z in range(states.shape[1]):
                if not math.isfinite(states[i, z]):
                    return out, False
        lo, hi = bounds(states)
        for i in range(n):
            for z in range(m):
                if intervenes(safe[i, z], controls[i, z], lo[i, z], hi[i, z]):
                    out[i] = True
        return out, True

    _INTERVENED_KERNELS[model.name] = kernel
    return kernel


@njit(cache=True)
def nearest_and_count(pos, radius):
    """For n points (n, 2): distance to and index of the nearest other point, and how many others lie strictly
    inside ``radius``. O(n^2) with contiguous loops (fast up to a few thousand agents)."""
    n = pos.shape[0]
    nearest = np.full(n, np.inf)
    idx = np.full(n, -1, np.int64)
    count = np.zeros(n, np.int64)
    r2 = radius * radius
    for i in range(n):
        xi = pos[i, 0]
        yi = pos[i, 1]
        for j in range(i + 1, n):
            dx = pos[j, 0] - xi
            dy = pos[j, 1] - yi
            d2 = dx * dx + dy * dy
            if d2 < r2:
                count[i] += 1
                count[j] += 1
            if d2 < nearest[i] * nearest[i]:
                nearest[i] = np.sqrt(d2)
                idx[i] = j
            if d2 < nearest[j] * nearest[j]:
                nearest[j] = np.sqrt(d2)
                idx[j] = i
    return nearest, idx, count


@njit(cache=True)
def nearest_in_lists(pos, indptr, indices):
    """Nearest distance and index among each point's CSR neighbour list (inf / -1 when the list is empty)."""
    n = pos.shape[0]
    nearest = np.full(n, np.inf)
    idx = np.full(n, -1, np.int64)
    for i in range(n):
        best = np.inf
        for q in range(indptr[i], indptr[i + 1]):
            j = indices[q]
            dx = pos[j, 0] - pos[i, 0]
            dy = pos[j, 1] - pos[i, 1]
            d2 = dx * dx + dy * dy
            if d2 < best:
                best = d2
                idx[i] = j
        nearest[i] = np.sqrt(best)
    return nearest, idx


def close_pairs(pos: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Nearest distance / index per agent, exact below ``radius`` (inf / -1 beyond). All pairs for small N, the
    client's cell-list neighbour search (``clients.neighbors``) for large N."""
    pos = np.ascontiguousarray(pos)
    if pos.shape[0] <= CELL_LIST_THRESHOLD:
        near, idx, _ = nearest_and_count(pos, radius)
        far = near >= radius
        return np.where(far, np.inf, near), np.where(far, -1, idx)
    from clients.neighbors import neighbor_lists

    indptr, indices = neighbor_lists(pos, radius)
    return nearest_in_lists(pos, indptr, indices)


CELL_LIST_THRESHOLD = 128


@dataclass
class EpisodeResult:
    """Raw counts of one episode; :mod:`clients.sim.metrics` turns many of them into a table row."""

    scenario: str
    model: str
    filter: str
    seed: int
    n_agents: int
    safety_distance: float
    conflict_range: float
    steps: int = 0
    agent_steps: int = 0  # (agent, decision step) pairs with the agent in the airspace
    near_collision_steps: int = 0  # ... with another agent closer than d at some sub-step
    conflict_steps: int = 0  # ... with more than one other agent inside R_c
    intervention_steps: int = 0  # ... where the filter changed the nominal control
    separation_sum: float = 0.0  # sum over agent-steps of the nearest-neighbour distance (finite ones)
    separation_count: int = 0
    min_separation: float = float("inf")
    min_separation_time: float = float("nan")
    min_separation_pair: tuple[int, int] = (-1, -1)
    goal_reached: np.ndarray | None = None  # (N,) bool
    travel_time: np.ndarray | None = None  # (N,) s from departure to goal; NaN if not reached
    waypoints_reached: np.ndarray | None = None  # (N,) int
    filter_time: float = 0.0  # s spent in the filter
    env_time: float = 0.0  # s spent in the rest of the step (nominal, integration, checks)
    duration: float = 0.0  # simulated s
    times: np.ndarray | None = None  # (T+1,)
    positions: np.ndarray | None = None  # (T+1, N, 2), NaN where absent
    waypoints: np.ndarray | None = None  # (N, W, 2)
    bounds: tuple | None = None
    extra: dict = field(default_factory=dict)

    @property
    def deadlocked(self) -> bool:
        return bool(self.goal_reached is not None and not self.goal_reached.all())


class Simulator:
    """One episode of one scenario under one filter.

    ``filter`` None = safety-blind. ``conflict_range`` defaults to the scenario's. ``controller`` defaults to the
    model's waypoint tracker. ``record`` keeps the trajectory for plots.
    """

    def __init__(self, scenario: Scenario, model=None, filter: SafetyFilter | None = None,
                 substeps: int | None = None, conflict_range: float | None = None, controller=None,
                 record: bool = True):
        if model is None:
            from reach.models import get_model

            model = get_model(scenario.model)
        self.scenario = scenario
        self.model = model
        self.filter = filter
        self.dt = float(model.decision_period)
        self.substeps = int(substeps or DEFAULT_SUBSTEPS.get(model.name, 10))
        self.conflict_range = float(scenario.conflict_range if conflict_range is None else conflict_range)
        self.controller = controller or default_tracker(model.name)
        self.thresholds = WAYPOINT_THRESHOLDS[model.name]
        self.record = record
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        sc = self.scenario
        n = sc.n_agents
        self.t = 0.0
        self.states = np.array(sc.initial_states, float)
        self.wp_idx = np.zeros(n, np.int64)
        self.removed = np.zeros(n, bool)
        self.goal_time = np.full(n, np.nan)
        self.result = EpisodeResult(scenario=sc.name, model=sc.model, filter=getattr(self.filter, "name", "none"),
                                    seed=sc.seed, n_agents=n, safety_distance=sc.safety_distance,
                                    conflict_range=self.conflict_range, waypoints=sc.waypoints, bounds=sc.bounds)
        self._update_waypoints()
        self._find_airspace()
        self._times = [0.0]
        self._positions = [self._masked_positions()]
        if hasattr(self.filter, "reset"):
            self.filter.reset()
        if hasattr(self.controller, "reset"):
            self.controller.reset()

    @property
    def departed(self) -> np.ndarray:
        return self.scenario.departure_times <= self.t + 1e-9

    @property
    def active(self) -> np.ndarray:
        return self.departed & ~self.removed

    @property
    def airspace(self) -> np.ndarray:
        """Indices of the agents in the airspace (``np.flatnonzero(self.active)``; read-only): found once per
        step, after the clock and the waypoints moved (each search took ~2 us, and an env step asks several
        times)."""
        return self._airspace

    def _find_airspace(self) -> None:
        self._airspace = np.flatnonzero(self.active)
        self._airspace.flags.writeable = False

    @property
    def goal_reached(self) -> np.ndarray:
        return self.wp_idx >= self.scenario.n_waypoints

    @property
    def done(self) -> bool:
        return bool(self.goal_reached.all() or self.t >= self.scenario.max_time - 1e-9)

    def _masked_positions(self) -> np.ndarray:
        p = self.states[:, :2].copy()
        p[~self.active] = np.nan
        return p

    def current_targets(self, idx: np.ndarray | None = None):
        """Current waypoint position, desired heading and desired speed of agents ``idx`` (goal once reached)."""
        sc = self.scenario
        idx = np.arange(sc.n_agents) if idx is None else idx
        w = np.minimum(self.wp_idx[idx], sc.n_waypoints - 1)
        return sc.waypoints[idx, w], sc.waypoint_heading[idx, w], sc.waypoint_speed[idx, w]

    def nominal_controls(self, idx: np.ndarray | None = None) -> np.ndarray:
        idx = self.airspace if idx is None else idx
        target, heading, speed = self.current_targets(idx)
        return self.controller(self.model, self.states[idx], target, speed, heading, idx)

    def _update_waypoints(self) -> None:
        sc = self.scenario
        for _ in range(sc.n_waypoints):  # an agent may satisfy consecutive waypoints at once (shared ones)
            idx = np.flatnonzero(self.active & ~self.goal_reached)
            if idx.size == 0:
                return
            target, heading, speed = self.current_targets(idx)
            hit = waypoint_reached(self.model.name, self.states[idx], target, heading, speed, self.thresholds)
            if not hit.any():
                return
            hit_idx = idx[hit]
            self.wp_idx[hit_idx] += 1
            finished = hit_idx[self.wp_idx[hit_idx] >= sc.n_waypoints]
            self.goal_time[finished] = self.t - sc.departure_times[finished]
            if sc.remove_at_goal:
                self.removed[finished] = True

    # ------------------------------------------------------------------ stepping
    def step(self, controls: np.ndarray | None = None) -> dict[str, Any]:
        """Advance one decision period. ``controls`` (n_active, m), rows in the order of
        ``self.airspace``, replaces the nominal controller's output (it still goes through the filter). Returns
        per-step diagnostics for the agents in the airspace."""
        res = self.result
        t0 = time.perf_counter()
        idx = self.airspace
        info: dict[str, Any] = {"active": idx}
        if idx.size == 0:
            self._advance_clock()
            self._find_airspace()
            res.env_time += time.perf_counter() - t0
            return info
        nominal = self.nominal_controls(idx) if controls is None else np.asarray(controls, float)
        t1 = time.perf_counter()
        if self.filter is not None:
            safe, finfo = self.filter.filter(self.states[idx], nominal)
            safe = np.asarray(safe, float)
        else:
            safe, finfo = nominal, {}
        t2 = time.perf_counter()
        x = self.states[idx]
        intervened = filter_interventions(self.model, x, safe, nominal, finfo)
        d = self.scenario.safety_distance
        h = self.dt / self.substeps
        min_near = np.full(idx.size, np.inf)
        # every sub-step: exact nearest distances below max(d, episode minimum so far) (what the near-collision
        # count and the minimum separation need)
        for sub in range(self.substeps):
            x = self.model.step_agents(x, safe, h)
            if idx.size < 2:
                continue
            radius = max(d, res.min_separation)
            if np.isfinite(radius):
                near, nidx = close_pairs(x[:, :2], radius)
            else:
                near, nidx, _ = nearest_and_count(np.ascontiguousarray(x[:, :2]), 1.0)
            min_near = np.minimum(min_near, near)
            k = int(np.argmin(near))
            if np.isfinite(near[k]) and near[k] < res.min_separation:
                res.min_separation = float(near[k])
                res.min_separation_pair = (int(idx[k]), int(idx[nidx[k]]))
                res.min_separation_time = self.t + h * (sub + 1)
        self.states[idx] = x
        near, _, count = nearest_and_count(np.ascontiguousarray(x[:, :2]), self.conflict_range)
        finite = np.isfinite(near)
        res.steps += 1
        res.agent_steps += idx.size
        res.near_collision_steps += int(np.count_nonzero(min_near < d))
        res.conflict_steps += int(np.count_nonzero(count > 1))
        res.intervention_steps += int(np.count_nonzero(intervened))
        res.separation_sum += float(near[finite].sum())
        res.separation_count += int(finite.sum())
        self._advance_clock()
        self._update_waypoints()
        self._find_airspace()
        t3 = time.perf_counter()
        res.filter_time += t2 - t1
        res.env_time += (t1 - t0) + (t3 - t2)
        info.update(nominal=nominal, safe=safe, intervened=intervened, min_distance=min_near, conflict_count=count,
                    filter_info=finfo)
        return info

    def _advance_clock(self) -> None:
        self.t = round(self.t + self.dt, 9)
        if self.record:
            self._times.append(self.t)
            self._positions.append(self._masked_positions())

    def run(self) -> EpisodeResult:
        while not self.done:
            self.step()
        return self.finish()

    def finish(self) -> EpisodeResult:
        res = self.result
        sc = self.scenario
        res.goal_reached = self.goal_reached.copy()
        res.travel_time = self.goal_time.copy()
        res.waypoints_reached = np.minimum(self.wp_idx, sc.n_waypoints).copy()
        res.duration = self.t
        if self.record:
            res.times = np.array(self._times)
            res.positions = np.array(self._positions)
        return res


def run_episode(scenario: Scenario, filter: SafetyFilter | None = None, model=None, **kwargs) -> EpisodeResult:
    return Simulator(scenario, model=model, filter=filter, **kwargs).run()
