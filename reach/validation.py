"""Sampled validation of a value grid: do states the grid calls safe stay safe under its own controls?

Sample relative states with V0(s) - d >= margin (multilinear interpolation), place the pair in the world frame,
and roll it out for `horizon` s with the grid's optimal controls held over each decision period (zero-order
hold, as the agents act). The controls are synthesized from the grid by one-period lookahead over the corners
of the agents' actual (speed-dependent) control boxes: cooperative: the joint corner that maximizes
min(separation during the period, V0 at its end); worst_case: the ego's maximin corner, and the other answers
with its worst corner. (Bang-bang controls from the sign of the interpolated gradient fail on dispersal
surfaces, e.g. a head-on approach, where the central-difference gradient averages "dodge left" and "dodge
right" to "brake"; that measured up to 0.49 m of separation lost on the default quadrotor grid.) The agents are
integrated with `Model.step_agents` (speed limits enforced), separation is checked at `SUBSTEPS` points per
decision period, and a sample is falsified if the minimum separation drops below d.

Candidates are drawn uniformly in the grid box; half of the samples are the candidates closest to the safe-set
boundary (the informative ones), half are uniform among the safe candidates.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from reach.models.base import GAMES, Model

SUBSTEPS = 10           # separation checks per decision period
CANDIDATES_PER_SAMPLE = 20


def interpolate(fields, coords, periodic, points) -> list[np.ndarray]:
    """Multilinear interpolation of grid `fields` (each shape S or S + (c,)) at `points` (N, n).

    Periodic dims wrap; other coordinates are clamped to the grid box. Returns arrays (N,) or (N, c).
    """
    pts = np.asarray(points, dtype=np.float64)
    lo_idx, frac = [], []
    for d, (c, p) in enumerate(zip(coords, periodic)):
        h = c[1] - c[0]
        pos = (pts[:, d] - c[0]) / h
        if p:
            pos = np.mod(pos, len(c))
            i0 = np.floor(pos).astype(np.int64)
            lo_idx.append((i0 % len(c), (i0 + 1) % len(c)))
        else:
            pos = np.clip(pos, 0.0, len(c) - 1)
            i0 = np.minimum(np.floor(pos).astype(np.int64), len(c) - 2)
            lo_idx.append((i0, i0 + 1))
        frac.append(pos - i0)
    out = [np.zeros((len(pts),) + np.shape(f)[len(coords):]) for f in fields]
    for corner in itertools.product((0, 1), repeat=len(coords)):
        w = np.ones(len(pts))
        idx = []
        for d, bit in enumerate(corner):
            w = w * (frac[d] if bit else 1.0 - frac[d])
            idx.append(lo_idx[d][bit])
        for o, f in zip(out, fields):
            vals = f[tuple(idx)]
            o += (w.reshape((-1,) + (1,) * (vals.ndim - 1))) * vals
    return out


def _world_pairs(model: Model, s: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """Two agent states per relative state s (N, n), with relative_state(ego, other) == s."""
    n = len(s)
    if model.name == "quadrotor":
        v_max = model.parameters["v_max"]
        # Ego velocity such that both agents respect |v| <= v_max per axis: v_b = v_a + v_rel.
        lo = np.maximum(-v_max, -v_max - s[:, 2:])
        hi = np.minimum(v_max, v_max - s[:, 2:])
        v_a = lo + rng.uniform(size=(n, 2)) * np.maximum(hi - lo, 0.0)
        ego = np.column_stack([np.zeros((n, 2)), v_a])
        other = np.column_stack([s[:, :2], v_a + s[:, 2:]])
        return ego, other
    if model.name == "air_taxi":
        th_a = rng.uniform(-math.pi, math.pi, n)
        c, sn = np.cos(th_a), np.sin(th_a)
        ego = np.column_stack([np.zeros(n), np.zeros(n), th_a, s[:, 3]])
        other = np.column_stack([c * s[:, 0] - sn * s[:, 1], sn * s[:, 0] + c * s[:, 1],
                                 np.mod(th_a + s[:, 2] + math.pi, 2 * math.pi) - math.pi, s[:, 4]])
        return ego, other
    raise ValueError(f"validation does not know how to place {model.name!r} agents in the world frame")


def _separation(model: Model, ego, other) -> np.ndarray:
    i, j = 0, 1  # agent world positions are (x, y) first for every model
    return np.hypot(other[:, i] - ego[:, i], other[:, j] - ego[:, j])


def _corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 2^m corners of per-sample boxes lo, hi (N, m): shape (2^m, N, m)."""
    bits = np.array(list(itertools.product((False, True), repeat=lo.shape[1])))
    return np.where(bits[:, None, :], hi[None], lo[None])


