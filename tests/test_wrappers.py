"""Trainer wrappers: PettingZoo parallel API test, Gymnasium env checker, vector env, hooks."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import parallel_api_test

from clients.sim.baselines import make_filter
from clients.sim.scenarios import AIR_TAXI_CONFLICT_RANGE, QUAD_CONFLICT_RANGE
from clients.sim.wrappers import (NavigationAdapter, NavigationEnv, NavigationParallelEnv, SafeJointEnv,
                                  SafeParallelEnv, SafetyLayer, SafeVectorEnv, make_navigation_vector_env)
from tests.helpers import all_pairs_distances


def _layer(model, name="ecbf", **kw):
    rc = QUAD_CONFLICT_RANGE if model.name == "quadrotor" else AIR_TAXI_CONFLICT_RANGE
    return SafetyLayer(model, filter=make_filter(name, model), conflict_range=rc, **kw)


@pytest.mark.parametrize("scenario", ["random", "merge"])
def test_builtin_parallel_env_passes_api_test(scenario):
    parallel_api_test(NavigationParallelEnv(scenario, seed=0), num_cycles=100)


@pytest.mark.parametrize("scenario", ["two_lines", "intersection"])
def test_safe_parallel_env_passes_api_test(scenario):
    env = NavigationParallelEnv(scenario, seed=1)
    parallel_api_test(SafeParallelEnv(env, NavigationAdapter(env.model), _layer(env.model)), num_cycles=100)


def test_gymnasium_env_checker():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded observation Box and no registered spec are intended
        env = NavigationEnv("random", seed=0)
        check_env(env, skip_render_check=True)
        check_env(SafeJointEnv(NavigationEnv("random", seed=0), NavigationAdapter(env.model), _layer(env.model)),
                  skip_render_check=True)


def test_wrapper_filters_actions_and_reports():
    env = NavigationParallelEnv("two_lines", seed=3)
    safe = SafeParallelEnv(env, NavigationAdapter(env.model), _layer(env.model))
    safe.reset(seed=3)
    # everyone flies straight at full thrust towards the other line: the filter must step in
    seen_intervention = False
    for _ in range(40):
        acts = {}
        for a in safe.agents:
            i = env.index(a)
            y = env.core.sim.states[i, 1]
            acts[a] = np.array([0.0, -np.sign(y)], np.float32)
        _, _, _, _, infos = safe.step(acts)
        seen_intervention |= any(info["safety"]["intervened"] for info in infos.values())
        assert set(safe.last_metrics) >= {"near_collision_rate", "conflict_rate", "intervention_rate"}
    assert seen_intervention


def test_curriculum_hook_switches_filter_and_distance():
    from clients.training import CurriculumSchedule

    env = NavigationParallelEnv("random", seed=0)
    model = env.model
    built = []

    def factory(d):
        built.append(d)
        return make_filter("braking", model, safety_distance=d)

    schedule = CurriculumSchedule(total_steps=20, target_distance=0.5, conflict_range=lambda d: 2 * d,
                                  filter_start=0.25, n_stages=3)
    layer = SafetyLayer(model, filter=factory(0.5), safety_distance=0.5, conflict_range=1.0, curriculum=schedule,
                        filter_factory=factory)
    safe = SafeParallelEnv(env, NavigationAdapter(model), layer)
    safe.reset(seed=0)
    seen = []
    for t in range(20):
        safe.step({a: np.zeros(2, np.float32) for a in safe.agents})
        seen.append((safe.last_metrics["filter_on"], round(safe.last_metrics["safety_distance"], 6)))
    assert seen[0][0] is False and seen[4][0] is False and seen[5][0] is True
    assert [d for on, d in seen if on][0] == pytest.approx(0.5 / 3, abs=1e-6)
    assert seen[-1] == (True, 0.5)
    assert layer.conflict_range == pytest.approx(1.0)
    assert built == [0.5, 0.5 / 3, 1.0 / 3, 0.5]


def test_penalty_added_to_rewards():
    """Three agents converging on one point: with w > 0 the wrapper's rewards are lower by the penalty."""
    from clients.training import agent_positions_velocities, conflict_penalty

    def run(weight):
        env = NavigationParallelEnv("random", seed=0)
        core = env.core
        x0 = np.array([[-0.6, 0.0, 0.3, 0.0], [0.6, 0.0, -0.3, 0.0], [0.0, 0.6, 0.0, -0.3], [1.8, 1.8, 0, 0]])
        sc = core.sim.scenario.with_(initial_states=x0)
        core.sim.scenario = sc
        layer = SafetyLayer(env.model, filter=None, safety_distance=0.5, conflict_range=1.0, penalty_weight=weight)
        safe = SafeParallelEnv(env, NavigationAdapter(env.model), layer)
        safe.reset(seed=0)
        core.sim.scenario = sc
        core.sim.reset()
        core._prev_dist = core._dist()
        before = core.sim.states.copy()
        _, rew, _, _, infos = safe.step({a: np.zeros(2, np.float32) for a in safe.agents})
        return rew, infos, core.sim.states.copy(), before

    r0, _, states, _ = run(0.0)
    r1, infos, states1, _ = run(2.0)
    np.testing.assert_allclose(states, states1)
    pos, vel = agent_positions_velocities("quadrotor", states)
    expect = conflict_penalty(pos, vel, 0.5, 1.0, 2.0)
    assert expect[:3].min() < 0 and expect[3] == 0
    for i, a in enumerate(sorted(r0)):
        assert r1[a] - r0[a] == pytest.approx(expect[i])
        assert infos[a]["safety"]["penalty"] == pytest.approx(expect[i])


