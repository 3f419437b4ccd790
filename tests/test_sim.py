"""Simulator, scenarios, baselines and metrics (fast)."""
from __future__ import annotations

import numpy as np
import pytest

from clients.sim.baselines import BrakingCBFFilter, ECBFFilter, make_filter, solve_box_qp2
from clients.sim.metrics import aggregate, episode_metrics, markdown_table
from clients.sim.nominal import QuadrotorTracker, waypoint_reached
from clients.sim.scenarios import UnknownScenarioError, make_scenario
from clients.sim.simulator import EpisodeResult, Simulator, nearest_and_count
from reach.models import get_model

QUAD = get_model("quadrotor")
TAXI = get_model("air_taxi")


def _pair_scenario(model_name="quadrotor", gap=3.0, speed=0.5):
    """Two agents head-on along x, goals swapped (a hand-made scenario)."""
    sc = make_scenario("random", seed=0) if model_name == "quadrotor" else make_scenario("merge", seed=0)
    if model_name == "quadrotor":
        x0 = np.array([[-gap / 2, 0.0, 0.0, 0.0], [gap / 2, 0.0, 0.0, 0.0]])
        wps = np.array([[[gap / 2 + 0.5, 0.0]], [[-gap / 2 - 0.5, 0.0]]])
        return sc.with_(initial_states=x0, waypoints=wps, waypoint_heading=np.full((2, 1), np.nan),
                        waypoint_speed=np.zeros((2, 1)), departure_times=np.zeros(2), max_time=40.0)
    x0 = np.array([[-gap / 2, 0.0, 0.0, speed], [gap / 2, 0.0, np.pi, speed]])
    wps = np.array([[[gap, 0.0]], [[-gap, 0.0]]])
    return sc.with_(initial_states=x0, waypoints=wps, waypoint_heading=np.array([[0.0], [np.pi]]),
                    waypoint_speed=np.full((2, 1), speed), departure_times=np.zeros(2), max_time=600.0)


class Const:
    """A controller returning fixed controls (for integration checks)."""

    def __init__(self, u):
        self.u = np.asarray(u, float)

    def __call__(self, model, states, target, speed, heading=None, ids=None):
        return np.broadcast_to(self.u, (states.shape[0], self.u.shape[-1])).copy()


def test_quadrotor_integration_matches_closed_form():
    sc = _pair_scenario("quadrotor").with_(initial_states=np.array([[0, 0, 0.1, -0.2], [5, 5, 0, 0]], float))
    a = np.array([0.3, 0.2])
    sim = Simulator(sc, model=QUAD, controller=Const(a))
    steps = 20  # 2 s: speeds stay below the 1 m/s limit
    for _ in range(steps):
        sim.step()
    t = steps * QUAD.decision_period
    expect = np.array([0.1 * t + 0.5 * a[0] * t ** 2, -0.2 * t + 0.5 * a[1] * t ** 2, 0.1 + a[0] * t, -0.2 + a[1] * t])
    np.testing.assert_allclose(sim.states[0], expect, atol=1e-9)


def test_quadrotor_speed_limit_enforced():
    sc = _pair_scenario("quadrotor").with_(initial_states=np.array([[0, 0, 0.9, 0], [50, 50, 0, 0]], float))
    sim = Simulator(sc, model=QUAD, controller=Const([0.5, 0.0]))
    for _ in range(30):
        sim.step()
    assert sim.states[0, 2] == pytest.approx(QUAD.parameters["v_max"], abs=1e-9)


def test_air_taxi_turn_matches_closed_form():
    sc = _pair_scenario("air_taxi", gap=40000.0)
    w, v = 0.05, 50.0
    sc = sc.with_(initial_states=np.array([[0.0, 0.0, 0.0, v], [40000.0, 0.0, np.pi, v]]))
    sim = Simulator(sc, model=TAXI, controller=Const([w, 0.0]))
    for _ in range(30):
        sim.step()
    t = 30 * TAXI.decision_period
    expect = np.array([v / w * np.sin(w * t), v / w * (1 - np.cos(w * t))])
    np.testing.assert_allclose(sim.states[0, :2], expect, atol=1e-6)
    assert sim.states[0, 2] == pytest.approx(w * t)


