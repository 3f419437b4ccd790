"""Trainer integration: put the layered safety filter between any multi-agent policy and its environment.

The wrappers need to know two things about the wrapped environment, supplied by a small user-written adapter
(:class:`StateAdapter`):

- ``agent_states(env) -> (ids, states)``: the agents currently in the airspace (ids: agent names or indices) and
  their world states (n, k) in the model's ``agent_state_names`` order (every agent in the airspace, also those
  the policy does not control, because they are obstacles);
- ``actions_to_controls(env, ids, actions) -> (n, m)`` and ``controls_to_actions(env, ids, controls, actions)``:
  the policy's action format <-> physical controls (the second returns ``actions`` with the entries of ``ids``
  replaced).

Hook points (in order, every step): ``SafetyLayer.before_step`` (curriculum: filter on/off and the current
safety distance d and R_c(d)), the filter (``filter.filter(states, controls)``), the wrapped env's ``step``,
``SafetyLayer.after_step`` (potential-conflict penalty added to rewards when ``penalty_weight > 0``, metrics into
``info["safety"]``).

Wrappers: :class:`SafeParallelEnv` (PettingZoo ParallelEnv), :class:`SafeJointEnv` (a Gymnasium env whose action
is the joint (N, m) action), :class:`SafeVectorEnv` (a Gymnasium VectorEnv of such joint envs; one filter call per
sub-env). Built-in environments over :mod:`clients.sim.simulator` to test them: :class:`NavigationParallelEnv`,
:class:`NavigationEnv` and :func:`make_navigation_vector_env`, with :class:`NavigationAdapter`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, Sequence

import gymnasium as gym
import numpy as np
from numba import njit
from pettingzoo import ParallelEnv

from clients.training import SafetyCounters, agent_positions_velocities, conflict_penalty, conflict_range_at
from clients.value_function import real_array

from .baselines import neighbours_within, world_velocity
from .scenarios import make_scenario, scenario_model
from .simulator import Simulator, filter_interventions, kernel_array


# ------------------------------------------------------------------------------------------------ the protocol
class StateAdapter(Protocol):
    model: Any

    def agent_states(self, env) -> tuple[Sequence, np.ndarray]: ...

    def actions_to_controls(self, env, ids: Sequence, actions) -> np.ndarray: ...

    def controls_to_actions(self, env, ids: Sequence, controls: np.ndarray, actions): ...


# ------------------------------------------------------------------------------------------------ the safety layer
@dataclass
class SafetyLayer:
    """Filter + curriculum + potential-conflict penalty + metrics, independent of the env API.

    ``filter``: object with ``.filter(states, controls) -> (safe, info)`` (:class:`clients.sim.LayeredFilter`
    wraps ``clients.LayeredSafetyFilter``; the baselines work too). ``safety_distance`` / ``conflict_range``: the
    target d and R_c(d) (the metrics always use these, so numbers stay comparable across curriculum stages).
    ``curriculum``: a ``clients.training.CurriculumSchedule`` (or any callable ``step -> CurriculumStage`` /
    ``(filter_on, d)``), or None (filter always on at the target d); when the stage's d changes,
    ``filter_factory(d)`` rebuilds the filter. ``penalty_weight`` w > 0 adds the potential-conflict penalty
    (``clients.training.conflict_penalty``, paper eq. 17) at the stage's d and R_c while the filter is on.
    """

    model: Any
    filter: Any = None
    safety_distance: float | None = None
    conflict_range: float | None = None
    penalty_weight: float = 0.0
    curriculum: Any = None
    filter_factory: Callable[[float], Any] | None = None
    conflict_range_fn: Callable[[float], float] | None = None
    steps: int = 0

    def __post_init__(self):
        if self.safety_distance is None:
            self.safety_distance = float(getattr(self.filter, "safety_distance", None) or self.model.safety_distance)
        if self.conflict_range is None:
            rc = getattr(self.filter, "conflict_range", None)
            if self.conflict_range_fn is not None:
                rc = conflict_range_at(self.conflict_range_fn, self.safety_distance)
            if rc is None or not np.isfinite(rc):
                raise ValueError("conflict_range unknown: pass conflict_range= or conflict_range_fn=")
            self.conflict_range = float(rc)
        self.target_distance = float(self.safety_distance)
        self.target_conflict_range = float(self.conflict_range)
        self.filter_on = True
        self.stage = None
        self.new_episode()
        self._built_d = self.target_distance

    def new_episode(self) -> None:
        """Start the episode's counters afresh (the wrappers call it at every reset of their env)."""
        self.counters = SafetyCounters(self.target_distance, self.target_conflict_range)

    def before_step(self) -> None:
        """Hook 1: the curriculum (filter on/off, the stage's d and R_c; rebuilds the filter when d changes)."""
        if self.curriculum is None:
            return
        st = self.curriculum.at(self.steps) if hasattr(self.curriculum, "at") else self.curriculum(self.steps)
        if isinstance(st, tuple):
            on, d = st[0], float(st[1])
            rc = conflict_range_at(self.conflict_range_fn, d) if (self.conflict_range_fn and on) \
                else self.conflict_range
        else:
            on, d, rc = st.filter_on, float(st.safety_distance), float(st.conflict_range)
        self.stage = st
        self.filter_on = bool(on)
        if not self.filter_on:
            return
        self.safety_distance, self.conflict_range = d, float(rc)
        if d != self._built_d and self.filter_factory is not None:
            self.filter = self.filter_factory(d)
            self._built_d = d

    def apply(self, states: np.ndarray, controls: np.ndarray) -> tuple[np.ndarray, dict]:
        """Hook 2: the filter on states (n, k) (any layout, read-only ones too) and controls (n, m). Returns safe
        controls and per-agent diagnostics."""
        controls = np.asarray(controls, float)
        n = controls.shape[0]
        if not self.filter_on or self.filter is None or n == 0:
            return controls, {"intervened": np.zeros(n, bool)}
        # the filter gets what the numba kernels take (a writeable C copy of read-only states: JAX, np.frombuffer)
        x = kernel_array(states, self.model.n_agent_states, "states", rows=n)
        safe, info = self.filter.filter(x, controls)
        safe = np.asarray(safe, float)
        diag = {}
        if isinstance(info, dict):
            for k, v in info.items():
                if isinstance(v, np.ndarray) and v.shape[:1] == (n,):
                    diag[k] = v
        diag["intervened"] = filter_interventions(self.model, x, safe, controls, info)
        return safe, diag

    def after_step(self, states: np.ndarray) -> dict:
        """Hook 3 (after the env step): penalty per agent (<= 0; 0 unless ``penalty_weight`` > 0 and the filter is
        on), the counters (near-collision / conflict at the target d and R_c) and the minimum separation over all
        pairs (one cell-list pass: `clients.training.SafetyCounters.update_with_min_separation`)."""
        self.steps += 1
        states = np.asarray(states, float)
        n = states.shape[0]
        if n == 0:
            z = np.zeros(0)
            return {"penalty": z, "near_collision": z.astype(bool), "conflict": z.astype(bool),
                    "min_separation": math.inf, "n_in_conflict_range": z.astype(int)}
        if states.ndim != 2 or states.shape[1] != self.model.n_agent_states:
            raise ValueError(f"states must have shape (N, {self.model.n_agent_states}), got {states.shape}")
        near, n_rc, conflict, n_near, n_conflict, min_sep = self.counters.update_with_min_separation(states[:, :2])
        if self.penalty_weight > 0 and self.filter_on and n > 1 and self.conflict_range > self.safety_distance:
            pos, vel = agent_positions_velocities(self.model, states)
            penalty = conflict_penalty(pos, vel, self.safety_distance, self.conflict_range, self.penalty_weight)
            penalty_sum = float(np.sum(penalty))
        else:
            penalty, penalty_sum = np.zeros(n), 0.0
        return {"penalty": penalty, "near_collision": near, "conflict": conflict, "min_separation": min_sep,
                "n_in_conflict_range": n_rc, "_rates": (n_near / n, n_conflict / n, penalty_sum)}


