"""The API calls behind the web page's grid and chart (extensions), so that a ``RemoteStore``
can browse a cache too: ``GET /images/browse`` and ``GET /usage/daily``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from ..store.base import CURSOR_RE, DUPLICATE_KINDS, MAX_PAGE, BrowseQuery
from .common import TEXT, Bucket, errors
from .images import Service

MAX_DAYS = 3660
Cursor = Annotated[str | None, Query(pattern=CURSOR_RE.pattern, description="a `newer` or `older` of a page")]
Size = Annotated[int | None, Query(ge=0, le=2**63 - 1, description="bytes")]


def browse_router(svc: Service) -> APIRouter:
    router = APIRouter(tags=["images"])
    store = svc.store

    @router.get("/images/browse", dependencies=svc.readers, responses=errors(401, 422))
    def browse(
        bucket: Bucket = "",
        client: Annotated[str | None, Query(min_length=1, max_length=255, pattern=TEXT)] = None,
        content_type: Annotated[str | None, Query(max_length=64, pattern=r"^[a-z0-9.+-]+/[a-z0-9.+-]+$")] = None,
        duplicate: Annotated[str | None, Query(pattern="^(" + "|".join(DUPLICATE_KINDS) + ")$")] = None,
        min_size: Size = None,
        max_size: Size = None,
        before: Cursor = None,
        after: Cursor = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 60,
    ) -> dict[str, Any]:
        """A page of a bucket's images, newest first, filtered (an extension): pass a page's
        ``older`` as ``before`` (or its ``newer`` as ``after``) for the next one."""
        query = BrowseQuery(bucket, client, content_type, duplicate, min_size, max_size, before, after, limit)
        return store.browse(query).to_json()

    @router.get("/usage/daily", dependencies=svc.readers, responses=errors(401, 422))
    def daily(
        bucket: Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9._-]*$")] = None,
        days: Annotated[int, Query(ge=1, le=MAX_DAYS)] = 30,
    ) -> list[dict[str, Any]]:
        """Images stored per day (UTC) over the last ``days`` days, every bucket unless one is
        named (an extension)."""
        return [{"day": day.isoformat(), "images": n} for day, n in store.daily_counts(bucket, days)]

    return router
