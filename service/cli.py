"""``reach serve`` (and the serving half of ``reach run``): start the FastAPI app under uvicorn.

    reach serve [--store DIR] [--host H] [--port P] [--workers N] [--reload-interval S] [--max-points N]
                [--max-body-bytes B] [--cors-origins O,O] [--no-preload] [--log-level L] [--no-access-log]

Every option falls back to its ``REACH_*`` environment variable (service/settings.py), then to the default. The
bearer token is read from ``REACH_TOKEN`` only (never from the command line, where ``ps`` would show it). Before
uvicorn starts, a working ``curl`` example is printed to stdout.
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import socket
import sys
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The serve options (``reach serve`` and ``reach run``)."""
    g = parser.add_argument_group("service")
    g.add_argument("--store", default=None, metavar="DIR",
                   help="value-function store, read only (default $REACH_STORE or ./store)")
    g.add_argument("--host", default=None,
                   help=f"interface to listen on (default $REACH_HOST or {DEFAULT_HOST}; 0.0.0.0 for all)")
    g.add_argument("--port", type=int, default=None, help=f"TCP port (default $REACH_PORT or {DEFAULT_PORT})")
    g.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    g.add_argument("--reload-interval", type=float, default=None, metavar="S",
                   help="seconds between checks for a newly published version (default $REACH_RELOAD_INTERVAL or 1)")
    g.add_argument("--max-points", type=int, default=None, metavar="N",
                   help="most states in one query (default $REACH_MAX_POINTS or 1000000)")
    g.add_argument("--max-body-bytes", type=int, default=None, metavar="B",
                   help="largest request body (default $REACH_MAX_BODY_BYTES or 64 MiB)")
    g.add_argument("--cors-origins", default=None, metavar="O[,O...]",
                   help="origins allowed by CORS (default $REACH_CORS_ORIGINS; empty = CORS off)")
    g.add_argument("--no-preload", dest="preload", action="store_false", default=None,
                   help="load value functions on first use instead of at start-up")
    g.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    g.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                   help="uvicorn access log (default on)")
    return parser


def settings_from_args(args: argparse.Namespace):
    """``Settings`` from the environment, overridden by the options given on the command line."""
    from service.settings import Settings

    overrides: dict[str, Any] = {}
    for field in ("store", "reload_interval", "max_points", "max_body_bytes", "cors_origins", "preload"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    return Settings(**overrides)


# ----------------------------------------------------------------------------------------- banner
def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _nice(x: float) -> float:
    return float(f"{x:.2g}")


def example_state(store, name: str) -> list[float] | None:
    """A state inside the grid of ``name``: the other agent ahead at about a third of the extent, default slice."""
    import xarray as xr

    from reach.models import get_model

    try:
        info = store.info(name)
        model = get_model(info["model"])
        params = info.get("model_parameters") or model.parameters or {}
        with xr.open_zarr(store.path(name), consolidated=False, zarr_format=3, chunks=None) as ds:
            state: list[float] = []
            closing = True
            for i, dim in enumerate(model.state_names):
                c = ds[dim].values
                lo, hi = float(c[0]), float(c[-1])
                if i == 0:
                    state.append(_nice(lo + 2.0 * (hi - lo) / 3.0))
                elif i in tuple(model.position_dims):
                    state.append(0.0 if lo <= 0.0 <= hi else _nice(0.5 * (lo + hi)))
                elif model.periodic[i]:
                    state.append(round(math.pi, 4))  # head-on
                elif lo <= 0.0 <= hi:
                    state.append(_nice(-0.25 * (hi - lo)) if closing and lo < 0 else 0.0)  # closing in along x
                    closing = False
                elif params.get("v_nominal") is not None and lo <= float(params["v_nominal"]) <= hi:
                    state.append(float(params["v_nominal"]))
                else:
                    state.append(_nice(0.5 * (lo + hi)))
        return state
    except Exception:  # the banner must never keep the service from starting
        return None


def curl_example(settings, host: str, port: int) -> str:
    """The start-up banner: where the service listens and a ``curl`` query that works against this store."""
    from reach.store import open_store

    store = open_store(settings.store)
    base = f"http://{_url_host(host)}:{port}"
    try:
        names = store.list()
    except OSError:
        names = []
    auth = ' -H "Authorization: Bearer $REACH_TOKEN"' if settings.token else ""
    lines = [f"reach service on {base} (store {store.root}, {len(names)} value function(s)); "
             f"API docs at {base}/docs"]
    if not names:
        lines.append(f"the store is empty: compute value functions first (reach compute grids/quadrotor.toml "
                     f"--store {shlex.quote(str(store.root))})")
        return "\n".join(lines)
    preferred = [n for n in ("quadrotor/cooperative",) if n in names] + [n for n in names if n.endswith("/cooperative")]
    name = (preferred or names)[0]
    state = example_state(store, name)
    body = '{"states": [[' + ", ".join(f"{x:g}" for x in (state or [])) + ']], "gradient": true}'
    lines.append("try:")
    lines.append(f"  curl -s{auth} {base}/v1/value-functions")
    if state is not None:
        lines.append(f"  curl -s{auth} -X POST {base}/v1/value-functions/{name}/query "
                     f"-H 'Content-Type: application/json' -d {shlex.quote(body)}")
    return "\n".join(lines)


def _port_free(host: str, port: int) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


# ------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; returns the exit status."""
    import uvicorn

    from service.app import create_app

    from pydantic import ValidationError

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"reach: error: invalid service settings (options or REACH_* variables): {problems}", file=sys.stderr)
        return 2
    host = getattr(args, "host", None) or os.environ.get("REACH_HOST") or DEFAULT_HOST
    port = getattr(args, "port", None)
    if port is None:
        try:
            port = int(os.environ.get("REACH_PORT") or DEFAULT_PORT)
        except ValueError:
            print(f"reach: error: REACH_PORT must be an integer, got {os.environ['REACH_PORT']!r}", file=sys.stderr)
            return 2
    workers = max(1, int(getattr(args, "workers", 1) or 1))
    problem = _port_free(host, port)
    if problem:
        print(f"reach: error: {problem}", file=sys.stderr)
        return 1
    if not settings.store.is_dir():
        print(f"reach: warning: store {str(settings.store)!r} does not exist yet; /readyz answers 503 until "
              "value functions are published there", file=sys.stderr)
    print(curl_example(settings, host, port), flush=True)
    common = dict(host=host, port=port, log_level=getattr(args, "log_level", "info"),
                  access_log=bool(getattr(args, "access_log", True)), proxy_headers=False, server_header=False)
    if workers == 1:
        uvicorn.run(create_app(settings), **common)
    else:  # each worker process builds its own app from the environment
        env = {"REACH_STORE": str(settings.store), "REACH_RELOAD_INTERVAL": repr(settings.reload_interval),
               "REACH_MAX_POINTS": str(settings.max_points), "REACH_MAX_BODY_BYTES": str(settings.max_body_bytes),
               "REACH_CORS_ORIGINS": ",".join(settings.cors_origins), "REACH_PRELOAD": str(settings.preload)}
        os.environ.update(env)
        uvicorn.run("service.app:create_app", factory=True, workers=workers, **common)
    return 0
