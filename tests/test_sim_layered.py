"""The layered filter inside the simulator and the `reach simulate` command, on the tiny test store."""
from __future__ import annotations

import numpy as np
import pytest

from clients import ValueFunction
from clients.sim.baselines import make_filter
from clients.sim.cli import add_arguments, run
from clients.sim.nominal import QuadrotorTracker
from clients.sim.scenarios import make_scenario
from clients.sim.simulator import Simulator
from reach.models import get_model

QUAD = get_model("quadrotor")


def _slow(sc, speed=0.3):
    """The tiny grid covers relative velocities of +-1 m/s per axis: keep each agent below 0.5 m/s."""
    return sc.with_(waypoint_speed=np.where(sc.waypoint_speed > 0, speed, 0.0))


def _small_scenario(n=3, radius=1.2, seed=0):
    """n quadrotors on a circle swapping to the opposite side (all paths cross in the middle)."""
    base = make_scenario("random", seed=seed)
    ang = 2 * np.pi * np.arange(n) / n + 0.3
    start = radius * np.column_stack([np.cos(ang), np.sin(ang)])
    x0 = np.column_stack([start, np.zeros((n, 2))])
    wps = -start[:, None, :]
    return base.with_(initial_states=x0, waypoints=wps, waypoint_heading=np.full((n, 1), np.nan),
                      waypoint_speed=np.zeros((n, 1)), departure_times=np.zeros(n), max_time=40.0)


@pytest.fixture(scope="module")
def layered(tiny_store):
    coop = ValueFunction.load(tiny_store, "quad_tiny/cooperative")
    worst = ValueFunction.load(tiny_store, "quad_tiny/worst_case")
    return make_filter("layered", QUAD, cooperative=coop, worst_case=worst, safety_distance=0.5, gamma_cbf=1.0)


@pytest.mark.parametrize("n", [2, 3])
def test_layered_filter_zero_near_collisions(layered, n):
    sc = _small_scenario(n)
    ctrl = QuadrotorTracker(cruise=0.3)
    blind = Simulator(sc, model=QUAD, controller=ctrl, conflict_range=0.9).run()
    assert blind.near_collision_steps > 0  # the scenario is a real test
    r = Simulator(sc, model=QUAD, filter=layered, controller=ctrl, conflict_range=0.9).run()
    assert r.near_collision_steps == 0
    assert r.min_separation >= 0.5
    assert r.intervention_steps > 0


def test_simulate_command_writes_tables_and_pictures(tiny_store, tmp_path, capsys):
    import argparse

    parser = add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["random", "--filter", "all", "--episodes", "1", "--seed", "2", "--out",
                              str(tmp_path), "--store", str(tiny_store), "--spec", "quad_tiny"])
    # the tiny grid's velocity range needs slow agents: run the command on a slowed copy of the scenario
    import clients.sim.cli as cli
    import clients.sim.scenarios as scenarios

    orig = scenarios.SCENARIOS["random"]
    try:
        scenarios.SCENARIOS["random"] = lambda seed=0, **kw: _slow(orig(seed=seed, **kw))
        cli_rc = run(args)
    finally:
        scenarios.SCENARIOS["random"] = orig
    assert cli_rc == 0
    md = (tmp_path / "random.md").read_text()
    for f in ("none", "layered", "ecbf", "braking"):
        assert f"| random | {f} |" in md
    assert "quad_tiny/worst_case" in md
    csv = (tmp_path / "random.csv").read_text().splitlines()
    assert len(csv) == 5 and csv[0].startswith("scenario,model,filter")
    assert (tmp_path / "random_seed2.png").stat().st_size > 1000
    assert (tmp_path / "random_layered_closest.png").exists()
    assert cli is not None


