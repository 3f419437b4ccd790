"""Planar quadrotor pair (paper eq. 19, Table I; Crazyflie): two double integrators.

Agent state (x, y, vx, vy) [m, m, m/s, m/s], control (ax, ay) [m/s^2] in [-0.5, 0.5]^2, speed |vx|, |vy| <= 1 m/s
per axis. Relative state s = (px, py, vx, vy) = other - ego: p' = v, v' = a_b - a_a.

Speed limits act per agent; the relative state does not carry the agents' own speeds, so inside the relative
velocity box the HJ Hamiltonian uses the full control boxes (this is what makes the worst-case game reduce to pure
drift, H = grad_p V . v). At |v_rel| = 2 V_MAX on an axis both agents are at their limits (v_b = +-V_MAX,
v_a = -+V_MAX), so the accelerations that would push |v_rel| further are unavailable there: the relative
dynamics keep v_rel in its box and the grid never relies on values extrapolated beyond it.
"""

import numpy as np
from numba import float64, njit, types

from reach.models.base import JaxTerms, Kernels, Model

A_MAX = 0.5   # m/s^2 per axis
V_MAX = 1.0   # m/s per axis per agent
V_REL_EDGE = 2 * V_MAX - 1e-6  # m/s: |v_rel| this large means both agents are at their speed limits

_F2 = float64[:, :]
_F3 = float64[:, :, :]


@njit(cache=True, inline="always")
def relative_state_row(ego, i, other, j, out, p):
    """out[p] = relative state of other[j] seen from ego[i] (one pair of rows; inlined into the caller's loop)."""
    for z in range(4):
        out[p, z] = other[j, z] - ego[i, z]


@njit(types.void(_F2, _F2, _F2), cache=True)
def relative_state_into(ego, other, out):
    """`relative_state` written into out (N,4)."""
    for k in range(ego.shape[0]):
        relative_state_row(ego, k, other, k, out, k)


@njit(_F2(_F2, _F2), cache=True)
def relative_state(ego, other):
    """(N,4), (N,4) -> (N,4): other - ego (positions and velocities, world axes)."""
    out = np.empty((ego.shape[0], 4))
    relative_state_into(ego, other, out)
    return out


@njit(types.Tuple((_F2, _F3, _F3))(_F2), cache=True)
def affine_terms(s):
    """s (N,4) -> f (N,4), G_a (N,4,2), G_b (N,4,2)."""
    n = s.shape[0]
    f = np.zeros((n, 4))
    g_a = np.zeros((n, 4, 2))
    g_b = np.zeros((n, 4, 2))
    for k in range(n):
        f[k, 0] = s[k, 2]
        f[k, 1] = s[k, 3]
        g_a[k, 2, 0] = -1.0
        g_a[k, 3, 1] = -1.0
        g_b[k, 2, 0] = 1.0
        g_b[k, 3, 1] = 1.0
    return f, g_a, g_b


@njit(types.UniTuple(_F2, 2)(_F2), cache=True)
def agent_control_bounds(x):
    """(N,4) -> lo, hi (N,2): acceleration that would push a speed past V_MAX is unavailable."""
    n = x.shape[0]
    lo = np.full((n, 2), -A_MAX)
    hi = np.full((n, 2), A_MAX)
    for k in range(n):
        for j in range(2):
            v = x[k, 2 + j]
            if v >= V_MAX:
                hi[k, j] = 0.0
            if v <= -V_MAX:
                lo[k, j] = 0.0
    return lo, hi


@njit(types.UniTuple(_F2, 4)(_F2), cache=True)
def relative_control_bounds(s):
    """(N,4) -> lo_a, hi_a, lo_b, hi_b (N,2): full boxes, except at |v_rel| = 2 V_MAX (see module doc)."""
    n = s.shape[0]
    lo_a, hi_a = np.full((n, 2), -A_MAX), np.full((n, 2), A_MAX)
    lo_b, hi_b = np.full((n, 2), -A_MAX), np.full((n, 2), A_MAX)
    for k in range(n):
        for j in range(2):
            if s[k, 2 + j] >= V_REL_EDGE:  # v_b = +V_MAX, v_a = -V_MAX
                hi_b[k, j] = 0.0
                lo_a[k, j] = 0.0
            elif s[k, 2 + j] <= -V_REL_EDGE:  # v_b = -V_MAX, v_a = +V_MAX
                lo_b[k, j] = 0.0
                hi_a[k, j] = 0.0
    return lo_a, hi_a, lo_b, hi_b


