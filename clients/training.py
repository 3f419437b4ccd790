"""Trainer helpers: the potential-conflict penalty (paper eq. 17), the curriculum schedule and safety counters.

All pairwise work goes through the cell list of `clients.neighbors` (never all pairs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from numba import njit

from clients.neighbors import NO_VERLET, nearest_distances, neighbor_lists, verlet_neighbor_lists
from clients.value_function import real_array


def agent_positions_velocities(model, states) -> tuple[np.ndarray, np.ndarray]:
    """World-frame positions (N, 2) and velocities (N, 2) of agent states for `model` (a reach Model or name)."""
    from reach.models import get_model
    model = get_model(model) if isinstance(model, str) else model
    x = real_array(states, "states")
    if x.ndim != 2 or x.shape[1] != model.n_agent_states:
        raise ValueError(f"states must have shape (N, {model.n_agent_states}), got {x.shape}")
    pos = np.ascontiguousarray(x[:, :2])
    names = model.agent_state_names
    if "vx" in names and "vy" in names:
        vel = x[:, [names.index("vx"), names.index("vy")]]
    elif "theta" in names and "v" in names:
        th, v = x[:, names.index("theta")], x[:, names.index("v")]
        vel = np.column_stack([v * np.cos(th), v * np.sin(th)])
    else:
        raise ValueError(f"model {model.name}: cannot derive velocities from {names}")
    return pos, np.ascontiguousarray(vel)


@njit(cache=True, nogil=True)
def _penalty_kernel(pos, vel, d, rc, weight):
    n = pos.shape[0]
    out = np.zeros(n)
    indptr, indices = neighbor_lists(pos, rc)
    for i in range(n):
        total = 0.0
        count = 0
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            dx = pos[j, 0] - pos[i, 0]
            dy = pos[j, 1] - pos[i, 1]
            dij = math.sqrt(dx * dx + dy * dy)
            if not dij < rc:
                continue
            count += 1
            c = 1.0 - min(max((dij - d) / (rc - d), 0.0), 1.0)
            if dij > 0.0:
                closing = (dx * (vel[j, 0] - vel[i, 0]) + dy * (vel[j, 1] - vel[i, 1])) / dij
            else:
                closing = 0.0
            total += c * abs(min(0.0, closing))
        if count >= 2:
            out[i] = -weight * total
    return out


def conflict_penalty(positions, velocities, safety_distance: float, conflict_range: float,
                     weight: float = 1.0) -> np.ndarray:
    """Potential-conflict penalty per agent (paper eq. 17 as the reference note states it) -> (N,) (<= 0).

    For neighbours j with d_ij < R_c: c_ij = 1 - clip((d_ij - d) / (R_c - d), 0, 1),
    closing speed cdot_ij = |min(0, <(p_j - p_i) / d_ij, v_j - v_i>)|, penalty_i = -w sum_j c_ij cdot_ij,
    applied only when two or more neighbours are inside R_c (else 0).
    """
    pos = np.ascontiguousarray(real_array(positions, "positions"))
    vel = np.ascontiguousarray(real_array(velocities, "velocities"))
    if pos.ndim != 2 or pos.shape[1] != 2 or vel.shape != pos.shape:
        raise ValueError(f"positions and velocities must both have shape (N, 2), got {pos.shape}, {vel.shape}")
    if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(vel))):
        raise ValueError("positions/velocities contain NaN or inf")
    d, rc, w = float(safety_distance), float(conflict_range), float(weight)
    if not (0.0 <= d < rc and math.isfinite(rc)):
        raise ValueError(f"need 0 <= safety_distance < conflict_range, got d={d}, R_c={rc}")
    if not (math.isfinite(w) and w >= 0.0):
        raise ValueError(f"weight must be finite and >= 0, got {weight}")
    return _penalty_kernel(pos, vel, d, rc, w)


# --------------------------------------------------------------------------------------------- curriculum
@dataclass(frozen=True)
class CurriculumStage:
    """What the trainer uses at one step."""
    filter_on: bool
    safety_distance: float    # m (0 while the filter is off)
    conflict_range: float     # m, R_c(safety_distance) (0 while the filter is off)
    stage: int                # 0 = filter off, 1..n_stages


class CurriculumSchedule:
    """Paper V-C1: the filter is off for the first part of training, then on, with the safety distance growing
    from 0 to its target in steps; R_c follows d.

    total_steps: training length; filter_start: fraction of training with the filter off; distances: the
    safety distances of the filter-on stages (ascending, ending at the target; default n_stages equal steps
    target/n, 2 target/n, ..., target); conflict_range: a `ValueFunction` with an R_c table or a callable
    d -> R_c(d). Distances in m, finite and > 0. Every stage's R_c is computed up front (an error names a d the
    table does not cover, or whose R_c is not finite and > d: the penalty's ramp (R_c - d) needs it).
    """

    def __init__(self, total_steps: int, target_distance: float, conflict_range, filter_start: float = 0.3,
                 n_stages: int = 4, distances: Sequence[float] | None = None):
        self.total_steps = int(total_steps)
        if self.total_steps < 1:
            raise ValueError("total_steps must be >= 1")
        if not 0.0 <= filter_start < 1.0:
            raise ValueError("filter_start must be in [0, 1)")
        target = float(target_distance)
        if not (math.isfinite(target) and target > 0):
            raise ValueError(f"target_distance must be finite and > 0 m, got {target_distance}")
        if distances is None:
            if int(n_stages) < 1:
                raise ValueError("n_stages must be >= 1")
            distances = [target * (k + 1) / int(n_stages) for k in range(int(n_stages))]
        dist = real_array(distances, "distances")
        # written so that NaN fails every test (a comparison with NaN is False, which `b < a` would let pass)
        if dist.ndim != 1 or not dist.size or not np.all(np.isfinite(dist) & (dist > 0)) or \
                not np.all(dist[1:] >= dist[:-1]) or not math.isclose(dist[-1], target):
            raise ValueError(f"distances must be finite, positive, ascending and end at the target {target}: "
                             f"{dist.tolist()}")
        rc_fn: Callable[[float], float] = conflict_range.conflict_range if hasattr(conflict_range,
                                                                                    "conflict_range") \
            else conflict_range
        self.distances = tuple(float(x) for x in dist)
        self.conflict_ranges = tuple(conflict_range_at(rc_fn, x) for x in self.distances)
        self.filter_start_step = int(round(filter_start * self.total_steps))
        self.n_stages = len(dist)

    def at(self, step: int) -> CurriculumStage:
        """The stage in force at training step `step` (0-based; steps past the end stay in the last stage)."""
        step = int(step)
        if step < 0:
            raise ValueError("step must be >= 0")
        if step < self.filter_start_step:
            return CurriculumStage(False, 0.0, 0.0, 0)
        on_steps = max(self.total_steps - self.filter_start_step, 1)
        k = min((step - self.filter_start_step) * self.n_stages // on_steps, self.n_stages - 1)
        return CurriculumStage(True, self.distances[k], self.conflict_ranges[k], k + 1)


def conflict_range_at(rc_fn: Callable[[float], float], d: float) -> float:
    """R_c(d) (m) from a callable d -> R_c(d) (a curriculum stage's, `clients.sim.SafetyLayer`'s); ValueError unless
    it is a finite number > d."""
    rc = rc_fn(d)
    try:
        rc = float(rc)
    except (TypeError, ValueError):
        raise ValueError(f"conflict_range({d}) must be a number (m), got {rc!r}") from None
    if not (math.isfinite(rc) and rc > d):
        raise ValueError(f"conflict_range({d}) = {rc}: R_c must be finite and > the safety distance")
    return rc


# ------------------------------------------------------------------------------------------------ counters
@njit(cache=True, nogil=True)
def _count_kernel(pos, d, rc, want_min, vpos, vptr, vidx):
    """Per agent: another agent closer than d (near), the number of others inside R_c (n_rc) and the conflict flag
    (n_rc > 1); the numbers of near-collision and conflict agents; and the minimum separation (m, inf for fewer
    than two agents). One sweep over the close pairs within r = max(d, R_c): the closest swept pair is the closest
    of all when there is one; when the sweep finds none and want_min is set, the ring search of
    `clients.neighbors.nearest_distances` gives it (without want_min it is then inf). The close pairs come from a
    Verlet list of skin r kept between calls ((vpos, vptr, vidx), `clients.neighbors.verlet_neighbor_lists`: the
    same pairs as a fresh cell list). ok = False when a position is not finite (nothing else is then computed).
    Returns (near, n_rc, conflict, n_near, n_conflict, min_sep, ok, vpos, vptr, vidx)."""
    n = pos.shape[0]
    near = np.zeros(n, dtype=np.bool_)
    n_rc = np.zeros(n, dtype=np.int64)
    conflict = np.zeros(n, dtype=np.bool_)
    for i in range(n):
        if not (math.isfinite(pos[i, 0]) and math.isfinite(pos[i, 1])):
            return near, n_rc, conflict, 0, 0, math.inf, False, vpos, vptr, vidx
    r = max(d, rc)
    indptr, indices, vpos, vptr, vidx = verlet_neighbor_lists(pos, r, r, vpos, vptr, vidx)
    best = math.inf     # squared
    for i in range(n):
        for e in range(indptr[i], indptr[i + 1]):
            j = indices[e]
            if j < i:       # each pair once
                continue
            dx = pos[j, 0] - pos[i, 0]
            dy = pos[j, 1] - pos[i, 1]
            d2 = dx * dx + dy * dy
            dij = math.sqrt(d2)
            if dij < d:
                near[i] = True
                near[j] = True
            if dij < rc:
                n_rc[i] += 1
                n_rc[j] += 1
            best = min(best, d2)
    min_sep = math.sqrt(best)
    if want_min and indices.shape[0] == 0 and n > 1:
        min_sep = nearest_distances(pos).min()
    n_near = 0
    n_conflict = 0
    for i in range(n):
        conflict[i] = n_rc[i] > 1
        n_near += near[i]
        n_conflict += conflict[i]
    return near, n_rc, conflict, n_near, n_conflict, min_sep, True, vpos, vptr, vidx


class SafetyCounters:
    """Near-collision and conflict counters over (agent, step) samples (the paper's metrics).

    near-collision %: share of (agent, step) samples with another agent closer than d;
    conflict %: share of (agent, step) samples with more than one other agent inside R_c.
    """

    def __init__(self, safety_distance: float, conflict_range: float):
        self.safety_distance = float(safety_distance)
        self.conflict_range = float(conflict_range)
        if not (self.safety_distance > 0 and self.conflict_range > 0):
            raise ValueError("safety_distance and conflict_range must be > 0")
        self.samples = 0
        self.near_collisions = 0
        self.conflicts = 0
        self._verlet = NO_VERLET     # the close pairs of the last call (`_count_kernel`)

    def update(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """Count one step of all agents' positions (N, 2); returns (near (N,) bool, n_in_rc (N,) int)."""
        near, n_rc = self._count(positions, False)[:2]
        return near, n_rc

    def update_with_min_separation(self, positions) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, float]:
        """`update` that also returns, from the same pass, the conflict flags n_in_rc > 1, this step's numbers of
        near-collision and conflict agents and the minimum separation over all pairs (m; inf for fewer than two
        agents; what the trainer wrappers report): (near, n_in_rc, conflict, n_near, n_conflict, min_separation).
        Counts exactly like `update`."""
        return self._count(positions, True)

    def _count(self, positions, want_min: bool):
        pos = real_array(positions, "positions")
        if pos.ndim != 2 or pos.shape[1] != 2:
            raise ValueError("positions must be finite with shape (N, 2)")
        # a strided view (the position columns of the agents' states) goes in as it is: no copy
        near, n_rc, conflict, n_near, n_conflict, min_sep, ok, *verlet = _count_kernel(
            pos, self.safety_distance, self.conflict_range, want_min, *self._verlet)
        if not ok:
            raise ValueError("positions must be finite with shape (N, 2)")
        self._verlet = tuple(verlet)
        self.samples += pos.shape[0]
        self.near_collisions += n_near
        self.conflicts += n_conflict
        return near, n_rc, conflict, n_near, n_conflict, min_sep

    @property
    def near_collision_pct(self) -> float:
        return 100.0 * self.near_collisions / self.samples if self.samples else 0.0

    @property
    def conflict_pct(self) -> float:
        return 100.0 * self.conflicts / self.samples if self.samples else 0.0
