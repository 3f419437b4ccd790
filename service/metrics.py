"""Prometheus metrics of the service: request counts, latency histograms and points served.

Each app gets its own :class:`prometheus_client.CollectorRegistry`, so several apps (tests) never clash.
The instrumentation is a plain ASGI middleware (no BaseHTTPMiddleware: it adds a task per request).
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The collectors of one app."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "reach_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "reach_http_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its answer.",
            ("method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.points = Counter(
            "reach_points_served",
            "States evaluated, by value function and wire format (json or binary).",
            ("name", "format"),
            registry=self.registry,
        )
        self.loaded = Gauge(
            "reach_value_functions_loaded",
            "Value functions held in memory.",
            registry=self.registry,
        )
        self.reloads = Counter(
            "reach_value_function_loads",
            "Value-function versions loaded from the store (start-up and hot reloads), by outcome.",
            ("name", "outcome"),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (bounded label cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._children: dict[tuple[str, str, int], tuple] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_template(scope)
            method = scope.get("method", "")
            key = (method, route, status)
            children = self._children.get(key)
            if children is None:  # labels() costs a lock and a dict lookup per call: keep the children
                children = self._children[key] = (self.metrics.requests.labels(method, route, str(status)),
                                                  self.metrics.latency.labels(method, route))
            children[0].inc()
            children[1].observe(time.perf_counter() - start)