def test_air_taxi_accelerating_turn_vs_fine_reference():
    """Turn while accelerating: compare against a fine explicit-Euler reference (error O(h))."""
    x0 = np.array([[0.0, 0.0, 0.3, 40.0]])
    u = np.array([[0.08, 1.5]])
    sim_state = TAXI.step_agents(x0, u, 10.0)
    h = 1e-4
    x = x0[0].copy()
    for _ in range(int(round(10.0 / h))):
        x = x + h * np.array([x[3] * np.cos(x[2]), x[3] * np.sin(x[2]), u[0, 0], u[0, 1]])
    np.testing.assert_allclose(sim_state[0], x, rtol=1e-4, atol=0.1)


def test_nearest_and_count_hand_made():
    pos = np.array([[0.0, 0.0], [0.6, 0.0], [0.0, 0.9], [5.0, 5.0]])
    near, idx, count = nearest_and_count(pos, 1.0)
    np.testing.assert_allclose(near[:3], [0.6, 0.6, 0.9])
    assert list(idx[:3]) == [1, 0, 0]
    assert list(count) == [2, 1, 1, 0]


def test_separation_checked_at_substeps():
    """Two safety-blind quadrotors fly through each other: counted as near-collisions, min separation ~ 0."""
    sc = _pair_scenario("quadrotor", gap=3.0)
    r = Simulator(sc, model=QUAD, controller=QuadrotorTracker(keep_right=0.0)).run()
    assert r.near_collision_steps > 0
    assert r.min_separation < 0.05
    assert r.min_separation_pair in [(0, 1), (1, 0)]
    m = episode_metrics(r)
    assert m["near_collision_pct"] == pytest.approx(100 * r.near_collision_steps / r.agent_steps)
    assert m["goal_reach_pct"] == 100.0


def test_metrics_on_hand_made_episode():
    r = EpisodeResult(scenario="x", model="quadrotor", filter="none", seed=0, n_agents=4, safety_distance=0.5,
                      conflict_range=1.0, steps=10, agent_steps=40, near_collision_steps=2, conflict_steps=4,
                      intervention_steps=10, separation_sum=60.0, separation_count=40, min_separation=0.4,
                      goal_reached=np.array([True, True, True, False]),
                      travel_time=np.array([10.0, 12.0, 14.0, np.nan]), waypoints_reached=np.array([2, 2, 2, 1]),
                      filter_time=0.01, env_time=0.03)
    m = episode_metrics(r)
    assert m["near_collision_pct"] == pytest.approx(5.0)
    assert m["conflict_pct"] == pytest.approx(10.0)
    assert m["intervention_pct"] == pytest.approx(25.0)
    assert m["travel_time_s"] == pytest.approx(12.0)
    assert m["goal_reach_pct"] == pytest.approx(75.0)
    assert m["waypoints"] == pytest.approx(1.75)
    assert m["mean_separation_m"] == pytest.approx(1.5)
    assert m["step_time_ms"] == pytest.approx(4.0)
    r2 = EpisodeResult(**{**r.__dict__, "near_collision_steps": 0, "min_separation": 0.7,
                          "goal_reached": np.ones(4, bool)})
    row = aggregate([r, r2])
    assert row.mean["near_collision_pct"] == pytest.approx(2.5)
    assert row.std["near_collision_pct"] == pytest.approx(2.5)
    assert row.pooled_near_collision_pct == pytest.approx(2.5)
    assert row.min_separation_m == pytest.approx(0.4)
    assert row.episodes_with_near_collision == 1 and row.episodes_not_finished == 1
    assert "| x | none | 4 | 2 |" in markdown_table([row])


