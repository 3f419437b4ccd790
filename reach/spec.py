"""Declarative value-function specs: one TOML file per model and resolution (``grids/*.toml``).

The spec name is the file's stem (``grids/quadrotor.toml`` -> ``quadrotor``); it names the value functions
``<spec>/<game>`` in the store. A spec is validated with pydantic (extra fields forbidden) and then against the
model (dimension names, parameter names); every error names the file and the field. The spec hash is the sha256
of the canonical JSON of the validated spec (defaults filled in), so equal content -> equal hash.

Format (all lengths in m, times in s, angles in rad)::

    model = "quadrotor"                     # a registered model (reach.models.MODELS)
    games = ["cooperative", "worst_case"]   # non-empty subset
    # gamma = 0.5                           # optional CBVF discount (1/s); > 0 requires safety_distance
    # safety_distance = 0.5                 # the d such a discounted grid is computed for (stores V_d; less
                                            #    than the grid's farthest position)

    [parameters]                            # optional overrides of the model's defaults (known names only)
    # safety_distance = 0.5

    [grid.px]                               # one table per relative-state dimension, named by state name
    lo = -3.0                               # |lo|, |hi| <= 1e30
    hi = 3.0
    points = 25                             # 5 .. 10000, at most 1e8 nodes in all; periodic dims (theta_r)
                                            #    take only `points`: [-pi, pi)

    [solver]                                # reach.solver.SolverSettings
    scheme = "WENO3"                        # upwind scheme: first_order, ENO2, ENO3, WENO3, WENO5
    # integrator = "RK3"                    # optional (solver default): RK1, RK2, RK3 (TVD Runge-Kutta)
    # dissipation = "local"                 # optional (solver default): global | local Lax-Friedrichs
    cfl = 0.75                              # CFL number in (0, 1]
    tolerance = 1e-3                        # m: convergence tolerance of the cooperative game
    window = 1.0                            # s: convergence window
    max_horizon = 20.0                      # s: give up (converged = false) after this horizon
    chunk = 0.5                             # s: checkpoint / progress interval (optional)
    engagement_horizon = 0.4                # s: T_e of the worst-case game (also used for the R_c table)
    snapshot_horizons = [0.1, 0.2, 0.3]     # s: worst-case snapshots (<= T_e; T_e is always stored;
                                            #    optional, default every decision period)
    # max_horizon and engagement_horizon may ask for at most 1e6 solver time steps each (see MAX_STEPS)

    [conflict]
    safety_distances = [0.25, 0.5, 0.75]    # m: the R_c(d) table (from the worst-case grid)

    [validation]
    n_samples = 2000                        # sampled trajectories (0 = skip; at most 1e6)
    margin = 0.02                           # m
    seed = 0                                # >= 0
    # safety_distance = 0.5                 # d used by the validation (default: the model's)

Every number must be finite (no inf / nan).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from reach.store import SPEC_NAME_RE, canonical_json

__all__ = ["SpecError", "SpecConfig", "Spec", "load_spec", "parse_spec", "spec_hash", "OVERRIDABLE_FIELDS"]

GameName = Literal["cooperative", "worst_case"]

#: scalar `Model` fields a spec may override (used outside the numba/JAX kernels)
OVERRIDABLE_FIELDS = ("decision_period", "observation_range", "safety_distance")


class SpecError(ValueError):
    """An invalid spec; the message names the file and the field(s)."""


class _Strict(BaseModel):
    # inf / nan in any float field (TOML has both) would only fail deep inside the solve or after it
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: fewest grid nodes per dimension (the solver's WENO stencils and one-sided gradients need 5)
MIN_POINTS = 5
#: most grid nodes per dimension, and in all (1e8 float32 nodes = 400 MB per copy of V; the solver holds tens)
MAX_POINTS = 10_000
MAX_NODES = 10**8
#: largest |lo|, |hi| of a grid dimension: the solver computes in float32 (max 3.4e38), distances included
MAX_COORD = 1e30
#: most time steps one game's solve may take (the shipped specs take ~1e3): the CFL step is fixed by the grid and
#: the model's rate bounds, and every convergence window and worst-case snapshot costs at least one step
MAX_STEPS = 10**6
#: most validation trajectories (each is simulated with a lookahead controller at every decision)
MAX_SAMPLES = 10**6


class DimConfig(_Strict):
    lo: float | None = None
    hi: float | None = None
    points: int = Field(ge=MIN_POINTS, le=MAX_POINTS)


class SolverConfig(_Strict):
    scheme: str
    integrator: str | None = None
    dissipation: str | None = None
    cfl: float = Field(gt=0.0, le=1.0)
    tolerance: float = Field(gt=0.0)
    window: float = Field(gt=0.0)
    max_horizon: float = Field(gt=0.0)
    chunk: float | None = Field(default=None, gt=0.0)
    engagement_horizon: float | None = Field(default=None, gt=0.0)
    snapshot_horizons: list[float] | None = None


class ConflictConfig(_Strict):
    safety_distances: list[float] = Field(min_length=1)


class ValidationConfig(_Strict):
    n_samples: int = Field(ge=0, le=MAX_SAMPLES)
    margin: float = Field(ge=0.0)
    seed: int = Field(ge=0)  # numpy's default_rng takes non-negative seeds only
    safety_distance: float | None = Field(default=None, gt=0.0)


class SpecConfig(_Strict):
    model: str
    games: list[GameName] = Field(min_length=1)
    gamma: float = Field(default=0.0, ge=0.0)
    safety_distance: float | None = Field(default=None, gt=0.0)
    parameters: dict[str, float] = Field(default_factory=dict)
    grid: dict[str, DimConfig]
    solver: SolverConfig
    conflict: ConflictConfig
    validation: ValidationConfig


def spec_hash(config: SpecConfig) -> str:
    """sha256 (hex) of the canonical JSON of the validated spec."""
    return hashlib.sha256(canonical_json(config.model_dump(mode="json")).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated spec: its name (file stem), file, config, hash and the model with overrides applied."""

    name: str
    path: Path
    config: SpecConfig
    hash: str
    model: Any  # reach.models.base.Model

    @property
    def games(self) -> tuple[str, ...]:
        return tuple(self.config.games)

    def value_function_name(self, game: str) -> str:
        return f"{self.name}/{game}"

    @property
    def lo(self) -> tuple[float, ...]:
        return tuple(float(self.config.grid[s].lo) for s in self.model.state_names)

    @property
    def hi(self) -> tuple[float, ...]:
        return tuple(float(self.config.grid[s].hi) for s in self.model.state_names)

    @property
    def points(self) -> tuple[int, ...]:
        return tuple(int(self.config.grid[s].points) for s in self.model.state_names)

    def grid_spec(self):
        """The solver's ``reach.grid.GridSpec`` for this spec."""
        from reach.grid import GridSpec

        return GridSpec(lo=self.lo, hi=self.hi, points=self.points)

    def horizon_for(self, game: str) -> float:
        s = self.config.solver
        return float(s.engagement_horizon) if game == "worst_case" else float(s.max_horizon)

    def solver_settings(self, game: str | None = None):
        """``reach.solver.SolverSettings`` of this spec (one object serves both games)."""
        from reach.solver import SolverSettings

        kw = self.config.solver.model_dump(exclude_none=True)
        if "snapshot_horizons" in kw:
            kw["snapshot_horizons"] = tuple(kw["snapshot_horizons"])
        return SolverSettings(**kw)

    @property
    def gamma(self) -> float:
        return float(self.config.gamma)

    @property
    def discounted_safety_distance(self) -> float | None:
        """d of a discounted grid (gamma > 0), else None (shiftable V0)."""
        return float(self.config.safety_distance) if self.config.gamma > 0 else None

    @property
    def validation_safety_distance(self) -> float:
        v = self.config.validation.safety_distance
        if self.discounted_safety_distance is not None:
            return self.discounted_safety_distance
        return float(v) if v is not None else float(self.model.safety_distance)


