"""`reach` command line end to end on the tiny store (list, info, plot, compute, delegates, run)."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from reach import cli
from reach.cli import main
from reach.store import open_store

DATA = Path(__file__).resolve().parent / "data"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_list(tiny_store, capsys):
    assert main(["list", "--store", str(tiny_store)]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["NAME", "MODEL", "GAME"]
    for name in ("quad_tiny/cooperative", "quad_tiny/worst_case", "taxi_tiny/cooperative", "taxi_tiny/worst_case"):
        assert any(line.startswith(name + " ") for line in lines), name
    row = next(line for line in lines if line.startswith("quad_tiny/worst_case"))
    assert "quadrotor" in row and "0.5->" in row and "%" in row and "0.4" in row


def test_list_uses_env_store(tiny_store, capsys, monkeypatch):
    monkeypatch.setenv("REACH_STORE", str(tiny_store))
    assert main(["list"]) == 0
    assert "taxi_tiny/worst_case" in capsys.readouterr().out


def test_list_empty_store(tmp_path, capsys):
    assert main(["list", "--store", str(tmp_path / "none")]) == 0
    assert "no value functions" in capsys.readouterr().out


def test_info_json(tiny_store, capsys):
    assert main(["info", "taxi_tiny/worst_case", "--store", str(tiny_store)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["name"] == "taxi_tiny/worst_case"
    assert info["attrs"]["model"] == "air_taxi" and info["attrs"]["game"] == "worst_case"
    assert info["attrs"]["content_hash"] == open_store(tiny_store).version("taxi_tiny/worst_case")
    assert info["dims"]["theta_r"] == 8 and info["coords"]["theta_r"]["periodic"] is True
    assert [r["safety_distance"] for r in info["conflict_range"]] == [152.4, 457.2]
    assert info["snapshot_horizons"][-1] == 4.0


@pytest.mark.parametrize("name", ["nope/cooperative", "../etc/cooperative", "quad_tiny/friendly"])
def test_info_unknown_name(tiny_store, capsys, name):
    assert main(["info", name, "--store", str(tiny_store)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err


@pytest.mark.parametrize("name,extra", [
    ("quad_tiny/cooperative", []),
    ("quad_tiny/worst_case", ["--velocity", "0.5,-0.5,-1,0", "--safety-distance", "0.25"]),
    ("taxi_tiny/worst_case", ["--heading", "pi,pi/2", "--speeds", "56.6,40"]),
    ("taxi_tiny/cooperative", ["--heading", "0", "--safety-distance", "152.4"]),
])
def test_plot_png(tiny_store, tmp_path, capsys, name, extra):
    out = tmp_path / "plots" / "safe.png"
    assert main(["plot", name, "--out", str(out), "--store", str(tiny_store)] + extra) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize("name,extra,fragment", [
    ("quad_tiny/worst_case", ["--heading", "1"], "--heading"),
    ("taxi_tiny/worst_case", ["--velocity", "1,1"], "--velocity"),
    ("taxi_tiny/worst_case", ["--speeds", "10,20"], "v_b = 20"),
    ("quad_tiny/worst_case", ["--velocity", "1,x"], "--velocity"),
    ("taxi_tiny/cooperative", ["--heading", "pi/0"], "pi/0"),
    ("taxi_tiny/cooperative", ["--heading", "1,-pi/0.0"], "--heading"),
])
def test_plot_bad_request(tiny_store, tmp_path, capsys, name, extra, fragment):
    out = tmp_path / "x.png"
    assert main(["plot", name, "--out", str(out), "--store", str(tiny_store)] + extra) == 2
    err = capsys.readouterr().err
    assert fragment in err and not out.exists()
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["plot", "plot_nested", "plot_onto_dir", "compute", "compute_nested"])
def test_output_path_not_a_directory(tiny_store, tmp_path, capsys, monkeypatch, command):
    """An existing regular file where a directory must go: one line naming it, exit 2, before any computation."""
    import reach.compute

    def no_compute(*args, **kwargs):
        raise AssertionError("computed although the store path is unusable")

    monkeypatch.setattr(reach.compute, "compute_spec", no_compute)
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    plot = ["plot", "quad_tiny/cooperative", "--store", str(tiny_store), "--out"]
    compute = ["compute", str(DATA / "quad_tiny.toml"), "--quiet", "--store"]
    argv, named = {
        "plot": (plot + [str(afile / "x.png")], afile),
        "plot_nested": (plot + [str(afile / "sub" / "x.png")], afile),
        "plot_onto_dir": (plot + [str(tmp_path)], tmp_path),
        "compute": (compute + [str(afile)], afile),
        "compute_nested": (compute + [str(afile / "store")], afile),
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(named) in err
    assert afile.read_text() == "not a directory\n"


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["plot", "quad_tiny/cooperative"]) == 2  # --out missing


def test_compute_then_skip(tmp_path, capsys):
    spec = tmp_path / "mini.toml"
    spec.write_text((DATA / "quad_tiny.toml").read_text().replace("n_samples = 64", "n_samples = 8")
                    .replace('games = ["cooperative", "worst_case"]', 'games = ["worst_case"]'))
    store = tmp_path / "store"
    assert main(["compute", str(spec), "--store", str(store), "--quiet"]) == 0
    assert "mini/worst_case: computed" in capsys.readouterr().out
    assert main(["compute", str(spec), "--store", str(store), "--quiet"]) == 0
    assert "up to date" in capsys.readouterr().out
    # a different spec under the same name is refused without --overwrite
    spec.write_text(spec.read_text().replace("seed = 0", "seed = 3"))
    assert main(["compute", str(spec), "--store", str(store), "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["compute", str(spec), "--store", str(store), "--quiet", "--overwrite"]) == 0
    assert open_store(store).info("mini/worst_case")["validation"]["seed"] == 3


def test_delegate_missing_module_is_clear(monkeypatch, capsys):
    monkeypatch.setitem(cli._DELEGATES, "serve", "no_such_package_xyz.cli")
    assert main(["serve"]) == 1
    err = capsys.readouterr().err
    assert "reach serve" in err and "no_such_package_xyz.cli" in err
    # other subcommands are unaffected
    assert main(["list", "--store", "/nonexistent-store-dir"]) == 0


def _fake_delegate(monkeypatch, command: str, calls: list):
    mod = types.ModuleType("fake_delegate")

    def add_arguments(parser):
        parser.add_argument("--port", type=int, default=8123)
        return parser

    def run(args):
        calls.append(args)
        return 0

    mod.add_arguments, mod.run = add_arguments, run
    monkeypatch.setitem(sys.modules, "fake_delegate", mod)
    monkeypatch.setitem(cli._DELEGATES, command, "fake_delegate")


def test_serve_and_simulate_delegate(monkeypatch):
    calls: list = []
    _fake_delegate(monkeypatch, "serve", calls)
    _fake_delegate(monkeypatch, "simulate", calls)
    assert main(["serve", "--port", "9000"]) == 0
    assert main(["simulate"]) == 0
    assert [c.port for c in calls] == [9000, 8123]


def test_run_computes_missing_then_serves(tiny_store_copy, monkeypatch, capsys):
    calls: list = []
    _fake_delegate(monkeypatch, "serve", calls)
    monkeypatch.setattr(cli, "DEFAULT_SPECS", (str(DATA / "quad_tiny.toml"), str(DATA / "taxi_tiny.toml")))
    store = open_store(tiny_store_copy)
    store.remove("taxi_tiny/cooperative")
    assert main(["run", "--store", str(tiny_store_copy), "--port", "9001", "--quiet"]) == 0
    assert store.exists("taxi_tiny/cooperative")
    out = capsys.readouterr().out
    assert "quad_tiny/worst_case" in out and "taxi_tiny/cooperative" in out
    assert len(calls) == 1 and calls[0].port == 9001 and calls[0].store == str(tiny_store_copy)


def test_console_script_info(tiny_store):
    reach = Path(sys.executable).parent / "reach"
    cmd = [str(reach)] if reach.exists() else [sys.executable, "-m", "reach.cli"]
    out = subprocess.run(cmd + ["info", "quad_tiny/cooperative", "--store", str(tiny_store)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["attrs"]["model"] == "quadrotor"


def test_run_without_service_still_computes(tiny_store_copy, monkeypatch, capsys):
    monkeypatch.setitem(cli._DELEGATES, "serve", "no_such_package_xyz.cli")
    monkeypatch.setattr(cli, "DEFAULT_SPECS", (str(DATA / "quad_tiny.toml"), str(DATA / "taxi_tiny.toml")))
    assert main(["run", "--store", str(tiny_store_copy), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "quad_tiny/cooperative" in captured.out
    assert "reach serve" in captured.err and "no_such_package_xyz.cli" in captured.err