def test_waypoint_thresholds_table_one():
    s = np.array([[0.1, 0.0, 0.5, 0.0], [0.1, 0.0, 0.0, 0.5], [0.3, 0.0, 0.5, 0.0], [0.1, 0.0, 0.75, 0.0]])
    hit = waypoint_reached("quadrotor", s, np.zeros((4, 2)), np.zeros(4), np.full(4, 0.5))
    assert list(hit) == [True, False, False, False]  # ok / heading 90 deg off / 0.3 m away / speed off by 0.25
    s = np.array([[250.0, 0.0, 0.5, 60.0], [250.0, 0.0, 1.0, 60.0]])
    hit = waypoint_reached("air_taxi", s, np.zeros((2, 2)), np.zeros(2), np.full(2, 56.6))
    assert list(hit) == [True, False]


@pytest.mark.parametrize("name", ["random", "corridor", "two_lines", "dense", "merge", "intersection"])
def test_scenarios_seeded_and_valid(name):
    kw = {"n_agents": 64} if name == "dense" else {}
    a, b, c = (make_scenario(name, seed=s, **kw) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.initial_states, b.initial_states)
    np.testing.assert_array_equal(a.waypoints, b.waypoints)
    assert not (np.array_equal(a.initial_states, c.initial_states) and np.array_equal(a.waypoints, c.waypoints)
                and np.array_equal(a.departure_times, c.departure_times))
    model = get_model(a.model)
    assert a.initial_states.shape == (a.n_agents, model.n_agent_states)
    p = a.initial_states[:, :2]
    same_time = np.abs(a.departure_times[:, None] - a.departure_times[None, :]) < 1e-9
    d = np.hypot(p[:, None, 0] - p[None, :, 0], p[:, None, 1] - p[None, :, 1])
    d[~same_time | np.eye(a.n_agents, dtype=bool)] = np.inf
    assert d.min() >= a.safety_distance  # nobody starts in violation


def test_scenario_shapes_match_the_paper():
    assert make_scenario("random").n_agents == 4 and make_scenario("random").n_waypoints == 2
    cor = make_scenario("corridor", seed=2)
    assert cor.n_agents == 6 and cor.n_waypoints == 3
    assert np.allclose(cor.waypoints[:, 0], cor.waypoints[0, 0]) and np.allclose(cor.waypoints[:, 1], cor.waypoints[0, 1])
    tl = make_scenario("two_lines", seed=1)
    assert tl.n_agents == 8 and tl.params["world"] == 6.0
    ys, gy = tl.initial_states[:, 1], tl.waypoints[:, -1, 1]
    assert set(np.round(ys, 6)) == {-2.5, 2.5} and np.all(np.sign(ys) == -np.sign(gy))
    mg = make_scenario("merge", seed=1)
    assert mg.n_agents == 8 and mg.n_waypoints == 5 and mg.departure_times.max() <= 60.0
    assert mg.safety_distance == pytest.approx(457.2)
    it = make_scenario("intersection", seed=1)
    assert it.n_agents == 16 and it.n_waypoints == 6
    with pytest.raises(UnknownScenarioError, match="known"):
        make_scenario("nope")


def test_intersection_departure_schedule():
    """The paper's schedule by default (one departure per corridor every 90 s +-15 s, corridor pairs meeting at the
    crossing 22 s apart); the previous dense schedule (20 s, +-3 s, random corridor offset) stays available."""
    for seed in range(5):
        it = make_scenario("intersection", seed=seed)
        first, second = it.departure_times[:8], it.departure_times[8:]
        assert np.all(np.abs(np.diff(first) - 90.0) <= 30.0) and np.all(np.abs(np.diff(second) - 90.0) <= 30.0)
        # equal distances to the crossing: the departure offset is the arrival offset (-22 s +- 2 x 15 s)
        assert np.all(np.abs(second - first + 22.0) <= 30.0)
        assert it.departure_times.min() == 0.0
        # the dense variant reproduces the earlier default exactly (same draws)
        dense = make_scenario("intersection", seed=seed, interval=20.0, jitter=3.0, crossing_lead=None)
        rng = np.random.default_rng(seed)
        offset = rng.uniform(0.0, 20.0)
        old = np.concatenate([np.arange(8) * 20.0 + rng.uniform(-3.0, 3.0, size=8) + c * offset for c in range(2)])
        np.testing.assert_allclose(dense.departure_times, old - old.min())
        np.testing.assert_array_equal(dense.waypoints, it.waypoints)


