"""Waypoint thresholds (paper Table I) and a nominal waypoint-tracking controller per model. No learning.

Waypoint i counts as passed when the agent is within the distance threshold of it, its heading is within the
heading threshold of the waypoint's desired heading (skipped where the desired heading is NaN, e.g. a quadrotor
hovering at its goal) and its speed is within the speed threshold of the waypoint's desired speed.

Controllers (vectorized numpy; the safety filters come after them and may change their output):
- quadrotor: velocity tracking. Desired velocity points at the current waypoint with the waypoint's desired speed
  (nominal 0.5 m/s); at the goal (desired speed 0) it follows the braking profile sqrt(2 a_b dist) so that the
  agent arrives and hovers. a = k_v (v_des - v), clipped to the model's state-dependent bounds. A keep-right
  traffic rule (``_keep_right``) turns the desired direction to the right when another agent is ahead and not
  moving away, so that symmetric encounters (head-on, two lines swapping) do not end in deadlock under a filter.
- air_taxi: pure pursuit on heading with the turn rate clipped to the bound; when the aim point lies inside the
  current turning circle (it cannot be reached by turning towards it) it flies straight to open the distance.
  Speed tracks the waypoint's desired speed.
- both: intermediate waypoints are flown through along their desired heading (line pursuit, :class:`_RunUp`);
  after a miss the agent flies a run-up and comes again (the paper's "second pass" / 360-degree turn).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

FT = 0.3048
MILE = 1609.344


@dataclass(frozen=True)
class WaypointThresholds:
    distance: float  # m
    heading: float  # rad
    speed: float  # m/s


# paper Table I: air taxi 0.186 mi (0.3 km), 45 deg, 38.9 kn (20 m/s); Crazyflie 0.2 m, 45 deg, 0.1 m/s
WAYPOINT_THRESHOLDS = {
    "air_taxi": WaypointThresholds(distance=0.3e3, heading=np.deg2rad(45.0), speed=20.0),
    "quadrotor": WaypointThresholds(distance=0.2, heading=np.deg2rad(45.0), speed=0.1),
}


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def heading_and_speed(model_name: str, states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-track heading (rad) and speed (m/s) of world agent states (N, k)."""
    states = np.asarray(states, float)
    if model_name == "quadrotor":
        return np.arctan2(states[:, 3], states[:, 2]), np.hypot(states[:, 2], states[:, 3])
    if model_name == "air_taxi":
        return states[:, 2], states[:, 3]
    raise KeyError(f"no waypoint logic for model {model_name!r}")


def waypoint_reached(model_name: str, states: np.ndarray, target: np.ndarray, target_heading: np.ndarray,
                     target_speed: np.ndarray, thresholds: WaypointThresholds | None = None) -> np.ndarray:
    """(N,) bool: agent satisfies the Table I threshold conditions for its current waypoint."""
    th = thresholds or WAYPOINT_THRESHOLDS[model_name]
    states = np.asarray(states, float)
    dist = np.hypot(target[:, 0] - states[:, 0], target[:, 1] - states[:, 1])
    heading, speed = heading_and_speed(model_name, states)
    head_ok = np.isnan(target_heading) | (np.abs(_wrap(heading - np.nan_to_num(target_heading))) <= th.heading)
    return (dist <= th.distance) & head_ok & (np.abs(speed - target_speed) <= th.speed)


