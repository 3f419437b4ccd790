"""Air-taxi pair (paper eq. 10, Table I): reduced-order wing-borne kinematics.

Agent state (x, y, theta, v) [m, m, rad, m/s]: x' = v cos(theta), y' = v sin(theta), theta' = omega, v' = a with
|omega| <= 0.1 rad/s, a in [-1, 2] m/s^2, v in [30.87, 90.03] m/s (it cannot stop). At a speed bound the
acceleration that would leave the interval is unavailable (state-dependent control box).

Relative state s = (x_r, y_r, theta_r, v_a, v_b): b's position in a's body frame, heading of b relative to a:
  x_r' = -v_a + v_b cos(theta_r) + omega_a y_r      y_r' = v_b sin(theta_r) - omega_a x_r
  theta_r' = omega_b - omega_a                       v_a' = a_a,  v_b' = a_b
"""

import math

import numpy as np
from numba import float64, njit, types

from reach.models.base import JaxTerms, Kernels, Model

OMEGA_MAX = 0.1     # rad/s
A_MIN = -1.0        # m/s^2
A_MAX = 2.0         # m/s^2
V_MIN = 30.87       # m/s (60 kn)
V_MAX = 90.03       # m/s (175 kn)
V_TOL = 1e-4        # m/s: a speed this close to a bound counts as at the bound (float32 grids)
MAX_SUBSTEP = 0.05  # s, RK4 substep of `step_agents`

_F2 = float64[:, :]
_F3 = float64[:, :, :]


@njit(float64(float64), cache=True)
def wrap_angle(a):
    """Wrap to [-pi, pi)."""
    return (a + math.pi) % (2.0 * math.pi) - math.pi


@njit(cache=True, inline="always")
def relative_state_row(ego, i, other, j, s, p):
    """s[p] = relative state of other[j] seen from ego[i] (one pair of rows; inlined into the caller's loop)."""
    c, sn = math.cos(ego[i, 2]), math.sin(ego[i, 2])
    dx, dy = other[j, 0] - ego[i, 0], other[j, 1] - ego[i, 1]
    s[p, 0] = c * dx + sn * dy
    s[p, 1] = -sn * dx + c * dy
    s[p, 2] = wrap_angle(other[j, 2] - ego[i, 2])
    s[p, 3] = ego[i, 3]
    s[p, 4] = other[j, 3]


@njit(types.void(_F2, _F2, _F2), cache=True)
def relative_state_into(ego, other, s):
    """`relative_state` written into s (N,5)."""
    for k in range(ego.shape[0]):
        relative_state_row(ego, k, other, k, s, k)


@njit(_F2(_F2, _F2), cache=True)
def relative_state(ego, other):
    """(N,4), (N,4) -> (N,5): other's position in ego's body frame, relative heading, both speeds."""
    s = np.empty((ego.shape[0], 5))
    relative_state_into(ego, other, s)
    return s


@njit(types.Tuple((_F2, _F3, _F3))(_F2), cache=True)
def affine_terms(s):
    """s (N,5) -> f (N,5), G_a (N,5,2), G_b (N,5,2); controls (omega, a) per agent."""
    n = s.shape[0]
    f = np.zeros((n, 5))
    g_a = np.zeros((n, 5, 2))
    g_b = np.zeros((n, 5, 2))
    for k in range(n):
        x_r, y_r, th, v_a, v_b = s[k, 0], s[k, 1], s[k, 2], s[k, 3], s[k, 4]
        f[k, 0] = -v_a + v_b * math.cos(th)
        f[k, 1] = v_b * math.sin(th)
        g_a[k, 0, 0] = y_r
        g_a[k, 1, 0] = -x_r
        g_a[k, 2, 0] = -1.0
        g_a[k, 3, 1] = 1.0
        g_b[k, 2, 0] = 1.0
        g_b[k, 4, 1] = 1.0
    return f, g_a, g_b


@njit(types.UniTuple(float64, 2)(float64), cache=True)
def _accel_bounds(v):
    """Admissible acceleration interval at speed v (m/s)."""
    return (0.0 if v <= V_MIN + V_TOL else A_MIN), (0.0 if v >= V_MAX - V_TOL else A_MAX)


