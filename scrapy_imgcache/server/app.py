"""The imgcache REST service: an ASGI app made from a store by :func:`create_app`.

It speaks the contract of the published ``dwilson-imgcache-client`` (docs/server.md), so
that client works against it unmodified. The routes live in small modules: the imgcache API
(:mod:`.images`), the service's own (:mod:`.admin`) and, mounted by the CLI, the VisualSnoop
collections API (:mod:`scrapy_imgcache.visualsnoop.api`).
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, FastAPI

from ..store.base import Store
from .admin import admin_router
from .auth import HEADER, ApiKeys
from .browsing import browse_router
from .common import FORM_OVERHEAD, install_error_handlers
from .docs import install_docs
from .images import Service, images_router
from .limits import BodyLimitMiddleware
from .metrics import Metrics, MetricsMiddleware


def create_app(
    store: Store,
    *,
    keys: ApiKeys | None = None,
    max_upload_bytes: int | None = None,
    public_serve: bool = False,
    routers: Sequence[tuple[APIRouter, str]] = (),
    web: bool = True,
) -> FastAPI:
    """The service over ``store``; nothing is global, so several apps can share a process.

    ``max_upload_bytes`` caps an image (default: the store inspector's byte limit);
    ``public_serve`` lets browsers fetch ``/serve/{hash}`` without a key;
    ``routers`` are extra ``(router, prefix)`` pairs to mount (the VisualSnoop API);
    ``web``: the web page under ``/web/`` (:mod:`.web`).
    """
    service = Service(
        store=store,
        keys=keys or ApiKeys(),
        metrics=Metrics(),
        max_image=max_upload_bytes or store.inspector.limits.max_bytes,
        public_serve=public_serve,
    )
    app = FastAPI(
        title="imgcache",
        version="1",
        description="A shared, content-addressed image cache (the imgcache REST API). See docs/server.md.",
        docs_url=None,  # served by install_docs, from the package's files instead of a CDN
        redoc_url=None,
    )
    install_docs(app)
    app.state.metrics = service.metrics  # this app's own Prometheus registry, for embedders
    app.add_middleware(BodyLimitMiddleware, max_bytes=service.max_image + FORM_OVERHEAD)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    install_error_handlers(app, HEADER)
    app.include_router(admin_router(service))
    app.include_router(browse_router(service))  # /images/browse before /images/{content_hash}
    app.include_router(images_router(service))
    for router, prefix in routers:
        app.include_router(router, prefix=prefix)
        service.metrics.mounted(router.routes, prefix)
    if web:
        from .web import install

        app.state.web = install(app, service)
    return app
