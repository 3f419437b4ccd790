"""The FastAPI application: ``create_app(settings=None)``.

    uvicorn --factory service.app:create_app          # settings from REACH_* (see service/settings.py)
    reach serve --store store --port 8000             # the same, from the command line (service/cli.py)

State on ``app.state``: ``settings``, ``registry`` (the loaded value functions, hot-reloaded), ``metrics`` (its own
Prometheus registry) and ``slices`` (the PNG renderer). The service only reads the store.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi

from reach.store import open_store
from service.auth import require_token
from service.errors import install_handlers
from service.limits import BodyLimitMiddleware
from service.metrics import Metrics, MetricsMiddleware
from service.models import QueryRequest
from service.registry import Registry
from service.routes import health, metrics, value_functions
from service.settings import Settings
from service.slices import SliceRenderer

log = logging.getLogger("service")

API_VERSION = "1.0.0"
DESCRIPTION = """\
HJ reachability value functions over HTTP. Answers come from the same numba kernel as the embedded client
(`clients.ValueFunction`), so an HTTP answer equals the embedded answer. Values are V_d = V0 - d in metres,
positive = safe. Queries take JSON or a binary form (`application/octet-stream`, little-endian rows).
"""


def _preload(registry: Registry) -> None:
    entries = registry.refresh_all()
    log.info("loaded %d value function(s) from %s%s", len(entries), registry.store.root,
             f"; problems: {registry.problems}" if registry.problems else "")


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app on ``settings.store`` (default: ``Settings()`` from the environment)."""
    settings = settings if settings is not None else Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.preload:
            await anyio.to_thread.run_sync(_preload, app.state.registry)
        yield

    app = FastAPI(
        title="reach",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        telemetry=None if settings.otel else {"tracing": False, "metrics": False, "logs": False,
                                               "operation_spans": False},
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.registry = Registry(open_store(settings.store), settings.reload_interval, app.state.metrics)
    app.state.slices = SliceRenderer()

    install_handlers(app)
    protected = [Depends(require_token)] if settings.token else []
    app.include_router(value_functions.router, dependencies=protected)
    app.include_router(metrics.router, dependencies=protected)
    app.include_router(health.router)

    # middleware: the last added is the outermost (metrics see every answer, 413s included)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept", "If-None-Match", "X-Reach-Dtype",
                           "X-Reach-Shape"],
            expose_headers=["ETag", "X-Reach-Shape", "X-Reach-Dtype", "X-Reach-Columns", "X-Reach-Safety-Distance"],
        )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            # the query body is read by the route (JSON or binary), so register its JSON schema by hand
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            body = QueryRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in body.pop("$defs", {}).items():
                components.setdefault(name, sub)
            components["QueryRequest"] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