def test_vector_env_wrapper():
    venv = make_navigation_vector_env(2, "random", seed=0)
    model = venv.envs[0].model
    safe = SafeVectorEnv(venv, NavigationAdapter(model), lambda: _layer(model))
    obs, _ = safe.reset(seed=0)
    assert obs.shape[:2] == (2, 4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        obs, rew, term, trunc, info = safe.step(rng.uniform(-1, 1, size=(2, 4, 2)).astype(np.float32))
    assert rew.shape == (2,)
    assert info["safety"]["intervention_rate"].shape == (2,)
    safe.close()


def test_adapter_kernels_match_numpy():
    """The joint-action fast paths of NavigationAdapter give exactly the numpy formulas (float32 and float64
    actions, NaN passing through), and fall back to numpy for negative or out-of-range ids."""
    from clients.sim.simulator import intervened_flags as _intervened
    from reach.models import get_model

    model = get_model("air_taxi")
    ad = NavigationAdapter(model)
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        acts = rng.uniform(-1.5, 1.5, size=(9, 2)).astype(dtype)
        acts[4, 1] = np.nan
        ids = np.array([0, 2, 3, 4, 8])
        got = ad.actions_to_controls(None, ids, acts)
        want = ad.center + ad.half * np.clip(np.asarray(acts, float)[ids], -1.0, 1.0)
        np.testing.assert_array_equal(got, want)
        ctrl = rng.uniform(-0.2, 2.5, size=(5, 2))
        ctrl[1, 0] = np.nan
        got = ad.controls_to_actions(None, ids, ctrl, acts)
        want = np.array(acts, dtype=np.float32, copy=True)
        want[ids] = np.clip((ctrl - ad.center) / ad.half, -1.0, 1.0).astype(np.float32)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.float32
    neg = np.array([-1, 0])
    np.testing.assert_array_equal(ad.actions_to_controls(None, neg, acts),
                                  ad.center + ad.half * np.clip(np.asarray(acts, float)[neg], -1.0, 1.0))
    with pytest.raises(IndexError):
        ad.actions_to_controls(None, np.array([0, 9]), acts)
    with pytest.raises(IndexError):
        ad.controls_to_actions(None, np.array([0, 9]), np.zeros((2, 2)), acts)
    # intervened: the numpy definition, and NaN states still raise
    states = np.column_stack([rng.uniform(0, 100, (6, 2)), rng.uniform(-3, 3, 6), rng.uniform(30, 91, 6)])
    states[0, 3] = model.parameters.get("v_max", 90.03)  # at a speed bound: a state-dependent box
    ctrl = rng.uniform(-0.1, 2.0, size=(6, 2))
    lo, hi = model.agent_control_bounds(states)
    safe = np.clip(ctrl, lo, hi)
    safe[[1, 3], 0] += np.array([1e-9, 0.05])
    want = np.any(np.abs(safe - np.clip(ctrl, lo, hi)) > 1e-6 * np.maximum(hi - lo, 1e-12), axis=1)
    np.testing.assert_array_equal(_intervened(model, states, safe, ctrl), want)
    assert want.tolist() == [False, False, False, True, False, False]
    # a proposal outside the box that the filter only clipped is no intervention; a change inside it is
    wide = ctrl.copy()
    wide[:, 0] = hi[:, 0] + 1.0
    np.testing.assert_array_equal(_intervened(model, states, np.clip(wide, lo, hi), wide), np.zeros(6, bool))
    moved = np.clip(wide, lo, hi)
    moved[5, 0] -= 0.01 * (hi[5, 0] - lo[5, 0])
    assert _intervened(model, states, moved, wide).tolist() == [False] * 5 + [True]
    states[2, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        _intervened(model, states, safe, ctrl)


def test_reset_without_a_seed_starts_a_new_episode():
    """reset() without a seed draws the next episode (Gymnasium's convention), reproducibly after a seeded reset;
    reset(seed=s) replays episode s."""
    env = NavigationEnv("random")
    first, _ = env.reset(seed=7)
    second, _ = env.reset()
    assert not np.array_equal(first, second)
    again, _ = env.reset(seed=7)
    assert np.array_equal(first, again)
    assert np.array_equal(env.reset()[0], second)
    par = NavigationParallelEnv("random")
    a, _ = par.reset(seed=3)
    b, _ = par.reset()
    assert not np.array_equal(a["agent_0"], b["agent_0"])


def test_safety_counters_start_afresh_with_each_episode():
    """info["safety"]'s near-collision / conflict percentages are the episode's: a reset (and a vector env's
    autoreset) starts them again."""
    env = NavigationEnv("two_lines")
    model = env.model
    wrapped = SafeJointEnv(env, NavigationAdapter(model),
                           SafetyLayer(model, filter=make_filter("none", model), conflict_range=QUAD_CONFLICT_RANGE))
    wrapped.reset(seed=0)
    for _ in range(30):
        wrapped.step(np.zeros(env.action_space.shape, np.float32))
    assert wrapped.layer.counters.samples == 30 * 8
    wrapped.reset(seed=1)
    wrapped.step(np.zeros(env.action_space.shape, np.float32))
    assert wrapped.layer.counters.samples == 8
    vec = SafeVectorEnv(make_navigation_vector_env(2, "random", seed=0, max_time=0.5), NavigationAdapter(model),
                        lambda: SafetyLayer(model, filter=make_filter("none", model),
                                            conflict_range=QUAD_CONFLICT_RANGE))
    vec.reset(seed=0)
    acts = np.zeros((2, 4, 2), np.float32)
    ended = False
    for _ in range(8):
        *_, term, trunc, _ = vec.step(acts)
        if ended:      # the step after an episode's end is the first step of the next one
            assert all(layer.counters.samples <= 4 for layer in vec.layers)
            break
        ended = bool(np.any(term | trunc))
    assert ended


def test_joint_env_names_its_per_agent_arrays_and_clipping_is_no_intervention():
    """SafeJointEnv's per-agent penalty / intervened arrays come with the ids they belong to (agents leave at
    their goal, so the airspace before and after a step differ), a safety-blind layer that only clips full
    thrust to the state-dependent box reports no intervention, and the minimum separation is the all-pairs one
    (also when no two agents are within R_c)."""
    env = NavigationEnv("two_lines", seed=0)
    model = env.model
    wrapped = SafeJointEnv(env, NavigationAdapter(model), _layer(model, "none", penalty_weight=1.0))
    wrapped.reset(seed=0)
    seen_clip = seen_leave = seen_apart = False
    for _ in range(400):
        idx, states = env.safety_states()
        # full thrust towards the waypoints: beyond the box at the speed limit
        full = np.zeros(env.action_space.shape, np.float32)
        to_go = env.core.sim.current_targets(idx)[0] - states[:, :2]
        far = np.hypot(*to_go.T)[:, None] > 1.0      # near a waypoint: the nominal tracker, so that agents arrive
        full[idx] = np.where(far, np.sign(to_go), env.core.control_to_action(env.core.sim.nominal_controls(idx)))
        lo, hi = model.agent_control_bounds(states)
        proposed = NavigationAdapter(model).actions_to_controls(env, idx, full)
        seen_clip |= bool(np.any((proposed > hi + 1e-9) | (proposed < lo - 1e-9)))
        *_, term, trunc, info = wrapped.step(full)
        s = info["safety"]
        np.testing.assert_array_equal(s["intervened_ids"], idx)
        assert s["intervened"].shape == (len(idx),) and not s["intervened"].any()
        assert s["intervention_rate"] == 0.0
        assert s["penalty"].shape == (len(s["penalty_ids"]),)
        np.testing.assert_array_equal(s["penalty_ids"], env.safety_states()[0])
        seen_leave |= len(s["penalty_ids"]) < len(idx)
        pos = env.safety_states()[1][:, :2]       # the minimum separation is the all-pairs one
        gaps = all_pairs_distances(pos)
        assert s["min_separation"] == (gaps.min() if len(pos) > 1 else np.inf)
        seen_apart |= len(pos) > 1 and gaps.min() > s["conflict_range"]
        if term or trunc:
            break
    assert seen_clip and seen_leave and seen_apart


class _RecordingFilter:
    """A filter that records what it was given (the layered filter's numba kernels need writeable C arrays)."""

    name = "recording"

    def __init__(self, model):
        self.inner = make_filter("braking", model)
        self.seen = []

    def filter(self, states, nominal):
        self.seen.append((states.flags.writeable, states.flags.c_contiguous, states.dtype))
        return self.inner.filter(states, nominal)


@pytest.mark.parametrize("model_name", ["quadrotor", "air_taxi"])
def test_read_only_and_strided_states_give_the_same_answer(model_name):
    """intervened_flags and SafetyLayer.apply take read-only (np.frombuffer, JAX), Fortran-ordered and strided
    states and controls and answer exactly as for C arrays; the filter gets a writeable C float64 array."""
    from clients.sim.simulator import intervened_flags as _intervened
    from reach.models import get_model

    model = get_model(model_name)
    rng = np.random.default_rng(1)
    if model_name == "quadrotor":
        x = np.column_stack([rng.uniform(0, 1.5, (7, 2)), rng.uniform(-1, 1, (7, 2))])
    else:
        x = np.column_stack([rng.uniform(0, 1500, (7, 2)), rng.uniform(-3, 3, 7), rng.uniform(31, 90, 7)])
    u = rng.uniform(-1, 1, (7, 2))
    lo, hi = model.agent_control_bounds(x)
    safe = np.clip(u, lo, hi)
    safe[[2, 5], 0] = lo[[2, 5], 0]

    def read_only(a):
        return np.frombuffer(a.tobytes()).reshape(a.shape)

    layouts = {"read-only": read_only, "fortran": np.asfortranarray, "strided": lambda a: np.repeat(a, 2, 0)[::2]}
    want = _intervened(model, x, safe, u)
    assert want.any()
    for name in ("none", "ecbf", "braking"):
        layer = _layer(model, name)
        want_safe, want_diag = layer.apply(x, u)
        for layout, f in layouts.items():
            np.testing.assert_array_equal(_intervened(model, f(x), f(safe), f(u)), want, err_msg=layout)
            got_safe, got_diag = layer.apply(f(x), f(u))
            np.testing.assert_array_equal(got_safe, want_safe, err_msg=f"{name} {layout}")
            np.testing.assert_array_equal(got_diag["intervened"], want_diag["intervened"], err_msg=f"{name} {layout}")
    recording = _RecordingFilter(model)
    layer = SafetyLayer(model, filter=recording, conflict_range=2.0 * model.safety_distance)
    for f in layouts.values():
        layer.apply(f(x), u)
    assert recording.seen == [(True, True, np.float64)] * 3
    with pytest.raises(ValueError, match=r"safe controls must have shape \(7, 2\), got \(6, 2\)"):
        _intervened(model, x, safe[:6], u)     # the kernel does not check bounds: a short row count is an error
    with pytest.raises(ValueError, match="real numbers"):
        _intervened(model, x.astype(complex), safe, u)


def test_navigation_env_rejects_actions_of_another_shape_or_nan():
    """NavigationEnv (and SafeJointEnv around it) name the expected shape (n_agents, m) and the one they got;
    NaN is an error (it would reach the integration); values beyond [-1, 1] are clipped."""
    env = NavigationEnv("random", seed=0)
    wrapped = SafeJointEnv(NavigationEnv("random", seed=0), NavigationAdapter(env.model), _layer(env.model))
    for e in (env, wrapped):
        e.reset(seed=0)
        for bad, got in ((np.zeros((3, 2)), r"\(3, 2\)"), (np.zeros((4, 3)), r"\(4, 3\)"), (0.3, r"\(\)")):
            with pytest.raises(ValueError, match=rf"shape \(n_agents, m\) = \(4, 2\), got {got}"):
                e.step(bad)
        nan = np.zeros((4, 2), np.float32)
        nan[2, 1] = np.nan
        with pytest.raises(ValueError, match=r"NaN for agents \[2\]"):
            e.step(nan)
        with pytest.raises(ValueError, match="real numbers"):
            e.step(np.zeros((4, 2), complex))
        e.step(np.full((4, 2), 5.0, np.float32))


def test_parallel_env_and_its_wrapper_reject_bad_actions_alike():
    """A scalar action for a 2-D action space, an array instead of the dict, unknown agent names and NaN fail with
    the same clear error in the bare env and in SafeParallelEnv; agents missing from the dict get action 0."""
    env = NavigationParallelEnv("two_lines", seed=0)
    wrapped = SafeParallelEnv(NavigationParallelEnv("two_lines", seed=0), NavigationAdapter(env.model),
                              _layer(env.model))
    for e in (env, wrapped):
        e.reset(seed=0)
        with pytest.raises(ValueError, match=r"action of agent_0 must have shape \(2,\).*got \(\)"):
            e.step({a: 0.3 for a in e.agents})
        with pytest.raises(TypeError, match="must be a dict"):
            e.step(np.zeros((8, 2), np.float32))
        with pytest.raises(ValueError, match=r"unknown agents \['agnet_1', 7\]"):
            e.step({"agent_0": np.zeros(2, np.float32), "agnet_1": np.zeros(2, np.float32), 7: np.zeros(2)})
        with pytest.raises(ValueError, match=r"NaN for agents \['agent_3'\]"):
            e.step({"agent_3": np.array([np.nan, 0.0], np.float32)})
        assert e.unwrapped.core.sim.t == 0.0      # nothing stepped
    # missing agents: the centre of the box, as an explicit zero action
    ref = NavigationParallelEnv("two_lines", seed=0)
    ref.reset(seed=0)
    ref.step({a: np.zeros(2, np.float32) for a in ref.agents})
    env.step({"agent_0": np.zeros(2, np.float32)})
    np.testing.assert_array_equal(env.core.sim.states, ref.core.sim.states)


def test_navigation_env_arguments():
    """An unknown scenario is the UnknownScenarioError of make_scenario; max_time must be finite and > 0."""
    from clients.sim.scenarios import UnknownScenarioError

    for cls in (NavigationEnv, NavigationParallelEnv):
        with pytest.raises(UnknownScenarioError, match="unknown scenario 'nope'; known: corridor"):
            cls("nope")
        for bad in (np.nan, np.inf, 0.0, -1.0):
            with pytest.raises(ValueError, match="max_time must be finite and > 0"):
                cls("random", max_time=bad)
    env = NavigationEnv("random", max_time=0.5)
    env.reset(seed=0)
    truncated = [env.step(np.zeros((4, 2), np.float32))[3] for _ in range(5)]
    assert truncated[-1] and not truncated[0]