def lookahead_controls(model: Model, game: str, value, coords, ego, other, dt: float):
    """The grid's optimal controls (u_a, u_b), each (N, m), for one decision period of length dt (see module doc).

    value: V0 on the grid (m); ego, other: agent states (N, k) in the world frame."""
    n = len(ego)
    ca = _corners(*model.agent_control_bounds(ego))  # (K, N, m)
    cb = _corners(*model.agent_control_bounds(other))
    k = len(ca)
    # every (ego corner, other corner) pair, flattened as [ka, kb, sample]
    u_a = np.broadcast_to(ca[:, None], (k, k) + ca.shape[1:]).reshape(-1, ca.shape[-1])
    u_b = np.broadcast_to(cb[None, :], (k, k) + cb.shape[1:]).reshape(-1, cb.shape[-1])
    e, o = np.tile(ego, (k * k, 1)), np.tile(other, (k * k, 1))
    sep = _separation(model, e, o)
    for _ in range(SUBSTEPS):
        e = model.step_agents(e, u_a, dt / SUBSTEPS)
        o = model.step_agents(o, u_b, dt / SUBSTEPS)
        sep = np.minimum(sep, _separation(model, e, o))
    (v_end,) = interpolate([value], coords, model.periodic, model.relative_state(e, o))
    score = np.minimum(sep, v_end).reshape(k, k, n)
    rows = np.arange(n)
    if game == "cooperative":
        best = np.argmax(score.reshape(k * k, n), axis=0)
        ia, ib = np.divmod(best, k)
    else:
        ia = np.argmax(score.min(axis=1), axis=0)
        ib = np.argmin(score[ia, :, rows], axis=1)
    return ca[ia, rows], cb[ib, rows]


def validate(model: Model, game: str, value, coords, safety_distance: float, margin: float,
             n_samples: int, seed: int, horizon: float) -> dict:
    """Falsification rate of the grid's safety claim (see module doc). value (m) shape S, gradient S + (n,),
    coords n vectors, safety_distance d and margin in m, horizon in s. Returns a JSON-ready dict."""
    if game not in GAMES:
        raise ValueError(f"unknown game {game!r}; known games: {', '.join(GAMES)}")
    value = np.asarray(value, dtype=np.float64)
    coords = [np.asarray(c, dtype=np.float64) for c in coords]
    shape = tuple(len(c) for c in coords)
    if value.shape != shape or len(coords) != model.n_states:
        raise ValueError(f"value {value.shape} does not fit the grid {shape}")
    d, margin, horizon = float(safety_distance), float(margin), float(horizon)
    rng = np.random.default_rng(seed)
    dt = model.decision_period

    # Candidates uniformly in the grid box (periodic dims over their full turn).
    lo = np.array([c[0] for c in coords])
    hi = np.array([c[0] + (c[1] - c[0]) * len(c) if p else c[-1] for c, p in zip(coords, model.periodic)])
    cand = rng.uniform(lo, hi, size=(max(1, n_samples) * CANDIDATES_PER_SAMPLE, len(coords)))
    if any(model.periodic):
        per = np.array(model.periodic)
        cand[:, per] = np.mod(cand[:, per] + math.pi, 2 * math.pi) - math.pi
    (v_cand,) = interpolate([value], coords, model.periodic, cand)
    safe = np.flatnonzero(v_cand - d >= margin)
    n_near = min(len(safe), n_samples // 2)
    near = safe[np.argsort(v_cand[safe], kind="stable")[:n_near]]
    rest = np.setdiff1d(safe, near)
    uniform = rng.choice(rest, size=min(len(rest), n_samples - n_near), replace=False)
    s0 = cand[np.concatenate([near, uniform])]
    n = len(s0)

    ego, other = _world_pairs(model, s0, rng)
    min_sep = _separation(model, ego, other)
    n_decisions = max(1, math.ceil(horizon / dt - 1e-9))
    for _ in range(n_decisions):
        u_a, u_b = lookahead_controls(model, game, value, coords, ego, other, dt)
        for _ in range(SUBSTEPS):
            ego = model.step_agents(ego, u_a, dt / SUBSTEPS)
            other = model.step_agents(other, u_b, dt / SUBSTEPS)
            min_sep = np.minimum(min_sep, _separation(model, ego, other))
    falsified = min_sep < d
    return {
        "game": game,
        "n_samples": int(n),
        "margin": margin,
        "safety_distance": d,
        "falsification_rate": float(falsified.mean()) if n else None,
        "n_falsified": int(falsified.sum()),
        "worst_separation_excess": float((min_sep - d).min()) if n else None,
        "decision_period": float(dt),
        "horizon": float(n_decisions * dt),
        "substeps": SUBSTEPS,
        "seed": int(seed),
        "sampling": f"{n_near} closest to the boundary + {n - n_near} uniform, among safe candidates drawn "
                    "uniformly in the grid box",
    }