# ------------------------------------------------------------------------------------------------ built-in envs
OBS_NEIGHBOURS = 3


class _NavigationCore:
    """Shared logic of the built-in environments: a :class:`Simulator` episode driven by external controls.

    Agents leave the airspace at their goal (they terminate). Per-agent reward: progress towards the current
    waypoint in units of (nominal speed x decision period), +1 per waypoint passed, +5 at the goal.
    Observation (float32): current waypoint relative to the agent / observation range (2), the agent's own state
    without position (k-2), and for the 3 nearest others in range: relative position / range (2), relative
    velocity / max speed (2), presence flag (1).
    """

    def __init__(self, scenario: str, seed: int = 0, max_time: float | None = None, **scenario_kwargs):
        from reach.models import get_model

        self.scenario_name = scenario
        self.model = get_model(scenario_model(scenario))
        self.scenario_kwargs = scenario_kwargs
        if max_time is not None:    # a NaN limit would never truncate the episode
            max_time = float(max_time)
            if not (math.isfinite(max_time) and max_time > 0):
                raise ValueError(f"max_time must be finite and > 0 s (or None: the scenario's), got {max_time}")
        self.max_time = max_time
        self.seed = seed
        self._episodes = np.random.default_rng(seed)    # the seeds of episodes reset without one
        self._build(seed)

    def _build(self, seed):
        sc = make_scenario(self.scenario_name, seed=seed, **self.scenario_kwargs).with_(remove_at_goal=True)
        if self.max_time is not None:
            sc = sc.with_(max_time=float(self.max_time))
        self.sim = Simulator(sc, model=self.model, record=False)
        self.n = sc.n_agents
        k = self.model.n_agent_states
        self.obs_dim = 2 + (k - 2) + 5 * OBS_NEIGHBOURS
        lo = np.asarray(self.model.control_lo, float)
        hi = np.asarray(self.model.control_hi, float)
        self.u_center, self.u_half = 0.5 * (hi + lo), 0.5 * (hi - lo)
        self.v_scale = float(self.model.parameters.get("v_max", 1.0))
        self.progress_unit = float(np.nanmax(sc.waypoint_speed)) * self.model.decision_period or 1.0
        self._prev_dist = self._dist()

    def reset(self, seed=None):
        """A new episode: the scenario drawn with `seed`, or without one the next seed of a generator seeded by
        the last seed given (Gymnasium's convention: reset(seed=s) then reset() ... replays the same sequence of
        episodes, and vector envs' autoreset gets a new episode each time)."""
        if seed is not None:
            self._episodes = np.random.default_rng(int(seed))
            self.seed = int(seed)
        else:
            self.seed = int(self._episodes.integers(2**31 - 1))
        self._build(self.seed)

    def _dist(self):
        target, _, _ = self.sim.current_targets()
        return np.hypot(*(target - self.sim.states[:, :2]).T)

    def airspace(self) -> np.ndarray:
        return self.sim.airspace

    def observations(self) -> np.ndarray:
        sim, n = self.sim, self.n
        obs = np.zeros((n, self.obs_dim), np.float32)
        act = self.airspace()
        if act.size == 0:
            return obs
        rng = float(self.model.observation_range)
        target, _, _ = sim.current_targets(act)
        x = sim.states[act]
        obs[act, 0:2] = (target - x[:, :2]) / rng
        obs[act, 2:2 + x.shape[1] - 2] = x[:, 2:]
        vel = world_velocity(self.model.name, x)
        p = np.ascontiguousarray(x[:, :2])
        nb = neighbours_within(p, rng, OBS_NEIGHBOURS)  # nearest others in range (cell list), -1 padded
        base = 2 + x.shape[1] - 2
        for s in range(OBS_NEIGHBOURS):
            j = nb[:, s]
            ok = j >= 0
            jj = np.where(ok, j, 0)
            blk = np.column_stack([(p[jj] - p) / rng, (vel[jj] - vel) / self.v_scale, np.ones(act.size)])
            obs[act, base + 5 * s: base + 5 * s + 5] = np.where(ok[:, None], blk, 0.0)
        return obs

    def action_to_control(self, actions: np.ndarray) -> np.ndarray:
        return self.u_center + self.u_half * np.clip(np.asarray(actions, float), -1.0, 1.0)

    def joint_actions(self, actions) -> np.ndarray:
        """The joint action (N, m) in [-1, 1] (beyond it: clipped) as float64; ValueError naming the expected and
        the got shape, for a non-real dtype, or NaN (np.clip would pass it on to the integration)."""
        m = self.model.n_controls
        a = real_array(actions, "action")
        if a.shape != (self.n, m):
            raise ValueError(f"action must have shape (n_agents, m) = ({self.n}, {m}), got {a.shape}")
        _no_nan(a)
        return a

    def agent_actions(self, actions, index: Mapping[str, int]) -> np.ndarray:
        """A parallel env's {agent: action (m,)} as the joint action (N, m) float64 (`index`: agent name -> row;
        agents without an entry get action 0, the centre of the control box: agents the policy does not control).
        TypeError for a non-dict; ValueError naming unknown agents, or for an action of another shape (the action
        space's), a non-real dtype or NaN."""
        if not isinstance(actions, Mapping):
            raise TypeError(f"actions must be a dict {{agent: action of shape ({self.model.n_controls},)}}, got "
                            f"{type(actions).__name__}")
        names = list(index)
        unknown = [a for a in actions if a not in index]
        if unknown:
            raise ValueError(f"unknown agents {unknown} (the env's agents: {names[0]} .. {names[-1]})")
        m = self.model.n_controls
        out = np.zeros((self.n, m))
        for a, act in actions.items():
            row = real_array(act, f"action of {a}")
            if row.shape != (m,):
                raise ValueError(f"action of {a} must have shape ({m},) (its action space's), got {row.shape}")
            out[index[a]] = row
        _no_nan(out, names)
        return out

    def control_to_action(self, controls: np.ndarray) -> np.ndarray:
        return np.clip((np.asarray(controls, float) - self.u_center) / self.u_half, -1.0, 1.0)

    def step(self, controls_all: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """controls_all (N, m) for every agent (rows of absent agents ignored). Returns rewards (N,),
        per-agent goal flags (N,) and the episode's time-out flag."""
        sim = self.sim
        wp_before = sim.wp_idx.copy()
        act = self.airspace()
        if act.size:
            lo, hi = self.model.agent_control_bounds(sim.states[act])
            sim.step(np.clip(controls_all[act], lo, hi))
        else:
            sim.step(np.zeros((0, self.model.n_controls)))
        dist = self._dist()
        passed = sim.wp_idx - wp_before
        reward = np.where(passed > 0, 0.0, (self._prev_dist - dist) / self.progress_unit)
        reward = reward + passed + 5.0 * (sim.goal_reached & (wp_before < sim.scenario.n_waypoints))
        reward[sim.scenario.departure_times > sim.t - self.model.decision_period + 1e-9] = 0.0
        self._prev_dist = dist
        timeout = sim.t >= sim.scenario.max_time - 1e-9
        return reward, sim.goal_reached.copy(), timeout


def _no_nan(actions: np.ndarray, names: Sequence | None = None) -> None:
    """ValueError naming the agents (their `names`, else row indices) whose action (N, m) holds NaN."""
    nan = np.isnan(actions)
    if nan.any():       # the per-row search only once there is a NaN (done for every action, it cost ~4 us)
        bad = np.flatnonzero(nan.any(axis=1))
        raise ValueError(f"action contains NaN for agents {bad.tolist() if names is None else [names[i] for i in bad]}")


class NavigationParallelEnv(ParallelEnv):
    """PettingZoo ParallelEnv over a simulator scenario (one agent per aircraft / quadrotor).

    Actions: Box([-1, 1]^m), mapped linearly onto the model's static control box (the simulator clips to the
    state-dependent bounds); one array of shape (m,) per agent. Agents that have not departed yet are listed but
    their actions are ignored; agents without an entry in the actions dict get action 0 (the centre of the box);
    an unknown agent name, a non-dict, another shape or NaN is an error.
    """

    metadata = {"name": "reach_navigation_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(self, scenario: str = "random", seed: int = 0, max_time: float | None = None, **scenario_kwargs):
        self.core = _NavigationCore(scenario, seed=seed, max_time=max_time, **scenario_kwargs)
        self.possible_agents = [f"agent_{i}" for i in range(self.core.n)]
        self._index = {a: i for i, a in enumerate(self.possible_agents)}
        self.agents: list[str] = []
        self.render_mode = None
        self._obs_space = gym.spaces.Box(-np.inf, np.inf, (self.core.obs_dim,), np.float32)
        self._act_space = gym.spaces.Box(-1.0, 1.0, (self.core.model.n_controls,), np.float32)

    @property
    def model(self):
        return self.core.model

    def observation_space(self, agent):
        return self._obs_space

    def action_space(self, agent):
        return self._act_space

    def index(self, agent: str) -> int:
        return self._index[agent]

    def reset(self, seed=None, options=None):
        self.core.reset(seed)
        self.agents = list(self.possible_agents)
        obs = self.core.observations()
        return {a: obs[self._index[a]] for a in self.agents}, {a: {} for a in self.agents}

    def step(self, actions):
        core = self.core
        reward, at_goal, timeout = core.step(core.action_to_control(core.agent_actions(actions, self._index)))
        obs = core.observations()
        agents = self.agents
        rewards = {a: float(reward[self._index[a]]) for a in agents}
        terms = {a: bool(at_goal[self._index[a]]) for a in agents}
        truncs = {a: bool(timeout and not terms[a]) for a in agents}
        observations = {a: obs[self._index[a]] for a in agents}
        infos = {a: {} for a in agents}
        self.agents = [a for a in agents if not (terms[a] or truncs[a])]
        return observations, rewards, terms, truncs, infos

    def close(self):
        pass


class NavigationEnv(gym.Env):
    """Gymnasium env with the joint action (N, m) in [-1, 1] and joint observation (N, obs_dim); reward = sum of
    the agents' rewards; terminated when every agent reached its goal, truncated at the scenario's time limit."""

    metadata = {"render_modes": []}

    def __init__(self, scenario: str = "random", seed: int = 0, max_time: float | None = None, **scenario_kwargs):
        self.core = _NavigationCore(scenario, seed=seed, max_time=max_time, **scenario_kwargs)
        n, m = self.core.n, self.core.model.n_controls
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n, self.core.obs_dim), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (n, m), np.float32)

    @property
    def model(self):
        return self.core.model

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.core.reset(seed)
        return self.core.observations(), {}

    def step(self, action):
        """action (N, m) in [-1, 1] (ValueError for another shape or NaN)."""
        reward, at_goal, timeout = self.core.step(self.core.action_to_control(self.core.joint_actions(action)))
        terminated = bool(at_goal.all())
        return self.core.observations(), float(reward.sum()), terminated, bool(timeout and not terminated), {
            "agent_rewards": reward, "at_goal": at_goal}

    # the StateAdapter methods, so that vector envs can reach them through VectorEnv.call
    def safety_states(self):
        """(indices, states) of the agents in the airspace (a copy)."""
        idx = self.core.airspace()
        return idx, self.core.sim.states[idx]


