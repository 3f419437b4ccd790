"""Trainer helpers (`clients/training.py`): eq. 17 penalty, curriculum schedule, near-collision / conflict counters."""
from __future__ import annotations

import numpy as np
import pytest

from clients.training import (CurriculumSchedule, SafetyCounters, agent_positions_velocities,
                              conflict_penalty)
from tests.helpers import all_pairs_distances


def _penalty_reference(pos, vel, d, rc, w):
    n = pos.shape[0]
    out = np.zeros(n)
    for i in range(n):
        total, count = 0.0, 0
        for j in range(n):
            if j == i:
                continue
            dij = np.hypot(*(pos[j] - pos[i]))
            if not dij < rc:
                continue
            count += 1
            c = 1.0 - np.clip((dij - d) / (rc - d), 0.0, 1.0)
            closing = abs(min(0.0, np.dot((pos[j] - pos[i]) / dij, vel[j] - vel[i]))) if dij > 0 else 0.0
            total += c * closing
        out[i] = -w * total if count >= 2 else 0.0
    return out


def test_conflict_penalty_matches_eq17():
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 6, (120, 2))
    vel = rng.uniform(-1, 1, (120, 2))
    got = conflict_penalty(pos, vel, 0.5, 1.0, weight=2.0)
    assert np.allclose(got, _penalty_reference(pos, vel, 0.5, 1.0, 2.0), atol=1e-12)
    assert np.all(got <= 0) and np.any(got < 0)
    # only one neighbour inside R_c: no penalty (eq. 17 applies with two or more)
    two = conflict_penalty(np.array([[0.0, 0], [0.7, 0]]), np.array([[0.5, 0], [-0.5, 0]]), 0.5, 1.0)
    assert np.all(two == 0)
    with pytest.raises(ValueError):
        conflict_penalty(pos, vel, 1.0, 0.5)
    for w in (np.nan, -1.0, np.inf):      # a NaN weight would turn every penalty into NaN
        with pytest.raises(ValueError, match="weight"):
            conflict_penalty(pos, vel, 0.5, 1.0, weight=w)


def test_positions_velocities_per_model():
    pos, vel = agent_positions_velocities("air_taxi", np.array([[1.0, 2.0, np.pi / 2, 50.0]]))
    assert np.allclose(pos, [[1, 2]]) and np.allclose(vel, [[0, 50]], atol=1e-12)
    pos, vel = agent_positions_velocities("quadrotor", np.array([[1.0, 2.0, 0.3, -0.2]]))
    assert np.allclose(vel, [[0.3, -0.2]])


def test_curriculum_schedule():
    sched = CurriculumSchedule(1000, 0.5, lambda d: 2 * d, filter_start=0.3, n_stages=4)
    assert sched.at(0).filter_on is False and sched.at(299).safety_distance == 0.0
    st = sched.at(300)
    assert st.filter_on and st.stage == 1 and st.safety_distance == pytest.approx(0.125)
    assert st.conflict_range == pytest.approx(0.25)
    assert sched.at(999).safety_distance == pytest.approx(0.5) and sched.at(5000).stage == 4
    ds = [sched.at(k).safety_distance for k in range(300, 1000)]
    assert all(b >= a for a, b in zip(ds, ds[1:]))
    with pytest.raises(ValueError):
        CurriculumSchedule(100, 0.5, lambda d: d, distances=[0.3, 0.2, 0.5])


def test_safety_counters():
    c = SafetyCounters(0.5, 1.0)
    near, n_rc = c.update(np.array([[0.0, 0], [0.4, 0], [0.0, 0.9], [10.0, 10.0]]))
    assert near.tolist() == [True, True, False, False]
    assert n_rc.tolist() == [2, 2, 2, 0]
    assert c.near_collision_pct == pytest.approx(50.0) and c.conflict_pct == pytest.approx(75.0)
    c.update(np.array([[0.0, 0], [5.0, 0]]))
    assert c.samples == 6 and c.near_collisions == 2 and c.conflicts == 3


@pytest.mark.parametrize("layout", ["uniform", "clusters", "line", "duplicates", "two_far", "wide"])
def test_nearest_distances_is_exact(layout):
    """The ring search gives every agent's exact nearest distance (bitwise the all-pairs value) for crowds, clusters
    far apart, agents on a line, coincident agents and very wide scenes."""
    from clients.neighbors import nearest_distances
    from clients.sim.simulator import nearest_and_count

    rng = np.random.default_rng(3)
    pos = {"uniform": lambda: rng.uniform(0, 30, (500, 2)),
           "clusters": lambda: np.concatenate([rng.normal(c, 0.3, (60, 2)) for c in ([0, 0], [50, 5], [-40, 80])]),
           "line": lambda: np.column_stack([rng.uniform(0, 1000, 200), np.zeros(200)]),
           "duplicates": lambda: np.repeat(rng.uniform(0, 5, (30, 2)), 3, axis=0),
           "two_far": lambda: np.array([[0.0, 0.0], [3e4, -2e4]]),
           "wide": lambda: np.concatenate([rng.uniform(0, 1, (100, 2)), rng.uniform(-1e5, 1e5, (20, 2))])}[layout]()
    np.testing.assert_array_equal(nearest_distances(pos), nearest_and_count(pos, 0.0)[0])
    assert nearest_distances(pos[:1]).tolist() == [np.inf]


@pytest.mark.parametrize("n, spread", [(0, 1.0), (1, 1.0), (2, 50.0), (40, 3.0), (40, 40.0), (300, 20.0),
                                      (6, 1e4), (3, 1.0)])