@njit(types.UniTuple(_F2, 2)(_F2), cache=True)
def agent_control_bounds(x):
    """(N,4) -> lo, hi (N,2) of (omega, a) at each agent state."""
    n = x.shape[0]
    lo = np.empty((n, 2))
    hi = np.empty((n, 2))
    for k in range(n):
        lo[k, 0], hi[k, 0] = -OMEGA_MAX, OMEGA_MAX
        lo[k, 1], hi[k, 1] = _accel_bounds(x[k, 3])
    return lo, hi


@njit(types.UniTuple(_F2, 4)(_F2), cache=True)
def relative_control_bounds(s):
    """(N,5) -> lo_a, hi_a, lo_b, hi_b (N,2): boxes from v_a (ego) and v_b (other)."""
    n = s.shape[0]
    lo_a, hi_a = np.empty((n, 2)), np.empty((n, 2))
    lo_b, hi_b = np.empty((n, 2)), np.empty((n, 2))
    for k in range(n):
        lo_a[k, 0], hi_a[k, 0] = -OMEGA_MAX, OMEGA_MAX
        lo_b[k, 0], hi_b[k, 0] = -OMEGA_MAX, OMEGA_MAX
        lo_a[k, 1], hi_a[k, 1] = _accel_bounds(s[k, 3])
        lo_b[k, 1], hi_b[k, 1] = _accel_bounds(s[k, 4])
    return lo_a, hi_a, lo_b, hi_b


@njit(cache=True)
def _rk4_piece(x, y, th, v, omega, a, t):
    """RK4 over duration t (s) with omega, a constant and no speed bound crossed inside; fine substeps."""
    n_sub = max(1, int(math.ceil(t / MAX_SUBSTEP)))
    h = t / n_sub
    for _ in range(n_sub):
        # The right-hand side does not depend on (x, y): the stages only need theta and v at t, t + h/2, t + h.
        c1, s1 = v * math.cos(th), v * math.sin(th)
        th2, v2 = th + 0.5 * h * omega, v + 0.5 * h * a
        c2, s2 = v2 * math.cos(th2), v2 * math.sin(th2)
        th4, v4 = th + h * omega, v + h * a
        c4, s4 = v4 * math.cos(th4), v4 * math.sin(th4)
        x += h / 6.0 * (c1 + 4.0 * c2 + c4)
        y += h / 6.0 * (s1 + 4.0 * s2 + s4)
        th, v = th4, v4
    return x, y, th, v


@njit(types.void(_F2, _F2, float64, _F2), cache=True)
def step_agents_into(x, u, dt, out):
    """`step_agents` written into out (N,4)."""
    for k in range(x.shape[0]):
        omega = min(max(u[k, 0], -OMEGA_MAX), OMEGA_MAX)
        a = min(max(u[k, 1], A_MIN), A_MAX)
        v = min(max(x[k, 3], V_MIN), V_MAX)
        t_sat = dt
        if a > 0.0:
            t_sat = min(dt, (V_MAX - v) / a)
        elif a < 0.0:
            t_sat = min(dt, (V_MIN - v) / a)
        px, py, th, v = _rk4_piece(x[k, 0], x[k, 1], x[k, 2], v, omega, a, t_sat)
        if t_sat < dt:
            v = V_MAX if a > 0.0 else V_MIN
            px, py, th, v = _rk4_piece(px, py, th, v, omega, 0.0, dt - t_sat)
        out[k, 0], out[k, 1], out[k, 2], out[k, 3] = px, py, wrap_angle(th), v


@njit(_F2(_F2, _F2, float64), cache=True)
def step_agents(x, u, dt):
    """(N,4), (N,2) controls held for dt (s) -> (N,4). Controls clipped to the box; the speed saturates at its
    bounds (the step is split at the saturation time so that RK4 stays fourth order)."""
    out = np.empty((x.shape[0], 4))
    step_agents_into(x, u, dt, out)
    return out


def jax_affine(s):
    """Components version of `affine_terms` (0.0 = structural zero)."""
    import jax.numpy as jnp
    x_r, y_r, th, v_a, v_b = s
    f = (-v_a + v_b * jnp.cos(th), v_b * jnp.sin(th), 0.0, 0.0, 0.0)
    g_a = ((y_r, 0.0), (-x_r, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, 0.0))
    g_b = ((0.0, 0.0), (0.0, 0.0), (1.0, 0.0), (0.0, 0.0), (0.0, 1.0))
    return f, g_a, g_b


