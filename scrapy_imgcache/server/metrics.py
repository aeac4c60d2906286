"""Prometheus metrics, one registry per app (never the process-global one).

A registry of its own lets several apps live in one process (tests, embedding) without
"duplicated timeseries" errors. Every label takes values from a fixed set, so the number of
series stays bounded whatever clients send: routes by their whole template, the prefix of a
mounted router included (``/images/{content_hash}``, ``/api/v1/images``; ``unmatched`` for a
path no route matches), never the raw path; methods as sent when they are one of HTTP's own
(:data:`METHODS`), ``other`` otherwise; statuses as answered.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: the methods labelled as themselves; any other is counted as ``other``
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"})


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "imgcache_http_requests",
            "HTTP requests answered, by method, route template and status",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "imgcache_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ("method", "route"),
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.uploads = Counter(
            "imgcache_uploads",
            "Images submitted to POST /images, by outcome (created, duplicate or the refusal reason)",
            ("outcome",),
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "imgcache_upload_bytes",
            "Bytes of images newly stored",
            registry=self.registry,
        )
        #: id of a mounted router's route -> its template with the prefix: recent FastAPI
        #: (0.165) hands the middleware the router's own route, whose template lacks it, so
        #: ``GET /api/v1/images`` was counted as ``/images`` (older ones hand over a copy
        #: whose template has it). Ids, because Starlette's routes compare by value.
        self._templates: dict[int, str] = {}

    def mounted(self, routes: list[Any], prefix: str) -> None:
        """Label ``routes`` (a router's, included under ``prefix``) with their whole template."""
        for route in routes:
            path = getattr(route, "path", None)
            if isinstance(path, str):
                self._templates[id(route)] = prefix + path

    def route(self, scope: Scope) -> str:
        """The route label of a request: the template of the route that answered it."""
        route = scope.get("route")
        path = getattr(route, "path", None)
        if not isinstance(path, str):
            return "unmatched"
        return self._templates.get(id(route), path)


class MetricsMiddleware:
    """Counts and times every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            route = self.metrics.route(scope)
            method = scope.get("method", "")
            method = method if method in METHODS else "other"
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)
