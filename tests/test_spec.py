"""Spec validation: every error names the file and the field; `reach compute` exits 2 and writes nothing."""

from __future__ import annotations

import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from reach.cli import main
from reach.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
QUAD = (DATA / "quad_tiny.toml").read_text()


def _write(tmp_path: Path, text: str, name: str = "bad_spec") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


BAD = {
    "unknown_model": (_replace(QUAD, 'model = "quadrotor"', 'model = "zeppelin"'), "model", "zeppelin"),
    "lo_ge_hi": (_replace(QUAD, "[grid.px]\nlo = -2.0\nhi = 2.0", "[grid.px]\nlo = 2.0\nhi = -2.0"),
                 "grid.px.hi", "greater than lo"),
    "lo_eq_hi": (_replace(QUAD, "[grid.py]\nlo = -2.0\nhi = 2.0", "[grid.py]\nlo = 1.0\nhi = 1.0"),
                 "grid.py.hi", "greater than lo"),
    "too_few_points": (_replace(QUAD, "[grid.vx]\nlo = -1.0\nhi = 1.0\npoints = 7",
                                "[grid.vx]\nlo = -1.0\nhi = 1.0\npoints = 2"), "grid.vx.points", "greater than"),
    "missing_field": (_replace(QUAD, "tolerance = 0.005\n", ""), "solver.tolerance", "missing"),
    "missing_section": (QUAD.split("[validation]")[0], "validation", "missing"),
    "missing_dim": (QUAD.replace("[grid.vy]\nlo = -1.0\nhi = 1.0\npoints = 7\n", ""), "grid.vy", "missing"),
    "foreign_dim": (_replace(QUAD, "[grid.vy]", "[grid.theta_r]"), "grid.theta_r", "not a state of model quadrotor"),
    "extra_field": (_replace(QUAD, "[solver]\n", "[solver]\nturbo = true\n"), "solver.turbo", "unknown field"),
    "unknown_game": (_replace(QUAD, '"worst_case"]', '"friendly"]'), "games", ""),
    "unknown_parameter": (_replace(QUAD, "[grid.px]", "[parameters]\nwarp = 9.0\n\n[grid.px]"),
                          "parameters.warp", "unknown parameter"),
    "gamma_without_d": (_replace(QUAD, "games = ", "gamma = 0.5\ngames = "), "safety_distance", "gamma"),
    "bad_scheme": (_replace(QUAD, 'scheme = "WENO3"', 'scheme = "magic"'), "solver", "magic"),
    "snapshot_after_te": (_replace(QUAD, "engagement_horizon = 0.4", "engagement_horizon = 0.4\n"
                                   "snapshot_horizons = [0.2, 0.8]"), "solver.snapshot_horizons", "0.8"),
    "bad_toml": ("model = \n", "invalid TOML", ""),
    # bounds: each of these used to pass validation and then fail (or never end) in or after the solve
    "negative_seed": (_replace(QUAD, "seed = 0", "seed = -1"), "validation.seed", "greater than or equal to 0"),
    "huge_points": (_replace(QUAD, "points = 11", f"points = {10**30}"), "grid.px.points", "less than or equal"),
    "too_many_nodes": (QUAD.replace("points = 7", "points = 9000"), "grid", "nodes exceed the limit"),
    "huge_lo": (_replace(QUAD, "lo = -2.0", "lo = -1e300"), "grid.px", "within"),
    "inf_engagement_horizon": (_replace(QUAD, "engagement_horizon = 0.4", "engagement_horizon = inf"),
                               "solver.engagement_horizon", "finite"),
    "huge_engagement_horizon": (_replace(QUAD, "engagement_horizon = 0.4", "engagement_horizon = 1e300"),
                                "solver.engagement_horizon", "solver steps"),
    "huge_max_horizon": (_replace(QUAD, "max_horizon = 1.0", "max_horizon = 1e300"), "solver.max_horizon",
                         "solver steps"),
    "tiny_window": (_replace(QUAD, "window = 0.2", "window = 1e-300"), "solver.max_horizon", "solver steps"),
    "tiny_decision_period": (_replace(QUAD, "[grid.px]", "[parameters]\ndecision_period = 1e-300\n\n[grid.px]"),
                             "solver.engagement_horizon", "solver steps"),
    "inf_gamma": (_replace(QUAD, "games = ", "gamma = inf\nsafety_distance = 0.5\ngames = "), "gamma", "finite"),
    "inf_d_with_gamma": (_replace(QUAD, "games = ", "gamma = 0.5\nsafety_distance = inf\ngames = "),
                         "safety_distance", "finite"),
    "huge_d_with_gamma": (_replace(QUAD, "games = ", "gamma = 0.5\nsafety_distance = 1e300\ngames = "),
                          "safety_distance", "farthest position"),
    "inf_margin": (_replace(QUAD, "margin = 0.02", "margin = inf"), "validation.margin", "finite"),
    "inf_validation_d": (_replace(QUAD, "seed = 0", "seed = 0\nsafety_distance = inf"),
                         "validation.safety_distance", "finite"),
    "too_many_samples": (_replace(QUAD, "n_samples = 64", "n_samples = 1000000000"), "validation.n_samples",
                         "less than or equal"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_names_field_and_file(tmp_path, case):
    text, field, fragment = BAD[case]
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as exc:
        load_spec(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert field in msg
    assert fragment in msg


@pytest.mark.parametrize("case", ["unknown_model", "lo_ge_hi", "too_few_points", "missing_field", "foreign_dim",
                                  "extra_field", "negative_seed", "huge_points", "inf_engagement_horizon",
                                  "huge_engagement_horizon", "inf_gamma", "inf_margin"])
def test_compute_bad_spec_exits_2_and_writes_nothing(tmp_path, capsys, case):
    text, field, _ = BAD[case]
    path = _write(tmp_path, text)
    store = tmp_path / "store"
    assert main(["compute", str(path), "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(path) in err and field in err
    assert not store.exists()


#: every float field of a spec (a path into the parsed TOML), with what it needs next to it to be checked
FLOAT_FIELDS = {
    "gamma": {"safety_distance": 0.5},
    "safety_distance": {"gamma": 0.5},
    "parameters.safety_distance": {},
    "grid.px.lo": {}, "grid.px.hi": {},
    "solver.cfl": {}, "solver.tolerance": {}, "solver.window": {}, "solver.max_horizon": {}, "solver.chunk": {},
    "solver.engagement_horizon": {}, "solver.snapshot_horizons.0": {},
    "conflict.safety_distances.1": {},
    "validation.margin": {}, "validation.safety_distance": {},
}


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("field", sorted(FLOAT_FIELDS))
def test_non_finite_numbers_are_rejected(field, value):
    data = tomllib.loads(QUAD)
    data.update(FLOAT_FIELDS[field])
    data["solver"]["snapshot_horizons"] = [0.2]
    *parents, last = field.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    with pytest.raises(SpecError) as exc:
        parse_spec(data, "x.toml")
    assert f"x.toml: {field}: Input should be a finite number" in str(exc.value)


def test_console_script_exit_status(tmp_path):
    path = _write(tmp_path, BAD["lo_ge_hi"][0])
    store = tmp_path / "store"
    reach = Path(sys.executable).parent / "reach"
    cmd = [str(reach)] if reach.exists() else [sys.executable, "-m", "reach.cli"]
    out = subprocess.run(cmd + ["compute", str(path), "--store", str(store)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert "grid.px.hi" in out.stderr and str(path) in out.stderr
    assert not store.exists()


def test_missing_file(tmp_path, capsys):
    assert main(["compute", str(tmp_path / "nope.toml"), "--store", str(tmp_path / "s")]) == 2
    assert "no such spec file" in capsys.readouterr().err


def test_spec_name_must_be_safe(tmp_path):
    path = _write(tmp_path, QUAD, name="Bad-Name")
    with pytest.raises(SpecError, match="spec name"):
        load_spec(path)


def test_valid_spec_and_hash(tmp_path):
    spec = load_spec(DATA / "quad_tiny.toml")
    assert spec.name == "quad_tiny" and spec.games == ("cooperative", "worst_case")
    assert spec.points == (11, 11, 7, 7) and spec.lo == (-2.0, -2.0, -1.0, -1.0)
    assert len(spec.hash) == 64
    # same content elsewhere -> same hash; comments and formatting don't matter
    copy = _write(tmp_path, "# a comment\n" + QUAD, name="other")
    assert load_spec(copy).hash == spec.hash
    changed = _write(tmp_path, _replace(QUAD, "seed = 0", "seed = 1"), name="changed")
    assert load_spec(changed).hash != spec.hash
    settings = spec.solver_settings()
    assert settings.engagement_horizon == 0.4 and settings.scheme == "WENO3"


def test_periodic_dim_defaults_to_full_turn():
    spec = load_spec(DATA / "taxi_tiny.toml")
    i = spec.model.state_names.index("theta_r")
    assert spec.lo[i] == -math.pi and spec.hi[i] == math.pi
    data = tomllib.loads((DATA / "taxi_tiny.toml").read_text())
    data["grid"]["theta_r"] = {"lo": 0.0, "hi": 3.0, "points": 8}
    with pytest.raises(SpecError, match="grid.theta_r"):
        parse_spec(data, "x.toml")


def test_parameter_overrides():
    data = tomllib.loads(QUAD)
    data["parameters"] = {"safety_distance": 0.3}
    spec = parse_spec(data, "p.toml")
    assert spec.model.safety_distance == 0.3
    assert spec.validation_safety_distance == 0.3


def test_gamma_spec_is_for_one_d():
    data = tomllib.loads(QUAD)
    data["gamma"] = 0.5
    data["safety_distance"] = 0.5
    spec = parse_spec(data, "g.toml")
    assert spec.discounted_safety_distance == 0.5 and spec.gamma == 0.5
    data = tomllib.loads(QUAD)
    data["safety_distance"] = 0.5
    with pytest.raises(SpecError, match="safety_distance"):
        parse_spec(data, "g.toml")


@pytest.mark.parametrize("path", sorted((ROOT / "grids").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_specs_are_valid(path):
    spec = load_spec(path)
    assert set(spec.games) == {"cooperative", "worst_case"}
    assert spec.config.solver.engagement_horizon == pytest.approx(4 * spec.model.decision_period)