def make_navigation_vector_env(num_envs: int = 2, scenario: str = "random", seed: int = 0, **kwargs):
    """A ``gymnasium.vector.SyncVectorEnv`` of :class:`NavigationEnv` (episode seeds seed, seed+1, ...)."""
    return gym.vector.SyncVectorEnv([
        (lambda i=i: NavigationEnv(scenario, seed=seed + i, **kwargs)) for i in range(num_envs)])


class NavigationAdapter:
    """:class:`StateAdapter` for the built-in environments (parallel: ids are agent names; joint/vector: ids are
    agent indices). Actions in [-1, 1]^m map linearly onto the model's static control box; ``env`` is only needed
    to read states (for vector envs, :meth:`vector_agent_states` reads every sub-env through ``call``)."""

    def __init__(self, model):
        self.model = model
        lo = np.asarray(model.control_lo, float)
        hi = np.asarray(model.control_hi, float)
        self.center, self.half = 0.5 * (hi + lo), 0.5 * (hi - lo)

    def agent_states(self, env):
        base = getattr(env, "unwrapped", env)
        if isinstance(base, NavigationParallelEnv):
            idx = base.core.airspace()
            return [base.possible_agents[i] for i in idx], base.core.sim.states[idx].copy()
        return base.safety_states()

    def vector_agent_states(self, vec_env):
        return vec_env.call("safety_states")

    def actions_to_controls(self, env, ids, actions):
        # the env's own checks (shape, unknown agents, NaN), so that a wrapped env fails as the bare one does
        base = getattr(env, "unwrapped", env)
        if isinstance(base, NavigationParallelEnv):
            a = base.core.agent_actions(actions, base._index)[[base.index(x) for x in ids]]
        else:
            if isinstance(base, NavigationEnv):
                actions = base.core.joint_actions(actions)
            fast = _joint_rows(actions, ids, self.model.n_controls)
            if fast is not None:  # one kernel, the same arithmetic as below
                out, ok = _actions_to_controls_kernel(fast[0], fast[1], self.center, self.half)
                if ok:
                    return out
            a = np.asarray(actions, float)[np.asarray(ids, int)]
        return self.center + self.half * np.clip(a, -1.0, 1.0)

    def controls_to_actions(self, env, ids, controls, actions):
        if not isinstance(actions, dict):
            fast = _joint_rows(actions, ids, self.model.n_controls)
            c = np.asarray(controls, float)
            if fast is not None and c.shape == (fast[1].shape[0], self.model.n_controls):
                out = np.array(actions, dtype=np.float32, copy=True)
                if _controls_to_actions_kernel(np.ascontiguousarray(c), fast[1], self.center, self.half, out):
                    return out
        acts = np.clip((np.asarray(controls, float) - self.center) / self.half, -1.0, 1.0).astype(np.float32)
        if isinstance(actions, dict):
            out = dict(actions)
            for a, row in zip(ids, acts):
                if a in out:
                    out[a] = row
            return out
        out = np.array(actions, dtype=np.float32, copy=True)
        out[np.asarray(ids, int)] = acts
        return out