class _RunUp:
    """Line pursuit through intermediate waypoints with a run-up after a miss (shared by both trackers).

    Intermediate waypoints (desired speed > 0, heading set) are flown through along their desired heading e:
    the aim point lies on the line through the waypoint, ``look_ahead`` ahead of the agent's projection and at
    most ``lead`` past the waypoint, so the agent arrives aligned and at speed. An agent that gets more than
    ``past`` beyond the waypoint without meeting the thresholds switches to a run-up: it heads for a point
    ``run_up`` before the waypoint and ``side`` to the right of the line and, once within ``reach`` of it,
    approaches again. Memory is per agent (keyed by the agents' global indices ``ids``) and per waypoint."""

    def __init__(self):
        self.runup = np.zeros(0, bool)
        self.target = np.zeros((0, 2))

    def aim(self, pos, target, target_speed, target_heading, ids, look_ahead, lead, run_up, side, reach, past):
        through = (target_speed > 0) & np.isfinite(target_heading)
        if not through.any():
            return target
        ids = np.arange(pos.shape[0]) if ids is None else np.asarray(ids, int)
        if ids.size and ids.max() >= self.runup.size:
            grow = ids.max() + 1 - self.runup.size
            self.runup = np.concatenate([self.runup, np.zeros(grow, bool)])
            self.target = np.concatenate([self.target, np.full((grow, 2), np.nan)])
        hd = np.nan_to_num(target_heading)
        e = np.column_stack([np.cos(hd), np.sin(hd)])
        e_right = np.column_stack([e[:, 1], -e[:, 0]])
        along = np.einsum("ij,ij->i", pos - target, e)
        aim_line = target + np.minimum(along + look_ahead, lead)[:, None] * e
        aim_back = target - run_up * e + side * e_right
        same = self.runup[ids] & np.all(self.target[ids] == target, axis=1)
        runup = np.where(same, np.hypot(*(pos - aim_back).T) > reach, along > past) & through
        self.runup[ids] = runup
        self.target[ids] = target
        aim = np.where(runup[:, None], aim_back, aim_line)
        return np.where(through[:, None], aim, target)


@dataclass
class QuadrotorTracker:
    gain: float = 2.0  # 1/s, velocity-error gain
    brake: float = 0.3  # m/s^2, deceleration used for the arrival profile (below the 0.5 bound)
    stop_radius: float = 0.02  # m
    cruise: float = 0.5  # m/s, speed cap of the arrival profile (Table I nominal speed)
    keep_right: float = np.deg2rad(60.0)  # rad, max right turn of the desired direction for traffic ahead (0: off)
    look_ahead: float = 1.5  # m, range of the keep-right rule

    look_ahead_line: float = 0.5  # m, pursuit distance along the line through an intermediate waypoint
    lead: float = 0.15  # m, the aim point never goes further past the waypoint than this
    run_up: float = 1.0  # m, after missing a waypoint: go back to a point this far before it (and 0.5 m aside)

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        """Forget the per-agent run-up memory (call at the start of an episode)."""
        self._memory = _RunUp()

    def __call__(self, model, states, target, target_speed, target_heading=None, ids=None):
        states = np.asarray(states, float)
        if target_heading is not None:
            target = self._aim_points(states[:, :2], target, target_speed, target_heading, ids)
        to = target - states[:, :2]
        dist = np.hypot(to[:, 0], to[:, 1])
        direction = to / np.maximum(dist, 1e-9)[:, None]
        arrive = np.sqrt(2 * self.brake * np.maximum(dist - self.stop_radius, 0.0))
        speed = np.where(target_speed > 0, target_speed, np.minimum(arrive, self.cruise))
        if self.keep_right > 0 and states.shape[0] > 1:
            direction = _keep_right(states[:, :2], states[:, 2:4], direction, dist, self.keep_right,
                                    self.look_ahead)
        v_des = direction * speed[:, None]
        a = self.gain * (v_des - states[:, 2:4])
        lo, hi = model.agent_control_bounds(states)
        return np.clip(a, lo, hi)

    def _aim_points(self, pos, target, target_speed, target_heading, ids=None):
        return self._memory.aim(pos, target, target_speed, target_heading, ids, self.look_ahead_line, self.lead,
                                self.run_up, 0.5, 0.25, 0.05)


