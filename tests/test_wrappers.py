"""Trainer wrappers: PettingZoo parallel API test, Gymnasium env checker, vector env, hooks."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pettingzoo.test import parallel_api_test

from clients.sim.baselines import make_filter
from clients.sim.wrappers import (NavigationAdapter, NavigationEnv, NavigationParallelEnv, SafeJointEnv,
                                  SafeParallelEnv, SafetyLayer, SafeVectorEnv, make_navigation_vector_env)


def _layer(model, name="ecbf", **kw):
    return SafetyLayer(model, filter=make_filter(name, model), **kw)


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
    env = NavigationParallelEnv("random", seed=0)
    model = env.model
    built = []

    def factory(d):
        built.append(d)
        return make_filter("braking", model, safety_distance=d)

    layer = SafetyLayer(model, filter=factory(0.0), safety_distance=0.0,
                        curriculum=lambda step: (step >= 5, min(0.5, 0.1 * (step // 5))), filter_factory=factory,
                        conflict_range_fn=lambda d: 2 * d)
    safe = SafeParallelEnv(env, NavigationAdapter(model), layer)
    safe.reset(seed=0)
    for t in range(12):
        acts = {a: np.zeros(2, np.float32) for a in safe.agents}
        safe.step(acts)
        if t < 5:
            assert safe.last_metrics["filter_on"] is False
    assert safe.last_metrics["filter_on"] is True
    assert layer.safety_distance == pytest.approx(0.2) and layer.conflict_range == pytest.approx(0.4)
    assert built == [0.0, 0.1, 0.2]


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