def _joint_rows(actions, ids, m):
    """(actions, ids) as a C-contiguous float32/float64 (N, m) array and int64 row ids when the kernels below apply
    (numpy does the rest: other dtypes, and ids outside [0, N), which the kernels report instead of using)."""
    if not isinstance(actions, np.ndarray) or actions.dtype not in (np.float32, np.float64) or actions.ndim != 2 \
            or actions.shape[1] != m:
        return None
    idx = ids if isinstance(ids, np.ndarray) and ids.dtype == np.int64 else np.asarray(ids, dtype=np.int64)
    if idx.ndim != 1:
        return None
    return np.ascontiguousarray(actions), idx


@njit(cache=True, nogil=True)
def _rows_in_range(ids, n):
    for r in range(ids.shape[0]):
        if ids[r] < 0 or ids[r] >= n:
            return False
    return True


@njit(cache=True, nogil=True)
def _actions_to_controls_kernel(actions, ids, center, half):
    """center + half * clip(float64(actions[ids]), -1, 1) (NaN passes through, as with np.clip); ok = False (and
    nothing computed) when an id is outside [0, N)."""
    m = actions.shape[1]
    out = np.empty((ids.shape[0], m))
    if not _rows_in_range(ids, actions.shape[0]):
        return out, False
    for r in range(ids.shape[0]):
        for z in range(m):
            a = np.float64(actions[ids[r], z])
            if a < -1.0:
                a = -1.0
            elif a > 1.0:
                a = 1.0
            out[r, z] = center[z] + half[z] * a
    return out, True


