"""Grid specification of a relative-state box and its `hj_reachability.Grid`.

Periodic dims (the model says which) use hj's periodic grid: n points on [lo, hi) without the endpoint, so a
heading dim with lo = -pi, hi = pi covers [-pi, pi). Other dims include both endpoints.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from reach.models.base import Model


@dataclasses.dataclass(frozen=True)
class GridSpec:
    """Box [lo, hi] (state units) with `points` nodes per dim."""
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    points: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "lo", tuple(float(x) for x in self.lo))
        object.__setattr__(self, "hi", tuple(float(x) for x in self.hi))
        object.__setattr__(self, "points", tuple(int(x) for x in self.points))
        if not len(self.lo) == len(self.hi) == len(self.points):
            raise ValueError(f"lo, hi, points differ in length: {self.lo}, {self.hi}, {self.points}")
        for i, (l, h, n) in enumerate(zip(self.lo, self.hi, self.points)):
            if not (math.isfinite(l) and math.isfinite(h) and l < h):
                raise ValueError(f"dim {i}: need finite lo < hi, got [{l}, {h}]")
            if n < 5:  # WENO stencils and one-sided gradients need a few nodes
                raise ValueError(f"dim {i}: need at least 5 points, got {n}")

    @property
    def ndim(self) -> int:
        return len(self.points)

    def spacings(self, model: Model) -> np.ndarray:
        """Node spacing per dim (state units)."""
        return np.array([(h - l) / (n if p else n - 1)
                         for l, h, n, p in zip(self.lo, self.hi, self.points, model.periodic)])

    def coordinates(self, model: Model) -> tuple[np.ndarray, ...]:
        """1-D float64 coordinate vectors (periodic dims without the endpoint)."""
        self.check(model)
        return tuple(np.linspace(l, h, n, endpoint=not p)
                     for l, h, n, p in zip(self.lo, self.hi, self.points, model.periodic))

    def check(self, model: Model) -> None:
        """Raise ValueError if this spec does not fit `model` (dims, periodic dims spanning one full turn)."""
        if self.ndim != model.n_states:
            raise ValueError(f"{model.name} has {model.n_states} state dims {model.state_names}, "
                             f"grid spec has {self.ndim}")
        for i, p in enumerate(model.periodic):
            if p and not math.isclose(self.hi[i] - self.lo[i], 2 * math.pi, rel_tol=1e-9):
                raise ValueError(f"periodic dim {model.state_names[i]} must span 2 pi, got [{self.lo[i]}, "
                                 f"{self.hi[i]}]")


def make_grid(model: Model, grid_spec: GridSpec):
    """The `hj_reachability.Grid` of `grid_spec` with the model's periodic dims."""
    import hj_reachability as hj
    import jax.numpy as jnp

    grid_spec.check(model)
    periodic = tuple(i for i, p in enumerate(model.periodic) if p)
    return hj.Grid.from_lattice_parameters_and_boundary_conditions(
        hj.sets.Box(jnp.array(grid_spec.lo), jnp.array(grid_spec.hi)), grid_spec.points, periodic_dims=periodic)