def test_update_with_min_separation_matches_update_and_all_pairs(n, spread):
    """One cell-list pass gives the same counts as `update` and as all pairs, and the exact minimum separation
    (bitwise the all-pairs minimum), also when no pair is within max(d, R_c) (the ring search then)."""
    pos = np.random.default_rng(n).uniform(0.0, spread, size=(n, 2))
    a, b = SafetyCounters(0.5, 1.0), SafetyCounters(0.5, 1.0)
    near, n_rc = a.update(pos)
    near2, n_rc2, conflict, n_near, n_conflict, min_sep = b.update_with_min_separation(pos)
    np.testing.assert_array_equal(near, near2)
    np.testing.assert_array_equal(n_rc, n_rc2)
    np.testing.assert_array_equal(conflict, n_rc > 1)
    assert n_near == near.sum() and n_conflict == (n_rc > 1).sum()
    assert (a.samples, a.near_collisions, a.conflicts) == (b.samples, b.near_collisions, b.conflicts)
    # the counts and the minimum against all pairs (the same comparisons of the rounded distance)
    dist = all_pairs_distances(pos)
    assert min_sep == (dist.min() if n > 1 else np.inf)
    if spread == 1e4:
        assert dist.min() > 1.0      # the case without a swept pair
    np.testing.assert_array_equal(near, (dist < 0.5).any(axis=1))
    np.testing.assert_array_equal(n_rc, (dist < 1.0).sum(axis=1))
    with pytest.raises(ValueError, match="finite"):
        b.update_with_min_separation(np.array([[0.0, 0.0], [np.nan, 1.0]]))


def test_counters_along_a_trajectory_match_fresh_counters():
    """The counters keep their close pairs between calls (a Verlet list): along moving positions, a jump and agents
    leaving, every call gives what new counters give, and the list is reused on most calls."""
    rng = np.random.default_rng(2)
    pos = rng.uniform(0, 20, (120, 2))
    kept = SafetyCounters(0.5, 1.5)
    reused = 0
    for k in range(30):
        pos = pos + 4.0 if k == 15 else (pos[:90].copy() if k == 22 else pos + rng.uniform(-0.1, 0.1, pos.shape))
        last = kept._verlet[0]
        got = kept.update_with_min_separation(pos)
        reused += kept._verlet[0] is last
        want = SafetyCounters(0.5, 1.5).update_with_min_separation(pos)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a, b)
    assert reused >= 20


def test_curriculum_rejects_nan_inf_and_bad_conflict_ranges():
    """NaN slips through ordering / positivity comparisons: every distance must be finite and > 0, the target
    too, and each stage's R_c(d) (checked where it is computed) a finite number > d."""
    def rc(d):
        return 2 * d

    for kw in ({"distances": [np.nan, 0.5]}, {"distances": [0.2, np.nan, 0.5]}, {"distances": [0.25, np.inf]},
               {"distances": [0.2, 0.1, 0.5]}, {"distances": [0.0, 0.5]}, {"distances": []},
               {"distances": ["0.25", "0.5"]}, {"distances": [0.25 + 0j, 0.5]}):
        with pytest.raises(ValueError, match="distances"):
            CurriculumSchedule(100, 0.5, rc, **kw)
    for target in (np.inf, np.nan, 0.0, -0.5):
        with pytest.raises(ValueError, match="target_distance must be finite and > 0"):
            CurriculumSchedule(100, target, rc)
    for bad, what in ((lambda d: np.nan, "nan"), (lambda d: np.inf, "inf"), (lambda d: d, "0.25"),
                      (lambda d: 0.5 * d, "0.125"), (lambda d: None, "must be a number")):
        with pytest.raises(ValueError, match=rf"conflict_range\(0.25\).*{what}"):
            CurriculumSchedule(100, 0.5, bad, n_stages=2)
    sched = CurriculumSchedule(100, 0.5, rc, distances=np.array([0.25, 0.5]))
    assert sched.at(50).safety_distance == 0.25 and sched.at(50).conflict_range == 0.5


@pytest.mark.parametrize("bad", [
    np.array([[1 + 1j, 0.0], [0.0, 1.0]]),             # numpy would drop the imaginary part with a warning
    np.array([["0.0", "0.0"], ["0.0", "1.0"]]),         # ... parse numeric strings
    np.array([[True, False], [False, True]]),           # ... read booleans as 0 / 1
    np.array([[0.0, None], [0.0, 1.0]], dtype=object),  # ... and report None as "NaN or inf"
])
def test_non_real_positions_are_rejected(bad):
    from clients import StateError
    from clients.neighbors import neighbors

    good = np.array([[0.0, 0.0], [0.0, 1.0]])
    calls = [lambda p: conflict_penalty(p, good, 0.5, 1.0), lambda p: conflict_penalty(good, p, 0.5, 1.0),
             lambda p: neighbors(p, 1.0), lambda p: SafetyCounters(0.5, 1.0).update(p),
             lambda p: SafetyCounters(0.5, 1.0).update_with_min_separation(p)]
    for call in calls:
        with pytest.raises(StateError, match="must be real numbers"):
            call(bad)
    with pytest.raises(StateError, match="must be real numbers"):
        agent_positions_velocities("quadrotor", np.concatenate([bad, bad], axis=1))
    assert neighbors(good.astype(np.int64), 1.5)[0].tolist() == [0, 1, 2]   # integers are real numbers