@njit(cache=True, nogil=True)
def _controls_to_actions_kernel(controls, ids, center, half, out):
    """out[ids] = float32(clip((controls - center) / half, -1, 1)) (NaN passes through, as with np.clip); False
    (out untouched) when an id is outside [0, N)."""
    if not _rows_in_range(ids, out.shape[0]):
        return False
    for r in range(ids.shape[0]):
        for z in range(controls.shape[1]):
            a = (controls[r, z] - center[z]) / half[z]
            if a < -1.0:
                a = -1.0
            elif a > 1.0:
                a = 1.0
            out[ids[r], z] = np.float32(a)
    return True


# ------------------------------------------------------------------------------------------------ wrappers
def _report(layer: SafetyLayer, ids, states_after, diag) -> tuple[dict, dict]:
    """Hook 3 (`SafetyLayer.after_step`) and the step's summary (``info["safety"]``, ``last_metrics``): rates over
    the agents in the airspace after the step (interventions over those before it), the minimum separation, the
    stage's filter switch, d and R_c, and the episode's near-collision and conflict percentages. Returns
    (after_step's per-agent arrays, summary)."""
    rep = layer.after_step(states_after)
    n = len(ids)
    # (near-collision rate, conflict rate, penalty sum) from after_step's kernel pass
    rates = rep["_rates"] if n else (0.0, 0.0, 0.0)
    counters = layer.counters
    summary = {"agents_in_airspace": n, "near_collision_rate": rates[0], "conflict_rate": rates[1],
               "intervention_rate": _rate(diag.get("intervened")), "penalty_sum": rates[2],
               "min_separation": float(rep["min_separation"]), "filter_on": layer.filter_on,
               "safety_distance": layer.safety_distance, "conflict_range": layer.conflict_range,
               "near_collision_pct": counters.near_collision_pct, "conflict_pct": counters.conflict_pct}
    return rep, summary