def _loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc) if loc else "(top level)"


def _fmt_pydantic(path: Path, exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = _loc(tuple(err.get("loc", ())))
        msg = err.get("msg", "invalid")
        if err.get("type") == "missing":
            msg = "missing required field"
        elif err.get("type") == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}")
    return f"{path}: " + "; ".join(parts)


def parse_spec(data: dict, path: str | Path = "<spec>", name: str | None = None) -> Spec:
    """Validate a spec given as a dict (the parsed TOML); ``SpecError`` names ``path`` and the field."""
    from reach.models import UnknownModelError, get_model

    path = Path(path)
    name = name if name is not None else path.stem
    if not SPEC_NAME_RE.match(name or ""):
        raise SpecError(f"{path}: spec name {name!r} (the file stem) must match {SPEC_NAME_RE.pattern}")
    try:
        config = SpecConfig.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_fmt_pydantic(path, exc)) from None

    errors: list[str] = []
    try:
        model = get_model(config.model)
    except UnknownModelError as exc:
        raise SpecError(f"{path}: model: {exc}") from None

    # parameters: known names only
    model, param_errors = _apply_parameters(model, dict(config.parameters))
    errors += param_errors

    # grid: exactly the model's state names, lo < hi, periodic dims cover [-pi, pi)
    grid: dict[str, dict] = {}
    for dim in config.grid:
        if dim not in model.state_names:
            errors.append(f"grid.{dim}: not a state of model {model.name} "
                          f"(states: {', '.join(model.state_names)})")
    for dim, periodic in zip(model.state_names, model.periodic):
        d = config.grid.get(dim)
        if d is None:
            errors.append(f"grid.{dim}: missing required field (model {model.name} has states "
                          f"{', '.join(model.state_names)})")
            continue
        lo, hi = d.lo, d.hi
        if periodic:
            if lo is None:
                lo = -math.pi
            if hi is None:
                hi = math.pi
            if not (math.isclose(lo, -math.pi, abs_tol=1e-9) and math.isclose(hi, math.pi, abs_tol=1e-9)):
                errors.append(f"grid.{dim}: periodic dimension must cover [-pi, pi) (omit lo/hi), got [{lo}, {hi}]")
                continue
            lo, hi = -math.pi, math.pi
        else:
            if lo is None:
                errors.append(f"grid.{dim}.lo: missing required field")
            if hi is None:
                errors.append(f"grid.{dim}.hi: missing required field")
            if lo is None or hi is None:
                continue
            if not (abs(lo) <= MAX_COORD and abs(hi) <= MAX_COORD):
                errors.append(f"grid.{dim}: lo and hi must be within +-{MAX_COORD:g} (the solver works in float32)")
                continue
            if lo >= hi:
                errors.append(f"grid.{dim}.hi: must be greater than lo (lo = {lo}, hi = {hi})")
                continue
        grid[dim] = {"lo": float(lo), "hi": float(hi), "points": int(d.points)}
    nodes = math.prod(g["points"] for g in grid.values())
    if nodes > MAX_NODES:
        shape = " x ".join(str(g["points"]) for g in grid.values())
        errors.append(f"grid: {shape} = {nodes} nodes exceed the limit of {MAX_NODES:.0e}")

    # games / horizons
    if len(set(config.games)) != len(config.games):
        errors.append("games: duplicate game")
    s = config.solver
    if s.engagement_horizon is None:
        errors.append("solver.engagement_horizon: missing required field (T_e of the worst-case game, which "
                      "also gives the R_c table)")
    else:
        for h in s.snapshot_horizons or ():
            if not (0.0 < h <= s.engagement_horizon):
                errors.append(f"solver.snapshot_horizons: {h} must be in (0, engagement_horizon = "
                              f"{s.engagement_horizon}]")
    if s.chunk is not None and s.chunk > s.max_horizon:
        errors.append(f"solver.chunk: {s.chunk} exceeds max_horizon {s.max_horizon}")
    if s.window > s.max_horizon:
        errors.append(f"solver.window: {s.window} exceeds max_horizon {s.max_horizon}")

    # CBVF discount
    if config.gamma > 0 and config.safety_distance is None:
        errors.append("safety_distance: missing required field (gamma > 0 grids are computed for one d)")
    if config.gamma == 0 and config.safety_distance is not None:
        errors.append("safety_distance: only allowed with gamma > 0 (an undiscounted grid serves every d)")
    pos = [model.state_names[i] for i in model.position_dims]
    if config.gamma > 0 and config.safety_distance is not None and all(p in grid for p in pos):
        # l = ||p|| - d < 0 at every node: nothing on the grid is safe (and d beyond float32 gives a NaN grid)
        farthest = math.hypot(*(max(abs(grid[p]["lo"]), abs(grid[p]["hi"])) for p in pos))
        if config.safety_distance >= farthest:
            errors.append(f"safety_distance: {config.safety_distance:g} m is beyond the grid's farthest position "
                          f"({farthest:g} m): no state would be safe")

    # R_c table
    sd = list(config.conflict.safety_distances)
    if any(not (math.isfinite(x) and x > 0) for x in sd):
        errors.append("conflict.safety_distances: entries must be positive")
    elif sd != sorted(set(sd)):
        errors.append("conflict.safety_distances: must be strictly increasing")

    resolved: dict[str, Any] = {}
    if not errors:
        from reach.solver import SolverSettings

        try:
            kw = s.model_dump(exclude_none=True)
            if "snapshot_horizons" in kw:
                kw["snapshot_horizons"] = tuple(kw["snapshot_horizons"])
            settings = SolverSettings(**kw)
            # the solver's defaults for what the spec leaves out become part of the spec (and of its hash)
            resolved = {k: getattr(settings, k) for k in ("integrator", "dissipation", "chunk")
                        if getattr(s, k) is None}
        except (TypeError, ValueError) as exc:
            errors.append(f"solver: {exc}")
        else:
            errors += _effort_errors(model, grid, s)

    if errors:
        raise SpecError(f"{path}: " + "; ".join(errors))

    data_norm = config.model_dump(mode="python")
    data_norm["grid"] = {dim: grid[dim] for dim in model.state_names}
    data_norm["conflict"]["safety_distances"] = [float(x) for x in sd]
    data_norm["solver"].update(resolved)
    config = SpecConfig.model_validate(data_norm)
    return Spec(name=name, path=path, config=config, hash=spec_hash(config), model=model)


