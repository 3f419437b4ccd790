"""The `Model` record: one pairwise relative-dynamics model, numpy/numba side and JAX side.

A model module defines numba kernels (batched, float64, module level) and JAX "component" functions, and bundles
them into one frozen `Model`. The numpy-facing methods here validate shapes and call the kernels; the JAX side
(`hj_dynamics`) is built lazily so that importing a model never imports JAX (the client library must stay light).

Conventions (docs/contract.md): relative state s = "agent b seen from agent a"; controls ordered ego (a) first,
then the other (b); s' = f(s) + G_a(s) u_a + G_b(s) u_b; V > 0 is safe, so the ego always maximizes V.

JAX component functions receive the relative state as a tuple of n arrays (or scalars) that broadcast together,
and return tuples; a literal Python `0.0` entry marks a structural zero, which the Hamiltonian skips. The same
functions therefore serve one state (hj's vmapped calls) and a whole grid (the solver's fused step).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import numpy as np

GAMES = ("cooperative", "worst_case")


@dataclasses.dataclass(frozen=True)
class Kernels:
    """numba kernels of one model (all batched over a leading axis N, float64).

    relative_state(ego (N,k), other (N,k)) -> (N,n)
    affine_terms(s (N,n)) -> f (N,n), G_a (N,n,m), G_b (N,n,m)
    agent_control_bounds(x (N,k)) -> lo (N,m), hi (N,m)
    relative_control_bounds(s (N,n)) -> lo_a, hi_a, lo_b, hi_b, each (N,m)
    step_agents(x (N,k), u (N,m), dt) -> (N,k)
    relative_state_into(ego, other, out (N,n)), step_agents_into(x, u, dt, out (N,k)): the same, written into the
        caller's array (the filter's sampled-data check calls them at every check time without allocating)
    relative_state_row(ego, i, other, j, out, p): out[p] = the relative state of other[j] seen from ego[i], for
        per-pair loops (inline="always", so a loop over neighbour lists pays no call and no row slices; the batch
        kernels above loop over it, so the formula exists once)
    """
    relative_state: Callable
    affine_terms: Callable
    agent_control_bounds: Callable
    relative_control_bounds: Callable
    step_agents: Callable
    relative_state_into: Callable
    step_agents_into: Callable
    relative_state_row: Callable


@dataclasses.dataclass(frozen=True)
class JaxTerms:
    """JAX component functions of one model (see module docstring).

    affine(s) -> f (n-tuple), G_a (n-tuple of m-tuples), G_b (same)
    control_bounds(s) -> lo_a, hi_a, lo_b, hi_b (m-tuples), the state-dependent control boxes
    """
    affine: Callable
    control_bounds: Callable


@dataclasses.dataclass(frozen=True)
class Model:
    """A pairwise relative-dynamics model (units SI; see the field comments)."""
    name: str
    state_names: tuple[str, ...]          # relative state, n entries
    state_units: tuple[str, ...]
    periodic: tuple[bool, ...]            # per relative-state dim
    agent_state_names: tuple[str, ...]    # world-frame agent state, k entries
    agent_state_units: tuple[str, ...]
    control_names: tuple[str, ...]        # per agent, m entries
    control_lo: tuple[float, ...]         # static per-agent control box (state-independent part)
    control_hi: tuple[float, ...]
    decision_period: float                # s, zero-order hold of actions
    observation_range: float              # m
    safety_distance: float                # m, default d
    parameters: Mapping[str, Any] = dataclasses.field(hash=False)
    kernels: Kernels = dataclasses.field(repr=False, compare=False, hash=False)
    jax_terms: JaxTerms = dataclasses.field(repr=False, compare=False, hash=False)
    dissipation: Callable = dataclasses.field(repr=False, compare=False, hash=False)
    position_dims: tuple[int, int] = (0, 1)

    # ---- sizes -----------------------------------------------------------------------------------------------
    @property
    def n_states(self) -> int:
        return len(self.state_names)

    @property
    def n_agent_states(self) -> int:
        return len(self.agent_state_names)

    @property
    def n_controls(self) -> int:
        return len(self.control_names)

    @property
    def control_order(self) -> tuple[str, ...]:
        """Joint control order: the ego's controls then the other's (`ax_a, ay_a, ax_b, ay_b`)."""
        return tuple(f"{c}_a" for c in self.control_names) + tuple(f"{c}_b" for c in self.control_names)

    # ---- numpy-facing API (validates, then calls the numba kernels) ------------------------------------------
    def relative_state(self, ego_states, other_states) -> np.ndarray:
        """Relative state of `other` seen from `ego`: (N,k), (N,k) -> (N,n); headings wrapped to [-pi, pi)."""
        ego = _batch(ego_states, self.n_agent_states, "ego_states")
        other = _batch(other_states, self.n_agent_states, "other_states")
        if ego.shape != other.shape:
            raise ValueError(f"ego_states {ego.shape} and other_states {other.shape} differ in shape")
        return self.kernels.relative_state(ego, other)

    def affine_terms(self, s) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """s (N,n) -> f (N,n), G_a (N,n,m), G_b (N,n,m) with s' = f + G_a u_a + G_b u_b."""
        return self.kernels.affine_terms(_batch(s, self.n_states, "s"))

    def agent_control_bounds(self, agent_states) -> tuple[np.ndarray, np.ndarray]:
        """agent_states (N,k) -> lo, hi (N,m): the control box available at each state (speed limits)."""
        return self.kernels.agent_control_bounds(_batch(agent_states, self.n_agent_states, "agent_states"))

    def relative_control_bounds(self, s) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """s (N,n) -> lo_a, hi_a, lo_b, hi_b (N,m): the control boxes the HJ Hamiltonian uses."""
        return self.kernels.relative_control_bounds(_batch(s, self.n_states, "s"))

    def step_agents(self, agent_states, controls, dt: float) -> np.ndarray:
        """Integrate agents (N,k) over dt (s) with controls (N,m) held; speed limits enforced -> (N,k)."""
        x = _batch(agent_states, self.n_agent_states, "agent_states")
        u = _batch(controls, self.n_controls, "controls")
        if u.shape[0] != x.shape[0]:
            raise ValueError(f"controls has {u.shape[0]} rows, agent_states has {x.shape[0]}")
        dt = float(dt)
        if not np.isfinite(dt) or dt < 0:
            raise ValueError(f"dt must be finite and >= 0, got {dt}")
        return self.kernels.step_agents(x, u, dt)

    def dissipation_bounds(self, lo, hi) -> np.ndarray:
        """Exact max over the state box [lo, hi] and the admissible controls of |ds_i/dt| -> (n,) (units/s)."""
        lo = np.asarray(lo, dtype=np.float64).reshape(-1)
        hi = np.asarray(hi, dtype=np.float64).reshape(-1)
        if lo.shape != (self.n_states,) or hi.shape != (self.n_states,) or np.any(hi < lo):
            raise ValueError(f"box must be two ({self.n_states},) vectors with lo <= hi, got {lo}, {hi}")
        return np.asarray(self.dissipation(lo, hi), dtype=np.float64)

    # ---- JAX side ---------------------------------------------------------------------------------------------
    def hj_dynamics(self, game: str, gamma: float = 0.0):
        """The `hj_reachability.Dynamics` of this model for `game` ('cooperative' | 'worst_case').

        gamma (1/s) >= 0 adds the CBVF discount term `+ gamma * V` to the Hamiltonian.
        """
        if game not in GAMES:
            raise ValueError(f"unknown game {game!r}; known games: {', '.join(GAMES)}")
        gamma = float(gamma)
        if not np.isfinite(gamma) or gamma < 0:
            raise ValueError(f"gamma must be finite and >= 0, got {gamma}")
        return _pair_dynamics_class()(self, game, gamma)