class SafeParallelEnv(ParallelEnv):
    """PettingZoo ParallelEnv wrapper: filtered actions, optional penalty, metrics in ``infos[agent]["safety"]``
    (and, aggregated, in ``self.last_metrics``)."""

    def __init__(self, env: ParallelEnv, adapter: StateAdapter, layer: SafetyLayer):
        self.env = env
        self.adapter = adapter
        self.layer = layer
        self.metadata = getattr(env, "metadata", {})
        self.possible_agents = env.possible_agents
        self.render_mode = getattr(env, "render_mode", None)
        self.last_metrics: dict = {}

    @property
    def agents(self):
        return self.env.agents

    @property
    def unwrapped(self):
        return self.env.unwrapped

    def observation_space(self, agent):
        return self.env.observation_space(agent)

    def action_space(self, agent):
        return self.env.action_space(agent)

    def reset(self, seed=None, options=None):
        self.layer.new_episode()
        return self.env.reset(seed=seed, options=options)

    def step(self, actions):
        layer = self.layer
        layer.before_step()
        ids, states = self.adapter.agent_states(self.env)
        controls = self.adapter.actions_to_controls(self.env, ids, actions)
        safe, diag = layer.apply(states, controls)
        actions = self.adapter.controls_to_actions(self.env, ids, safe, actions)
        obs, rew, term, trunc, infos = self.env.step(actions)
        ids_after, states_after = self.adapter.agent_states(self.env)
        rep, summary = _report(layer, ids_after, states_after, diag)
        pos = {a: i for i, a in enumerate(ids_after)}
        before = {a: i for i, a in enumerate(ids)}
        rew = dict(rew)
        for a in rew:
            if a in pos:
                i = pos[a]
                rew[a] += float(rep["penalty"][i])
            info = infos.setdefault(a, {})
            info["safety"] = {
                "intervened": bool(diag["intervened"][before[a]]) if a in before else False,
                "near_collision": bool(rep["near_collision"][pos[a]]) if a in pos else False,
                "conflict": bool(rep["conflict"][pos[a]]) if a in pos else False,
                "penalty": float(rep["penalty"][pos[a]]) if a in pos else 0.0,
                "filter_on": layer.filter_on, "safety_distance": layer.safety_distance,
            }
        self.last_metrics = summary
        return obs, rew, term, trunc, infos

    def close(self):
        self.env.close()