def jax_control_bounds(s):
    """State-dependent boxes: acceleration out of [V_MIN, V_MAX] is unavailable at the bound."""
    import jax.numpy as jnp
    _, _, _, v_a, v_b = s
    lo_a = (-OMEGA_MAX, jnp.where(v_a <= V_MIN + V_TOL, 0.0, A_MIN))
    hi_a = (OMEGA_MAX, jnp.where(v_a >= V_MAX - V_TOL, 0.0, A_MAX))
    lo_b = (-OMEGA_MAX, jnp.where(v_b <= V_MIN + V_TOL, 0.0, A_MIN))
    hi_b = (OMEGA_MAX, jnp.where(v_b >= V_MAX - V_TOL, 0.0, A_MAX))
    return lo_a, hi_a, lo_b, hi_b


def _trig_range(fn, lo, hi):
    """Exact [min, max] of cos or sin over the angle interval [lo, hi] (rad)."""
    if hi - lo >= 2 * math.pi:
        return -1.0, 1.0
    shift = 0.0 if fn is math.cos else math.pi / 2  # sin(t) = cos(t - pi/2)
    a, b = lo - shift, hi - shift
    vals = [math.cos(a), math.cos(b)]
    for k in range(math.ceil(a / math.pi), math.floor(b / math.pi) + 1):  # extrema of cos at multiples of pi
        vals.append(math.cos(k * math.pi))
    return min(vals), max(vals)


def _product_range(a_lo, a_hi, b_lo, b_hi):
    corners = (a_lo * b_lo, a_lo * b_hi, a_hi * b_lo, a_hi * b_hi)
    return min(corners), max(corners)


def _accel_range(v_lo, v_hi):
    """Union over v in [v_lo, v_hi] of the admissible acceleration intervals."""
    return (A_MIN if v_hi > V_MIN + V_TOL else 0.0), (A_MAX if v_lo < V_MAX - V_TOL else 0.0)


def dissipation(lo, hi):
    """Exact max |s_i'| over the state box and admissible controls. Each rate is a sum of terms in disjoint
    variables, so its range is the sum of the terms' ranges (each attained at a corner or a trig extremum)."""
    (xl, yl, tl, al, bl), (xh, yh, th, ah, bh) = lo, hi
    c_lo, c_hi = _trig_range(math.cos, tl, th)
    s_lo, s_hi = _trig_range(math.sin, tl, th)
    vc = _product_range(bl, bh, c_lo, c_hi)
    vs = _product_range(bl, bh, s_lo, s_hi)
    wy = OMEGA_MAX * max(abs(yl), abs(yh))
    wx = OMEGA_MAX * max(abs(xl), abs(xh))
    x_rate = (-ah + vc[0] - wy, -al + vc[1] + wy)
    y_rate = (vs[0] - wx, vs[1] + wx)
    a_a, a_b = _accel_range(al, ah), _accel_range(bl, bh)
    rates = (x_rate, y_rate, (-2 * OMEGA_MAX, 2 * OMEGA_MAX), a_a, a_b)
    return np.array([max(abs(r[0]), abs(r[1])) for r in rates])


MODEL = Model(
    name="air_taxi",
    state_names=("x_r", "y_r", "theta_r", "v_a", "v_b"),
    state_units=("m", "m", "rad", "m/s", "m/s"),
    periodic=(False, False, True, False, False),
    agent_state_names=("x", "y", "theta", "v"),
    agent_state_units=("m", "m", "rad", "m/s"),
    control_names=("omega", "a"),
    control_lo=(-OMEGA_MAX, A_MIN),
    control_hi=(OMEGA_MAX, A_MAX),
    decision_period=1.0,
    observation_range=5000.0,
    safety_distance=457.2,
    parameters={"omega_max": OMEGA_MAX, "a_min": A_MIN, "a_max": A_MAX, "v_min": V_MIN, "v_max": V_MAX,
                "v_nominal": 56.6},
    kernels=Kernels(relative_state, affine_terms, agent_control_bounds, relative_control_bounds, step_agents,
                    relative_state_into, step_agents_into, relative_state_row),
    jax_terms=JaxTerms(jax_affine, jax_control_bounds),
    dissipation=dissipation,
)