def _batch(x, width: int, name: str) -> np.ndarray:
    """Coerce to a C-contiguous, aligned, writeable float64 (N, width) array; a row (width,) becomes (1, width)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != width:
        raise ValueError(f"{name} must have shape (N, {width}), got {np.shape(x)}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return kernel_layout(a)


def kernel_layout(a: np.ndarray) -> np.ndarray:
    """a itself when C-contiguous, aligned and writeable, else such a copy. numba compiles one specialization per
    layout and a read-only array (np.frombuffer, a JAX array) matches no writeable signature, so the kernels take
    only these (np.require alone costs ~1.5 us even when it copies nothing)."""
    f = a.flags
    return a if f.c_contiguous and f.writeable and f.aligned else np.require(a, requirements=("C", "A", "W"))


# ---- JAX helpers, shared by every model ------------------------------------------------------------------------
def _is_zero(x) -> bool:
    return isinstance(x, (int, float)) and x == 0


def _dot(coefs, terms):
    """sum_i coefs[i] * terms[i], skipping structural zeros (keeps fused XLA kernels small)."""
    out = 0.0
    for c, t in zip(coefs, terms):
        if not (_is_zero(c) or _is_zero(t)):
            out = out + c * t
    return out


def control_coefficients(grad, G):
    """grad (n components) . G (n x m nested tuple) -> m coefficient components."""
    n_controls = len(G[0])
    return tuple(_dot(grad, [G[i][j] for i in range(len(G))]) for j in range(n_controls))


def extreme_controls(coefficients, lo, hi, maximize: bool):
    """Box corner maximizing (or minimizing) sum_j c_j u_j, chosen per component by the sign of c_j."""
    import jax.numpy as jnp
    if maximize:
        return tuple(jnp.where(c >= 0, h, l) for c, l, h in zip(coefficients, lo, hi))
    return tuple(jnp.where(c >= 0, l, h) for c, l, h in zip(coefficients, lo, hi))


def hamiltonian_components(terms: JaxTerms, game: str, gamma: float, s, value, grad):
    """H(s, V, grad V) on components: grad.f + max_ua grad.G_a u_a + (max|min)_ub grad.G_b u_b + gamma V."""
    import jax.numpy as jnp
    f, G_a, G_b = terms.affine(s)
    lo_a, hi_a, lo_b, hi_b = terms.control_bounds(s)
    c_a = control_coefficients(grad, G_a)
    c_b = control_coefficients(grad, G_b)
    h = _dot(grad, f)
    # max_u c.u over a box: per component, c * hi if c >= 0 else c * lo; min is the mirror.
    for c, l, u in zip(c_a, lo_a, hi_a):
        if not _is_zero(c):
            h = h + jnp.maximum(c * l, c * u)
    for c, l, u in zip(c_b, lo_b, hi_b):
        if not _is_zero(c):
            h = h + (jnp.maximum(c * l, c * u) if game == "cooperative" else jnp.minimum(c * l, c * u))
    if gamma > 0:
        h = h + gamma * value
    return h


def max_rate_components(terms: JaxTerms, s):
    """Per-state exact max over the admissible controls of |ds_i/dt| (n components): local LF coefficients."""
    import jax.numpy as jnp
    f, G_a, G_b = terms.affine(s)
    lo_a, hi_a, lo_b, hi_b = terms.control_bounds(s)
    out = []
    for i in range(len(f)):
        top, bottom = f[i], f[i]
        for G, lo, hi in ((G_a, lo_a, hi_a), (G_b, lo_b, hi_b)):
            for g, l, u in zip(G[i], lo, hi):
                if not _is_zero(g):
                    top = top + jnp.maximum(g * l, g * u)
                    bottom = bottom + jnp.minimum(g * l, g * u)
        out.append(jnp.maximum(jnp.abs(top), jnp.abs(bottom)))
    return tuple(out)


@functools.cache
def _pair_dynamics_class():
    """Define the hj Dynamics subclass on first use (so that importing models never imports JAX)."""
    import hj_reachability as hj
    import jax.numpy as jnp

    class PairDynamics(hj.Dynamics):
        """Relative pair dynamics as an hj `Dynamics`: ego = control (max), other = disturbance (max or min).

        The control boxes are state dependent (`JaxTerms.control_bounds`), which hj's affine base class cannot
        express, so the Hamiltonian, optimal controls and partial magnitudes are written here directly.
        """

        def __init__(self, model: Model, game: str, gamma: float):
            space = hj.sets.Box(jnp.asarray(model.control_lo), jnp.asarray(model.control_hi))
            super().__init__("max", "max" if game == "cooperative" else "min", space, space)
            self.model, self.game, self.gamma = model, game, gamma

        # hj treats dynamics as a static jit argument: equal settings must hash equal to reuse compilations.
        def _key(self):
            return (self.model.name, self.game, self.gamma)

        def __hash__(self):
            return hash(self._key())

        def __eq__(self, other):
            return isinstance(other, PairDynamics) and self._key() == other._key()

        def __call__(self, state, control, disturbance, time):
            s = _split(state)
            f, G_a, G_b = self.model.jax_terms.affine(s)
            u_a, u_b = _split(control), _split(disturbance)
            rate = [f[i] + _dot(G_a[i], u_a) + _dot(G_b[i], u_b) for i in range(len(f))]
            return jnp.stack(jnp.broadcast_arrays(*rate), -1)

        def optimal_control_and_disturbance(self, state, time, grad_value):
            s, p = _split(state), _split(grad_value)
            _, G_a, G_b = self.model.jax_terms.affine(s)
            lo_a, hi_a, lo_b, hi_b = self.model.jax_terms.control_bounds(s)
            u_a = extreme_controls(control_coefficients(p, G_a), lo_a, hi_a, True)
            u_b = extreme_controls(control_coefficients(p, G_b), lo_b, hi_b, self.game == "cooperative")
            return (jnp.stack(jnp.broadcast_arrays(*u_a), -1), jnp.stack(jnp.broadcast_arrays(*u_b), -1))

        def hamiltonian(self, state, time, value, grad_value):
            return hamiltonian_components(self.model.jax_terms, self.game, self.gamma, _split(state), value,
                                          _split(grad_value))

        def partial_max_magnitudes(self, state, time, value, grad_value_box):
            rates = max_rate_components(self.model.jax_terms, _split(state))
            return jnp.stack(jnp.broadcast_arrays(*rates), -1)

    return PairDynamics


def _split(x):
    """(..., n) array -> tuple of n component arrays."""
    return tuple(x[..., i] for i in range(x.shape[-1]))