def test_skip_missed_simulator_diagnostic():
    from clients.sim.forensics import SkipMissedSimulator

    sc = make_scenario("intersection", seed=0)
    sim = SkipMissedSimulator(sc, record=False)
    sim.controller._memory.aim(sc.initial_states[:, :2], sc.waypoints[:, 0], sc.waypoint_speed[:, 0],
                               sc.waypoint_heading[:, 0], np.arange(sc.n_agents), 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    mem = sim.controller._memory
    mem.runup[:] = False
    mem.runup[3] = True  # agent 3 "missed" its first waypoint: skipped, not flown again
    sim._update_waypoints()
    assert sim.wp_idx[3] == 1 and sim.skipped == 1 and not mem.runup[3] and not sim.removed[3]
    sim.wp_idx[5] = sc.n_waypoints - 1
    mem.runup[5] = True  # a missed goal ends the flight there, not reached
    sim._update_waypoints()
    assert sim.removed[5] and sim.missed_goals == 1 and np.isnan(sim.goal_time[5])
    assert sim.goal_reach_pct == pytest.approx(100.0 * 15 / 16)


def test_box_qp_exact():
    # one constraint z0 + z1 >= 1 from zref = 0: projection (0.5, 0.5)
    out, status = np.empty((1, 2)), np.empty(1, np.int64)
    G = np.array([[[1.0, 1.0], [0.0, 0.0]]])
    solve_box_qp2(np.zeros((1, 2)), G, np.array([[1.0, 0.0]]), np.zeros(1, np.int64), out, status)
    np.testing.assert_allclose(out[0], [0.5, 0.5])
    assert status[0] == 1
    # two constraints z0 >= 0.8 and z1 >= 0.9 -> vertex (0.8, 0.9)
    G = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    solve_box_qp2(np.zeros((1, 2)), G, np.array([[0.8, 0.9]]), np.zeros(1, np.int64), out, status)
    np.testing.assert_allclose(out[0], [0.8, 0.9])
    # conflicting: z0 >= 0.5 and -z0 >= 0.5 -> most critical (index 1) alone -> z0 = -0.5
    G = np.array([[[1.0, 0.0], [-1.0, 0.0]]])
    solve_box_qp2(np.zeros((1, 2)), G, np.array([[0.5, 0.5]]), np.ones(1, np.int64), out, status)
    np.testing.assert_allclose(out[0], [-0.5, 0.0], atol=1e-9)
    assert status[0] == 2
    # infeasible in the box: z0 >= 2 -> most-safe corner
    G = np.array([[[1.0, 0.0]]])
    solve_box_qp2(np.array([[0.2, 0.3]]), G, np.array([[2.0]]), np.zeros(1, np.int64), out, status)
    assert out[0, 0] == 1.0 and status[0] == 3


@pytest.mark.parametrize("cls", [ECBFFilter, BrakingCBFFilter])
def test_baselines_keep_a_head_on_pair_apart(cls):
    r = Simulator(_pair_scenario("quadrotor", gap=3.0), model=QUAD, filter=cls(QUAD),
                  controller=QuadrotorTracker(keep_right=0.0)).run()
    assert r.min_separation >= 0.95 * QUAD.safety_distance
    safe, info = cls(QUAD).filter(np.array([[0.0, 0, 0.5, 0], [0.8, 0, -0.5, 0]]), np.array([[0.5, 0], [-0.5, 0]]))
    assert safe[0, 0] < 0.5 and safe[1, 0] > -0.5  # both brake
    lo, hi = QUAD.agent_control_bounds(np.zeros((1, 4)))
    assert np.all(safe >= lo) and np.all(safe <= hi)


def test_air_taxi_baseline_respects_state_dependent_bounds():
    f = make_filter("ecbf", TAXI)
    states = np.array([[0.0, 0.0, 0.0, TAXI.parameters["v_max"]], [900.0, 0.0, np.pi, TAXI.parameters["v_min"]]])
    safe, _ = f.filter(states, np.array([[0.0, 2.0], [0.0, -1.0]]))
    lo, hi = TAXI.agent_control_bounds(states)
    assert np.all(safe >= lo - 1e-12) and np.all(safe <= hi + 1e-12)


def test_unknown_filter_named():
    with pytest.raises(KeyError, match="known"):
        make_filter("magic", QUAD)


def test_keep_right_rule_resolves_head_on_deadlock():
    """With a filter, two quadrotors meeting head-on deadlock without the keep-right rule and pass with it."""
    sc = _pair_scenario("quadrotor", gap=3.0)
    stuck = Simulator(sc, model=QUAD, filter=ECBFFilter(QUAD), controller=QuadrotorTracker(keep_right=0.0)).run()
    passed = Simulator(sc, model=QUAD, filter=ECBFFilter(QUAD)).run()
    assert not stuck.goal_reached.all()
    assert passed.goal_reached.all() and passed.min_separation >= 0.95 * QUAD.safety_distance


def test_missed_waypoint_run_up():
    """An agent that overshoots an intermediate waypoint too fast comes back for a second pass."""
    sc = _pair_scenario("quadrotor", gap=3.0)
    x0 = np.array([[-0.3, 0.0, 1.0, 0.0], [5.0, 5.0, 0.0, 0.0]])  # 1 m/s: too fast for the 0.5 +- 0.1 m/s window
    wps = np.array([[[0.0, 0.0], [0.0, 1.5]], [[5.0, 5.0], [5.0, 5.0]]])
    sc = sc.with_(initial_states=x0, waypoints=wps, waypoint_heading=np.array([[0.0, np.nan], [np.nan, np.nan]]),
                  waypoint_speed=np.array([[0.5, 0.0], [0.0, 0.0]]))
    sim = Simulator(sc, model=QUAD)
    passed_at = None
    while not sim.done:
        sim.step()
        if passed_at is None and sim.states[0, 0] > 0.3:
            passed_at = sim.t
    r = sim.finish()
    assert passed_at is not None  # it overshot first
    assert r.goal_reached[0] and r.waypoints_reached[0] == 2


def test_animation_gif(tmp_path):
    """The animated GIF of an episode has one frame per sampled moment (at most max_frames)."""
    from PIL import Image

    from clients.sim.plots import save_animation

    r = Simulator(_pair_scenario("quadrotor", gap=3.0), model=QUAD, record=True).run()
    path = save_animation(r, tmp_path / "pair.gif", max_frames=10)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 10


def test_simulate_refuses_an_out_below_a_file_before_running(tmp_path, capsys, monkeypatch):
    """`reach simulate --out afile/sub` (afile a regular file): one line, exit 2, before any episode runs (it used to
    raise NotADirectoryError after them), and nothing created; a new nested --out below a directory is fine."""
    import argparse

    import clients.sim.cli as sim_cli

    def no_episodes(*a, **kw):
        raise AssertionError("episodes ran")

    monkeypatch.setattr(sim_cli, "run_scenario", no_episodes)
    parser = sim_cli.add_arguments(argparse.ArgumentParser())
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for out in (a_file / "sub", a_file / "sub" / "deeper"):
        assert sim_cli.run(parser.parse_args(["random", "--filter", "none", "--episodes", "1", "--no-plots",
                                              "--out", str(out)])) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out {out}" in err and f"{a_file} is a file, not a directory" in err
    assert a_file.read_text() == "x"
    assert sim_cli.output_dir_problem(tmp_path / "new" / "nested") is None
    assert sim_cli.output_dir_problem(tmp_path) is None
    assert "is a file" in sim_cli.output_dir_problem(a_file)
    assert not (tmp_path / "new").exists()


def test_scenario_model_names_unknown_scenarios():
    from clients.sim.scenarios import scenario_model

    assert scenario_model("merge") == "air_taxi" and scenario_model("dense") == "quadrotor"
    for bad in ("nope", None, ["random"]):
        with pytest.raises(UnknownScenarioError, match="unknown scenario .*; known: corridor, dense"):
            scenario_model(bad)