def _rate(x) -> float:
    """Share of True in a boolean array (the same float as np.mean), 0 for None or empty."""
    if x is None or not len(x):
        return 0.0
    return np.count_nonzero(x) / len(x) if x.dtype == np.bool_ else float(np.mean(x))


class SafeJointEnv(gym.Wrapper):
    """Gymnasium wrapper for envs with a joint multi-agent action; the penalty sum is added to the scalar
    reward. Per-agent arrays in ``info["safety"]``: ``penalty`` for the agents in the airspace after the step,
    named by ``penalty_ids``, and ``intervened`` for those before it, named by ``intervened_ids`` (the adapter's
    ids: agents leave the airspace during the step, so the two can differ)."""

    def __init__(self, env: gym.Env, adapter: StateAdapter, layer: SafetyLayer):
        super().__init__(env)
        self.adapter = adapter
        self.layer = layer

    def reset(self, *, seed=None, options=None):
        self.layer.new_episode()
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        layer = self.layer
        layer.before_step()
        ids, states = self.adapter.agent_states(self.env)
        controls = self.adapter.actions_to_controls(self.env, ids, action)
        safe, diag = layer.apply(states, controls)
        action = self.adapter.controls_to_actions(self.env, ids, safe, action)
        obs, rew, term, trunc, info = self.env.step(action)
        ids_after, states_after = self.adapter.agent_states(self.env)
        rep, summary = _report(layer, ids_after, states_after, diag)
        info = dict(info)
        info["safety"] = summary
        summary["penalty"] = rep["penalty"]
        summary["penalty_ids"] = ids_after
        summary["intervened"] = diag["intervened"]
        summary["intervened_ids"] = ids
        return obs, float(rew) + summary["penalty_sum"], term, trunc, info


