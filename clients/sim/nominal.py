"""Waypoint thresholds (paper Table I) and a nominal waypoint-tracking controller per model. No learning.

Waypoint i counts as passed when the agent is within the distance threshold of it, its heading is within the
heading threshold of the waypoint's desired heading (skipped where the desired heading is NaN, e.g. a quadrotor
hovering at its goal) and its speed is within the speed threshold of the waypoint's desired speed.

Controllers (vectorized numpy; the safety filters come after them and may change their output):
- quadrotor: velocity tracking. Desired velocity points at the current waypoint with the waypoint's desired speed
  (nominal 0.5 m/s); at the goal (desired speed 0) it follows the braking profile sqrt(2 a_b dist) so that the
  agent arrives and hovers. a = k_v (v_des - v), clipped to the model's state-dependent bounds.
- air_taxi: pure pursuit on heading with the turn rate clipped to the bound; when the waypoint lies inside the
  current turning circle (it cannot be reached by turning towards it) it flies straight to open the distance,
  which produces the paper's "360-degree turn" after a missed waypoint. Speed tracks the waypoint's desired speed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


@dataclass
class QuadrotorTracker:
    gain: float = 2.0  # 1/s, velocity-error gain
    brake: float = 0.3  # m/s^2, deceleration used for the arrival profile (below the 0.5 bound)
    stop_radius: float = 0.02  # m

    def __call__(self, model, states, target, target_speed):
        states = np.asarray(states, float)
        to = target - states[:, :2]
        dist = np.hypot(to[:, 0], to[:, 1])
        direction = to / np.maximum(dist, 1e-9)[:, None]
        arrive = np.sqrt(2 * self.brake * np.maximum(dist - self.stop_radius, 0.0))
        speed = np.where(target_speed > 0, target_speed, np.minimum(arrive, 0.5))
        v_des = direction * speed[:, None]
        a = self.gain * (v_des - states[:, 2:4])
        lo, hi = model.agent_control_bounds(states)
        return np.clip(a, lo, hi)


@dataclass
class AirTaxiTracker:
    heading_gain: float = 0.5  # 1/s
    speed_gain: float = 0.2  # 1/s

    def __call__(self, model, states, target, target_speed):
        states = np.asarray(states, float)
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
