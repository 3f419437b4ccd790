"""Small brute-force references shared by several test modules."""

from __future__ import annotations

import numpy as np


def all_pairs_distances(pos: np.ndarray) -> np.ndarray:
    """(N, N) distances between the rows of pos (N, 2), inf on the diagonal (the same rounding as the kernels'
    sqrt(dx^2 + dy^2))."""
    return np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)) + np.diag(np.full(len(pos), np.inf))


def mutual_pairs(partner) -> list[tuple[int, int]]:
    """The pairs (i, j), i < j, that chose each other, in order of i."""
    return [(i, int(j)) for i, j in enumerate(partner) if j > i and partner[j] == i]