def test_forensics_reports_the_encounter_like_the_simulator(layered):
    from clients.sim.forensics import near_collision_forensics

    base = make_scenario("random", seed=0)

    def two_too_close(seed):  # start 0.45 m apart (< d = 0.5 m), then fly apart: a near-collision at once
        x0 = np.array([[0.0, 0.0, 0.0, 0.0], [0.45, 0.0, 0.0, 0.0]])
        return base.with_(initial_states=x0, waypoints=np.array([[[-1.2, 0.0]], [[1.6, 0.0]]]),
                          waypoint_heading=np.full((2, 1), np.nan), waypoint_speed=np.zeros((2, 1)),
                          departure_times=np.zeros(2), max_time=15.0, seed=seed)

    ctrl = QuadrotorTracker(cruise=0.3)
    ref = Simulator(two_too_close(0), model=QUAD, filter=layered, controller=ctrl, conflict_range=0.9).run()
    assert ref.near_collision_steps > 0
    rep = near_collision_forensics("random", layered, episodes=1, conflict_range=0.9, scenario_factory=two_too_close,
                                   controller=QuadrotorTracker(cruise=0.3))
    assert rep.near_collision_steps == ref.near_collision_steps and rep.agent_steps == ref.agent_steps
    assert 0 < rep.near_collision_steps_decision <= rep.near_collision_steps
    [enc] = rep.encounters
    assert (enc.i, enc.j) == (0, 1) and enc.t_first == 0.0 and enc.steps == ref.near_collision_steps // 2
    assert enc.min_separation == pytest.approx(ref.min_separation)
    assert enc.crossing == "none"  # the barrier was negative from the start
    assert enc.partners == (1, 0) and enc.third_agents == () and not enc.run_up
    assert enc.history and enc.history[0][1] < 0
    s = rep.summary()
    assert s["encounters"] == 1 and s["crossing"] == {"none": 1} and s["with_third_agent_in_rc"] == 0


def test_simulate_command_refuses_bad_arguments_before_running(tmp_path, capsys):
    """Bad numbers are usage errors (argparse, exit 2), not tracebacks after the episodes; an --out that is a file
    or --agents on a fixed-size scenario stop before any episode runs; a failed run leaves no empty directory."""
    import argparse

    parser = add_arguments(argparse.ArgumentParser())
    for bad in (["--episodes", "0"], ["--episodes", "-2"], ["--seed", "-1"], ["--agents", "-5"], ["--episodes", "x"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(["dense"] + bad)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "must be >=" in err or "expected an integer" in err
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert run(parser.parse_args(["random", "--out", str(a_file)])) == 2
    assert "is a file" in capsys.readouterr().err
    assert run(parser.parse_args(["random", "--agents", "10", "--out", str(tmp_path / "o")])) == 2
    assert "dense scenario only" in capsys.readouterr().err
    missing = tmp_path / "no_store_out"
    assert run(parser.parse_args(["random", "--filter", "layered", "--episodes", "1", "--store",
                                  str(tmp_path / "nonexistent"), "--out", str(missing)])) == 2
    assert not missing.exists()


def test_simulate_interrupted_says_what_was_written(tmp_path, capsys, monkeypatch):
    """Ctrl-C in `reach simulate` (no checkpoint to resume from) names the scenarios already written; exit 130."""
    import argparse

    import clients.sim.cli as sim_cli

    real = sim_cli.run_scenario

    def interrupt_second(name, *a, **kw):
        if name != "corridor":
            raise KeyboardInterrupt
        return real(name, *a, **kw)

    monkeypatch.setattr(sim_cli, "run_scenario", interrupt_second)
    monkeypatch.setattr(sim_cli, "SCENARIOS", {"corridor": None, "random": None})
    parser = add_arguments(argparse.ArgumentParser())
    out = tmp_path / "o"
    assert run(parser.parse_args(["all", "--filter", "none", "--episodes", "1", "--no-plots",
                                  "--out", str(out)])) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "corridor" in err and "checkpoint, if any" not in err
    assert (out / "corridor.md").exists() and not (out / "random.md").exists()