class SafeVectorEnv(gym.vector.VectorWrapper):
    """Gymnasium VectorEnv wrapper over sub-envs with joint multi-agent actions (e.g.
    :func:`make_navigation_vector_env`). Sub-env states come from ``call("safety_states")`` (works for sync and
    async vector envs); one :class:`SafetyLayer` per sub-env so curricula and metrics stay separate."""

    def __init__(self, env: gym.vector.VectorEnv, adapter: StateAdapter, layer_factory: Callable[[], SafetyLayer]):
        super().__init__(env)
        self.adapter = adapter
        self.layers = [layer_factory() for _ in range(env.num_envs)]
        self._ended = np.zeros(env.num_envs, dtype=bool)     # sub-envs whose episode ended at the last step

    def reset(self, *, seed=None, options=None):
        for layer in self.layers:
            layer.new_episode()
        self._ended[:] = False
        return self.env.reset(seed=seed, options=options)

    def _states(self):
        return self.adapter.vector_agent_states(self.env)

    def step(self, actions):
        actions = np.array(actions, dtype=np.float32, copy=True)
        for e in np.flatnonzero(self._ended):    # autoreset: a new episode in that sub-env
            self.layers[e].new_episode()
        diags = []
        for e, (layer, (ids, states)) in enumerate(zip(self.layers, self._states())):
            layer.before_step()
            controls = self.adapter.actions_to_controls(None, ids, actions[e])
            safe, diag = layer.apply(states, controls)
            actions[e] = self.adapter.controls_to_actions(None, ids, safe, actions[e])
            diags.append(diag)
        obs, rew, term, trunc, info = self.env.step(actions)
        after = self._states()
        rew = np.array(rew, float, copy=True)
        summaries = []
        for e, (layer, (ids, states)) in enumerate(zip(self.layers, after)):
            rep, summary = _report(layer, ids, states, diags[e])
            rew[e] += float(np.sum(rep["penalty"]))
            summaries.append(summary)
        info = dict(info)
        info["safety"] = {k: np.array([s[k] for s in summaries]) for k in summaries[0]}
        self._ended = np.asarray(term, bool) | np.asarray(trunc, bool)
        return obs, rew, term, trunc, info