def _effort_errors(model, grid: dict[str, dict], s: SolverConfig) -> list[str]:
    """Horizons that would take more than MAX_STEPS solver time steps (a horizon of 1e300 s never ends)."""
    from reach.grid import GridSpec
    from reach.solver import cfl_step

    gs = GridSpec(lo=[grid[d]["lo"] for d in model.state_names], hi=[grid[d]["hi"] for d in model.state_names],
                  points=[grid[d]["points"] for d in model.state_names])
    dt_cfl = cfl_step(model, gs, s)
    errors = []
    for field, horizon, step in (
            ("max_horizon", s.max_horizon, min(dt_cfl, s.window)),
            # the worst-case game stops at every snapshot, by default every decision period
            ("engagement_horizon", s.engagement_horizon,
             min(dt_cfl, s.window, model.decision_period if s.snapshot_horizons is None else math.inf))):
        steps = horizon / step
        if steps > MAX_STEPS:
            errors.append(f"solver.{field}: {horizon:g} s takes ~{steps:.3g} solver steps of <= {step:.3g} s (the "
                          f"CFL step on this grid, the window or the snapshot spacing); at most {MAX_STEPS:.0e}")
    return errors


def _apply_parameters(model, overrides: dict[str, float]):
    """Apply parameter overrides; unknown names (and names fixed in the kernels) are errors."""
    errors: list[str] = []
    if not overrides:
        return model, errors
    with_parameters = getattr(model, "with_parameters", None)
    fixed = set(getattr(model, "parameters", {}) or {})
    field_kw = {}
    param_kw = {}
    for key, val in overrides.items():
        if key in OVERRIDABLE_FIELDS:
            if not (math.isfinite(val) and val > 0):
                errors.append(f"parameters.{key}: must be positive")
            field_kw[key] = float(val)
        elif key in fixed and callable(with_parameters):
            param_kw[key] = float(val)
        elif key in fixed:
            errors.append(f"parameters.{key}: model {model.name} does not support overriding this parameter "
                          f"(overridable: {', '.join(OVERRIDABLE_FIELDS)})")
        else:
            known = sorted(set(OVERRIDABLE_FIELDS) | (fixed if callable(with_parameters) else set()))
            errors.append(f"parameters.{key}: unknown parameter of model {model.name} (known: {', '.join(known)})")
    if errors:
        return model, errors
    if param_kw:
        try:
            model = with_parameters(**param_kw)
        except (TypeError, ValueError) as exc:
            return model, [f"parameters: {exc}"]
    if field_kw:
        model = dataclasses.replace(model, **field_kw)
    return model, errors


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec TOML file (``SpecError`` names the file and the field)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read spec: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: invalid TOML: {exc}") from None
    return parse_spec(data, path)
