"""The pages that look: the overview, the grid, one image, and the near-duplicate groups."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from ...store.base import DUPLICATE_KINDS, BrowseQuery
from ..auth import WRITE
from ..images import IMAGE_TYPES
from .figures import CHART_HEIGHT, CHART_WIDTH, DAYS, GroupsKey
from .params import Text, bucket_of, distance_of, hash_of
from .render import WebError

if TYPE_CHECKING:
    from .state import Web

PAGE_SIZE = 60
GROUPS_PER_PAGE = 20
NEAR_SHOWN = 24


def add(router: APIRouter, web: Web) -> None:
    _overview(router, web)
    _browse(router, web)
    _image(router, web)
    _groups(router, web)


def _overview(router: APIRouter, web: Web) -> None:
    @router.get("/web/")
    def overview(request: Request) -> Response:
        session = web.session(request)
        counted = web.overview.get(None)
        return web.render.page(
            request, "overview.html", session, nav="overview", title="Overview", counted=counted,
            figures=counted.value, chart=(CHART_WIDTH, CHART_HEIGHT), days=DAYS, now=time.time(),
        )  # fmt: skip


def _int_or_none(value: str | None, what: str, scale: int = 1) -> int | None:
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 15:
        raise WebError(400, f"{what} is a whole number.")
    return int(value) * scale


def browse_query(params: dict[str, str | None]) -> BrowseQuery:
    """The grid's filters from its query string; a 400 page for a malformed one."""

    fmt = params.get("format") or None
    if fmt is not None and fmt not in IMAGE_TYPES:
        raise WebError(400, f"The format is one of {', '.join(IMAGE_TYPES)}.")
    after = params.get("after") or None
    try:
        return BrowseQuery(
            bucket=bucket_of(params.get("bucket")),
            client=params.get("client") or None,
            content_type=fmt,
            duplicate=params.get("duplicate") or None,
            min_size=_int_or_none(params.get("min_kib"), "The smallest size", 1024),
            max_size=_int_or_none(params.get("max_kib"), "The largest size", 1024),
            before=None if after else params.get("before") or None,
            after=after,
            limit=PAGE_SIZE,
        )
    except ValueError as exc:
        raise WebError(400, f"That filter or page link is malformed: {exc}") from None


def _browse(router: APIRouter, web: Web) -> None:
    store = web.svc.store
    names = ("bucket", "client", "format", "duplicate", "min_kib", "max_kib")

    @router.get("/web/browse")
    def browse(request: Request) -> Response:
        session = web.session(request)
        params = {k: request.query_params.get(k) for k in (*names, "before", "after")}
        if any(v is not None and len(v) > 255 for v in params.values()):
            raise WebError(400, "A filter is too long.")
        query = browse_query(params)
        page = store.browse(query)
        filters = {k: params[k] or "" for k in names if params[k]}
        known = web.overview.peek(None)
        return web.render.page(
            request, "browse.html", session, nav="browse", title="Browse", page=page, query=query,
            filters=filters, formats=IMAGE_TYPES, kinds=DUPLICATE_KINDS,
            clients=known.clients(query.bucket) if known else [],
            buckets=[u.bucket for u in known.buckets] if known else [],
        )  # fmt: skip


def _image(router: APIRouter, web: Web) -> None:

    store = web.svc.store

    @router.get("/web/image/{content_hash}")
    def image(request: Request, content_hash: str, bucket: Text = None, distance: Text = None) -> Response:
        session = web.session(request)
        chosen, dist = bucket_of(bucket), distance_of(distance)
        entry = store.get_meta(hash_of(content_hash), chosen)
        if entry is None:
            raise WebError(404, "There is no such image in that bucket.")
        near = store.near_cached(entry.content_hash, dist, chosen, NEAR_SHOWN) or []
        return web.render.page(
            request, "image.html", session, nav="browse", title=f"Image {entry.content_hash[:12]}", entry=entry,
            urls=store.urls(entry.content_hash, chosen), near=near, distance=dist,
        )  # fmt: skip

    @router.post("/web/image/{content_hash}/delete")
    def delete(
        request: Request,
        content_hash: str,
        csrf: Annotated[str | None, Form()] = None,
        bucket: Annotated[str, Form(max_length=64)] = "",
    ) -> Response:
        """Remove the image from the cache (a write key, and this page's CSRF token)."""
        web.posted(request, csrf, WRITE)
        chosen = bucket_of(bucket)
        if not store.delete(hash_of(content_hash), chosen):
            raise WebError(404, "There is no such image in that bucket (deleted already?).")
        base = request.scope.get("root_path", "").rstrip("/") + "/web"
        return RedirectResponse(f"{base}/browse?{urlencode({'bucket': chosen})}", status_code=303)


def _groups(router: APIRouter, web: Web) -> None:

    @router.get("/web/groups")
    def groups(
        request: Request, bucket: Text = None, distance: Text = None, min_size: Text = None, page: Text = None
    ) -> Response:
        session = web.session(request)
        smallest = _int_or_none(min_size, "The smallest group") or 2
        number = _int_or_none(page, "The page") or 1
        key = GroupsKey(bucket_of(bucket), distance_of(distance), max(smallest, 2))
        counted = web.groups.get(key)
        found = counted.value or []
        start = (max(number, 1) - 1) * GROUPS_PER_PAGE
        return web.render.page(
            request, "groups.html", session, nav="groups", title="Near-duplicate groups", key=key, counted=counted,
            shown=list(enumerate(found[start : start + GROUPS_PER_PAGE], start + 1)), total=len(found),
            page=number, pages=max((len(found) + GROUPS_PER_PAGE - 1) // GROUPS_PER_PAGE, 1), now=time.time(),
        )  # fmt: skip
