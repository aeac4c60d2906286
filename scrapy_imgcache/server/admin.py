"""The service's own routes: liveness, what a key may do, Prometheus metrics, usage figures and
garbage collection."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from .auth import HEADER, WRITE
from .common import errors, parse_time
from .images import Service


class ScopeOut(BaseModel):
    scope: Literal["read", "write"]
    keys_required: bool


def admin_router(svc: Service) -> APIRouter:
    router = APIRouter(tags=["service"])
    store, metrics = svc.store, svc.metrics
    text = {200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}, **errors(401)}

    @router.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: always open, never touches the store."""
        return {"status": "ok"}

    @router.get("/auth/whoami", dependencies=svc.readers, response_model=ScopeOut, responses=errors(401))
    async def whoami(request: Request) -> ScopeOut:
        """What the caller's key may do (an extension): ``scope`` ``read`` or ``write``, and whether
        the service requires keys at all (without keys anyone may write). A missing or unknown key
        is a 401, as everywhere. A crawler asks at start, so that a key that cannot store stops
        it there instead of failing every image."""
        keys = svc.keys
        if not keys.enabled:
            return ScopeOut(scope="write", keys_required=False)
        writes = keys.scope_of(request.headers.get(HEADER)) == WRITE  # else read: the dependency let it in
        return ScopeOut(scope="write" if writes else "read", keys_required=True)

    @router.get("/metrics", dependencies=svc.readers, response_class=Response, responses=text)
    async def prometheus() -> Response:
        """Prometheus text format, from this app's own registry."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/usage", dependencies=svc.readers, responses=errors(401))
    def usage() -> list[dict[str, Any]]:
        """Images, bytes, URLs and duplicates saved, per bucket and per client (an extension)."""
        return [asdict(u) for u in store.usage()]

    @router.post("/admin/gc", dependencies=svc.writers, responses=errors(400, 401, 403, 422))
    def collect_garbage(
        grace_seconds: Annotated[float, Body(ge=0, description="keep files younger than this")] = 3600,
        older_than: Annotated[
            str | None, Body(max_length=64, description="ISO 8601: also remove images not seen since")
        ] = None,
        dry_run: Annotated[bool, Body(description="only say what would be removed")] = False,
    ) -> JSONResponse:
        """What ``scrapy imgcache-gc`` does, run next to the data (an extension)."""
        report = store.collect_garbage(
            grace_seconds=grace_seconds, older_than=parse_time(older_than, "older_than"), dry_run=dry_run
        )
        return JSONResponse(report.to_json())

    return router
