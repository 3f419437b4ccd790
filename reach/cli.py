"""The ``reach`` command line.

    reach compute SPEC [--store DIR] [--overwrite] [--quiet]
    reach list [--store DIR]
    reach info NAME [--store DIR]
    reach plot NAME --out PNG [--heading H[,H...] | --speeds VA,VB | --velocity VX,VY] [--safety-distance D]
    reach serve ...        (service.cli)
    reach simulate ...     (clients.sim.cli)
    reach run [--store DIR] [serve options]   compute the default specs if missing, summarise, serve

The store defaults to ``$REACH_STORE`` or ``./store``. Errors print one line to stderr; the exit status is 2 for
bad specs and usage, 1 for other failures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DEFAULT_SPECS = ("grids/quadrotor.toml", "grids/air_taxi.toml")
_DELEGATES = {"serve": "service.cli", "simulate": "clients.sim.cli"}


class _UsageError(Exception):
    """Bad command-line input (exit status 2)."""


def _err(msg: str) -> None:
    print(f"reach: error: {msg}", file=sys.stderr)


def _store(args):
    from reach.store import open_store

    return open_store(getattr(args, "store", None))


def _floats(text: str, n: int | None, what: str) -> list[float]:
    try:
        vals = [_parse_float(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise _UsageError(f"{what}: expected comma-separated numbers, got {text!r}") from None
    if n is not None and len(vals) != n:
        raise _UsageError(f"{what}: expected {n} comma-separated numbers, got {text!r}")
    if not vals or not all(math.isfinite(v) for v in vals):
        raise _UsageError(f"{what}: expected finite numbers, got {text!r}")
    return vals


def _parse_float(token: str) -> float:
    """A float, also accepting multiples of pi such as ``pi``, ``-pi/2``, ``0.5pi``."""
    t = token.strip().lower().replace(" ", "")
    if "pi" in t:
        sign = -1.0 if t.startswith("-") else 1.0
        t = t.lstrip("+-")
        num, _, den = t.partition("/")
        coef = num.replace("*", "").replace("pi", "")
        value = (float(coef) if coef else 1.0) * math.pi
        if den:
            divisor = float(den)
            if divisor == 0:  # a ZeroDivisionError would escape the callers' ValueError handling
                raise ValueError(f"division by zero in {token!r}")
            value /= divisor
        return sign * value
    return float(t)


def output_dir_problem(out: Path, writable: bool = True) -> str | None:
    """Why ``out`` cannot be (made) a directory, writable if asked, or None; creates nothing (`reach simulate`'s
    --out, the store and `reach plot`'s folder are checked before any computation)."""
    if out.exists() or out.is_symlink():
        if out.is_dir():
            return None if not writable or os.access(out, os.W_OK | os.X_OK) else "the directory is not writable"
        return "is a file, not a directory" if out.is_file() else "is not a directory"
    parent = out.absolute().parent
    while not parent.exists():    # the nearest existing ancestor is where mkdir(parents=True) starts
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot create it: {parent} is a file, not a directory"
    if writable and not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create it: {parent} is not writable"
    return None


def _check_dir(path: Path, what: str) -> None:
    """Usage error unless ``path`` is a directory or can be created as one (a read-only store may still serve)."""
    problem = output_dir_problem(path, writable=False)
    if problem:
        raise _UsageError(f"{what}: {path}: {problem}")


# ------------------------------------------------------------------------------------------ commands
def cmd_compute(args) -> int:
    from reach.compute import compute_spec
    from reach.spec import load_spec

    spec = load_spec(args.spec)  # SpecError -> exit 2 before anything is written
    store = _store(args)
    _check_dir(store.root, "store")
    outcomes = compute_spec(spec, store, overwrite=args.overwrite, progress=not args.quiet)
    for o in outcomes:
        if o.status == "skipped":
            print(f"{o.name}: up to date ({(o.content_hash or '')[:16]}), skipped")
        else:
            resumed = f", resumed from {o.resumed_from:g} s" if o.resumed_from else ""
            print(f"{o.name}: computed in {o.seconds:.1f} s{resumed} -> {(o.content_hash or '')[:16]}")
    return EXIT_OK


def _rc_summary(store, name: str) -> str:
    import xarray as xr

    try:
        with xr.open_zarr(store.path(name), consolidated=False, zarr_format=3, chunks=None) as ds:
            sd = ds["safety_distance"].values if "safety_distance" in ds.coords else []
            rc = ds["conflict_range"].values if "conflict_range" in ds else []
            return ", ".join(f"{d:g}->{r:.4g}" for d, r in zip(sd, rc)) or "-"
    except Exception as exc:  # a damaged entry must not break the listing
        return f"unreadable ({type(exc).__name__})"


def cmd_list(args) -> int:
    store = _store(args)
    names = store.list()
    if not names:
        print(f"(no value functions in {store.root})")
        return EXIT_OK
    rows = [("NAME", "MODEL", "GAME", "HORIZON_S", "CONVERGED", "R_C (d->R_c, m)", "FALSIFIED")]
    for name in names:
        try:
            info = store.info(name)
        except Exception as exc:
            rows.append((name, "?", "?", "?", "?", f"unreadable: {exc}", "?"))
            continue
        val = info.get("validation") or {}
        rate = val.get("falsification_rate")
        rows.append((
            name, str(info.get("model")), str(info.get("game")), f"{float(info.get('horizon') or 0):g}",
            str(info.get("converged")), _rc_summary(store, name),
            "-" if rate is None else f"{100 * float(rate):.2f}%",
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return EXIT_OK


def info_dict(store, name: str) -> dict:
    """``reach info``: attrs plus dims, variables and the R_c table (JSON-ready)."""
    import xarray as xr

    from reach.store import jsonable

    info = store.info(name)
    out = {"name": name, "path": str(store.path(name)), "attrs": info}
    with xr.open_zarr(store.path(name), consolidated=False, zarr_format=3, chunks=None) as ds:
        out["dims"] = {str(k): int(v) for k, v in ds.sizes.items()}
        out["variables"] = {str(k): {"dims": list(map(str, v.dims)), "dtype": str(v.dtype)}
                            for k, v in ds.data_vars.items()}
        out["coords"] = {}
        for dim in info.get("state_names", []):
            c = ds[dim]
            out["coords"][dim] = {"lo": float(c.values[0]), "hi": float(c.values[-1]), "points": int(c.size),
                                  "units": c.attrs.get("units"), "periodic": bool(int(c.attrs.get("periodic", 0)))}
        if "conflict_range" in ds:
            out["conflict_range"] = [{"safety_distance": float(d), "conflict_range": float(r)}
                                     for d, r in zip(ds["safety_distance"].values, ds["conflict_range"].values)]
        if "horizon" in ds.coords:
            out["snapshot_horizons"] = [float(h) for h in ds["horizon"].values]
    return jsonable(out)


def cmd_info(args) -> int:
    print(json.dumps(info_dict(_store(args), args.name), indent=2, sort_keys=True))
    return EXIT_OK


def _plot_slices(ds, args) -> list[dict[str, float]]:
    names = list(ds.attrs["state_names"])
    model = ds.attrs.get("model")
    params = ds.attrs.get("model_parameters") or {}
    rest = names[2:]
    given = [o for o in ("heading", "speeds", "velocity") if getattr(args, o) is not None]
    if model == "air_taxi" or rest == ["theta_r", "v_a", "v_b"]:
        if args.velocity is not None:
            raise _UsageError(f"--velocity is for the quadrotor; {args.name} takes --heading and --speeds")
        headings = _floats(args.heading, None, "--heading") if args.heading is not None else [math.pi]
        nominal = float(params.get("v_nominal", 56.6))
        speeds = _floats(args.speeds, 2, "--speeds") if args.speeds is not None else [nominal, nominal]
        return [{"theta_r": h, "v_a": speeds[0], "v_b": speeds[1]} for h in headings]
    if rest == ["vx", "vy"]:
        if args.heading is not None or args.speeds is not None:
            raise _UsageError(f"--heading/--speeds are for the air taxi; {args.name} takes --velocity vx,vy")
        vel = _floats(args.velocity, None, "--velocity") if args.velocity is not None else [0.0, 0.0]
        if len(vel) % 2:
            raise _UsageError("--velocity: expected pairs vx,vy[,vx,vy...]")
        return [{"vx": vel[i], "vy": vel[i + 1]} for i in range(0, len(vel), 2)]
    if given:
        raise _UsageError(f"{args.name}: {', '.join('--' + g for g in given)} not supported for states {names}")
    raise _UsageError(f"{args.name}: don't know how to slice states {names}")


def cmd_plot(args) -> int:
    from reach.plot import PlotError, plot_safe_set

    out = Path(args.out)
    if out.is_dir():
        raise _UsageError(f"--out: {out} is a directory")
    _check_dir(out.parent, "--out")
    store = _store(args)
    ds = store.open(args.name)
    slices = _plot_slices(ds, args)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        summary = plot_safe_set(ds, out, slices, safety_distance=args.safety_distance)
    except PlotError as exc:
        raise _UsageError(str(exc)) from None
    except OSError as exc:  # e.g. no permission: one line, not a traceback
        raise RuntimeError(f"--out: cannot write {out}: {exc.strerror or exc}") from None
    rc = summary["conflict_range"]
    print(f"{out}: safe set of {args.name} at d = {summary['safety_distance']:g} m"
          + (f", R_c = {rc:g} m" if rc is not None else ""))
    return EXIT_OK


def _delegate_module(command: str):
    modname = _DELEGATES[command]
    try:
        return importlib.import_module(modname)
    except ImportError as exc:
        raise RuntimeError(f"'reach {command}' is unavailable: cannot import {modname} ({exc})") from None


def cmd_delegate(args) -> int:
    module = args._delegate_module
    rc = module.run(args)
    return int(rc or 0)


def cmd_run(args) -> int:
    from reach.compute import compute_spec
    from reach.spec import load_spec

    store = _store(args)
    _check_dir(store.root, "store")
    root = Path(__file__).resolve().parent.parent
    for rel in DEFAULT_SPECS:
        path = Path(rel) if Path(rel).exists() else root / rel
        spec = load_spec(path)
        missing = [g for g in spec.games if not store.exists(spec.value_function_name(g))]
        if missing:
            print(f"computing {spec.name} ({', '.join(missing)}) into {store.root} ...", file=sys.stderr)
            compute_spec(spec, store, overwrite=False, progress=not args.quiet)
    print(f"store {store.root}:")
    cmd_list(args)
    if getattr(args, "store", None) is None:
        args.store = str(store.root)
    module = args._delegate_module
    if module is None:
        raise RuntimeError(args._delegate_problem)
    return int(module.run(args) or 0)


# ------------------------------------------------------------------------------------------ parser
def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, metavar="DIR",
                   help="value-function store (default $REACH_STORE or ./store)")


def build_parser(delegate_for: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; ``delegate_for`` ('serve' | 'simulate' | 'run') loads that delegate's options."""
    parser = argparse.ArgumentParser(prog="reach", description="HJ reachability value functions: compute, "
                                     "store, inspect, plot, serve.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("compute", help="solve and publish the value functions of a spec")
    p.add_argument("spec", metavar="SPEC", help="spec TOML file (e.g. grids/quadrotor.toml)")
    _add_store(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing value functions")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compute)

    p = sub.add_parser("list", help="list the published value functions")
    _add_store(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="metadata of one value function (JSON)")
    p.add_argument("name", metavar="NAME", help="<spec>/<game>, e.g. quadrotor/cooperative")
    _add_store(p)
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("plot", help="plot the safe set {V0 >= d} on the position plane (PNG)")
    p.add_argument("name", metavar="NAME", help="<spec>/<game>")
    p.add_argument("--out", required=True, metavar="PNG", help="output PNG file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--heading", metavar="H[,H...]", help="relative heading(s) theta_r in rad (air taxi; "
                   "'pi', '-pi/2' accepted; default pi)")
    p.add_argument("--speeds", metavar="VA,VB", help="ego and other speeds in m/s (air taxi; default nominal)")
    g.add_argument("--velocity", metavar="VX,VY[,VX,VY...]", help="relative velocity (quadrotor; default 0,0)")
    p.add_argument("--safety-distance", type=float, default=None, metavar="D",
                   help="safety distance d in m (default: the model's)")
    _add_store(p)
    p.set_defaults(func=cmd_plot)

    for command, help_text in (("serve", "serve the store over HTTP (service.cli)"),
                               ("simulate", "run the multi-agent simulator (clients.sim.cli)")):
        p = sub.add_parser(command, help=help_text)
        if delegate_for == command:
            module = _delegate_module(command)
            module.add_arguments(p)
            p.set_defaults(func=cmd_delegate, _delegate_module=module)
        else:
            p.set_defaults(func=None)

    p = sub.add_parser("run", help="compute the default specs if missing, print a summary, then serve")
    p.add_argument("--quiet", action="store_true", help="no progress bar while computing")
    if delegate_for == "run":
        try:
            module = _delegate_module("serve")
        except RuntimeError as exc:  # still compute and summarise; serving then fails with this message
            module, problem = None, str(exc)
        else:
            module.add_arguments(p)
            problem = None
        if "--store" not in p._option_string_actions:
            _add_store(p)
        p.set_defaults(func=cmd_run, _delegate_module=module, _delegate_problem=problem)
    else:
        p.set_defaults(func=None)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    for tok in argv:
        if not tok.startswith("-"):
            return tok
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_of(argv)
    try:
        parser = build_parser(command if command in ("serve", "simulate", "run") else None)
    except RuntimeError as exc:
        _err(str(exc))
        return EXIT_FAIL
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed its usage line
        return int(exc.code) if exc.code is not None else EXIT_USAGE
    return run_args(args)


def run_args(args) -> int:
    from reach.models import UnknownModelError
    from reach.spec import SpecError
    from reach.store import ExistsError, IntegrityError, StoreError, UnknownValueFunctionError

    if getattr(args, "store", None) is None and os.environ.get("REACH_STORE"):
        args.store = os.environ["REACH_STORE"]
    if getattr(args, "func", None) is None:
        _err(f"'{getattr(args, 'command', '')}' could not be set up")
        return EXIT_USAGE
    try:
        return int(args.func(args) or 0)
    except (SpecError, _UsageError, UnknownModelError) as exc:
        _err(str(exc))
        return EXIT_USAGE
    except UnknownValueFunctionError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except (ExistsError, IntegrityError, StoreError) as exc:
        _err(str(exc))
        return EXIT_FAIL
    except KeyboardInterrupt:
        _err("interrupted (a checkpoint, if any, is kept: re-run to resume)")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except RuntimeError as exc:
        _err(str(exc))
        return EXIT_FAIL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