@njit(cache=True)
def _axis(p, v, a, dt):
    """Exact double-integrator step of one axis with |v| <= V_MAX: accelerate until the bound, then coast."""
    v = min(max(v, -V_MAX), V_MAX)
    if a > 0.0 and v + a * dt > V_MAX:
        t = (V_MAX - v) / a
        return p + v * t + 0.5 * a * t * t + V_MAX * (dt - t), V_MAX
    if a < 0.0 and v + a * dt < -V_MAX:
        t = (-V_MAX - v) / a
        return p + v * t + 0.5 * a * t * t - V_MAX * (dt - t), -V_MAX
    return p + v * dt + 0.5 * a * dt * dt, v + a * dt


@njit(types.void(_F2, _F2, float64, _F2), cache=True)
def step_agents_into(x, u, dt, out):
    """`step_agents` written into out (N,4)."""
    for k in range(x.shape[0]):
        for j in range(2):
            a = min(max(u[k, j], -A_MAX), A_MAX)
            out[k, j], out[k, 2 + j] = _axis(x[k, j], x[k, 2 + j], a, dt)


@njit(_F2(_F2, _F2, float64), cache=True)
def step_agents(x, u, dt):
    """(N,4), (N,2) controls held for dt (s) -> (N,4); controls clipped to the box, speed saturates."""
    out = np.empty((x.shape[0], 4))
    step_agents_into(x, u, dt, out)
    return out


def jax_affine(s):
    """Components version of `affine_terms` (0.0 = structural zero)."""
    px, py, vx, vy = s
    f = (vx, vy, 0.0, 0.0)
    g_a = ((0.0, 0.0), (0.0, 0.0), (-1.0, 0.0), (0.0, -1.0))
    g_b = ((0.0, 0.0), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0))
    return f, g_a, g_b


def jax_control_bounds(s):
    """Components version of `relative_control_bounds`."""
    import jax.numpy as jnp
    _, _, vx, vy = s
    lo_a = tuple(jnp.where(v >= V_REL_EDGE, 0.0, -A_MAX) for v in (vx, vy))
    hi_a = tuple(jnp.where(v <= -V_REL_EDGE, 0.0, A_MAX) for v in (vx, vy))
    lo_b = tuple(jnp.where(v <= -V_REL_EDGE, 0.0, -A_MAX) for v in (vx, vy))
    hi_b = tuple(jnp.where(v >= V_REL_EDGE, 0.0, A_MAX) for v in (vx, vy))
    return lo_a, hi_a, lo_b, hi_b


def dissipation(lo, hi):
    """Exact max |s'| over the box: |p'| = |v| (largest |v| in the box), |v'| = |a_b - a_a| <= 2 A_MAX."""
    v_abs = np.maximum(np.abs(lo[2:]), np.abs(hi[2:]))
    return np.array([v_abs[0], v_abs[1], 2 * A_MAX, 2 * A_MAX])


MODEL = Model(
    name="quadrotor",
    state_names=("px", "py", "vx", "vy"),
    state_units=("m", "m", "m/s", "m/s"),
    periodic=(False, False, False, False),
    agent_state_names=("x", "y", "vx", "vy"),
    agent_state_units=("m", "m", "m/s", "m/s"),
    control_names=("ax", "ay"),
    control_lo=(-A_MAX, -A_MAX),
    control_hi=(A_MAX, A_MAX),
    decision_period=0.1,
    observation_range=4.0,
    safety_distance=0.5,
    parameters={"a_max": A_MAX, "v_max": V_MAX},
    kernels=Kernels(relative_state, affine_terms, agent_control_bounds, relative_control_bounds, step_agents,
                    relative_state_into, step_agents_into, relative_state_row),
    jax_terms=JaxTerms(jax_affine, jax_control_bounds),
    dissipation=dissipation,
)