def _keep_right(pos, vel, direction, dist_to_target, max_turn, look_ahead):
    """Traffic rule that breaks the symmetric deadlocks of straight-line tracking: an agent with another agent
    ahead (within look_ahead, inside +-60 deg of its desired direction, closer than its own target, closing
    faster than 5 cm/s) turns its desired direction to the right by up to ``max_turn``, more the closer the
    other agent is, fading out near its own waypoint. Agents meeting head-on pass left side to left side.
    Pairs come from the client's cell-list neighbour search (O(N) for bounded density)."""
    from clients.neighbors import neighbor_lists

    pos = np.ascontiguousarray(pos, dtype=np.float64)
    indptr, indices = neighbor_lists(pos, float(look_ahead))
    w = _keep_right_weights(pos, np.ascontiguousarray(vel, dtype=np.float64),
                            np.ascontiguousarray(direction, dtype=np.float64),
                            np.ascontiguousarray(dist_to_target, dtype=np.float64), indptr, indices, float(look_ahead))
    ang = -max_turn * w
    c, s_ = np.cos(ang), np.sin(ang)
    return np.column_stack([c * direction[:, 0] - s_ * direction[:, 1], s_ * direction[:, 0] + c * direction[:, 1]])


@njit(cache=True)
def _keep_right_weights(pos, vel, direction, dist_to_target, indptr, indices, look_ahead):
    n = pos.shape[0]
    w = np.zeros(n)
    for i in range(n):
        best = 0.0
        for q in range(indptr[i], indptr[i + 1]):
            j = indices[q]
            dx = pos[j, 0] - pos[i, 0]
            dy = pos[j, 1] - pos[i, 1]
            d = np.sqrt(dx * dx + dy * dy)
            if d >= look_ahead or d >= dist_to_target[i] or d == 0.0:
                continue
            if dx * direction[i, 0] + dy * direction[i, 1] <= 0.5 * d:  # not within +-60 deg ahead
                continue
            if dx * (vel[j, 0] - vel[i, 0]) + dy * (vel[j, 1] - vel[i, 1]) >= -0.05 * d:  # not closing
                continue
            best = max(best, 1.0 - d / look_ahead)
        w[i] = best * min(max(dist_to_target[i] / look_ahead, 0.0), 1.0)
    return w


@dataclass
class AirTaxiTracker:
    heading_gain: float = 0.5  # 1/s
    speed_gain: float = 0.2  # 1/s

    look_ahead_line: float = 2000.0  # m
    lead: float = 300.0  # m
    run_up: float = 3000.0  # m
    side: float = 1500.0  # m

    def __post_init__(self):
        self.reset()

    def reset(self) -> None:
        self._memory = _RunUp()

    def __call__(self, model, states, target, target_speed, target_heading=None, ids=None):
        states = np.asarray(states, float)
        if target_heading is not None:
            target = self._memory.aim(states[:, :2], target, target_speed, target_heading, ids,
                                      self.look_ahead_line, self.lead, self.run_up, self.side, 600.0, 100.0)
        x, y, th, v = states.T
        lo, hi = model.agent_control_bounds(states)
        w_max = np.maximum(hi[:, 0], 1e-9)
        to = target - states[:, :2]
        err = _wrap(np.arctan2(to[:, 1], to[:, 0]) - th)
        omega = self.heading_gain * err
        # waypoint inside the turning circle on the side we would turn to: fly straight to open the distance
        radius = v / w_max
        side = np.where(err >= 0, 1.0, -1.0)
        cx = x - side * radius * np.sin(th)
        cy = y + side * radius * np.cos(th)
        inside = np.hypot(target[:, 0] - cx, target[:, 1] - cy) < radius
        omega = np.where(inside & (np.abs(err) > np.pi / 4), 0.0, omega)
        acc = self.speed_gain * (target_speed - v)
        u = np.column_stack([omega, acc])
        return np.clip(u, lo, hi)


def default_tracker(model_name: str):
    if model_name == "quadrotor":
        return QuadrotorTracker()
    if model_name == "air_taxi":
        return AirTaxiTracker()
    raise KeyError(f"no nominal controller for model {model_name!r}")
