"""One image request through the cache, as the pipeline and the middleware both handle it.

The pipeline handles its own requests from end to end, with or without the middleware: it asks
the cache, sends a stale URL out with its validators, answers the 304 from the cache, stores
the download. The middleware does the same, with the same functions, for the image requests
the pipeline did not ask the cache about (a spider's own requests, a redirect's target), and
answers any 304 to validators first, so a 304 is handled once, by whichever sees it first:

- :func:`ask_origin`: a miss goes out as it is, a stale entry with its validators;
- :func:`answer_304`: a 304 to those validators refreshes the entry and is answered from the
  cache (:func:`cached_response`);
- :func:`store_failed`: ``IMGCACHE_ON_STORE_ERROR`` for an image request the store failed;
- :func:`fail_image`: one image failed, logged once and counted under its reason.

The ``Request.meta`` keys they share are here (docs/reference/meta.md).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, NoReturn

from scrapy.http import Response
from scrapy.utils.request import referer_str

from ._compat import FileException
from .contract import META_ENTRY, META_LOOKED_UP, META_STATUS, META_STORE_ERROR, RESPONSE_FLAG, invalid_stat
from .errors import StoreError
from .ingest import header

if TYPE_CHECKING:
    from scrapy import Request

    from .context import ImgCacheContext
    from .engine.service import Found
    from .store.base import Entry

logger = logging.getLogger(__name__)

STORE_ERROR = "store_error"
_VALIDATORS = (b"If-None-Match", b"If-Modified-Since")


class ImageFailed(FileException):
    """One image of an item failed, and has been logged once with its reason (the stat key)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _AlreadyReported(logging.Filter):
    """Scrapy logs every failed media download (and a spider's failed request) again, with a
    traceback; failures reported in one line already are left out of that."""

    def filter(self, record: logging.LogRecord) -> bool:
        for candidate in (record.exc_info[1] if record.exc_info else None, getattr(record.msg, "value", None)):
            if isinstance(candidate, ImageFailed):
                return False
        return True


_REPORTED = _AlreadyReported()


def quiet_reported_failures() -> None:
    """Install the filter on the loggers that would repeat a failure (once: a logger keeps one copy)."""
    for name in ("scrapy.pipelines.media", "scrapy.core.scraper"):
        logging.getLogger(name).addFilter(_REPORTED)


def fresh_since(max_age: float) -> datetime:
    """Entries seen after this are fresh: ``max_age`` seconds ago (0: none is, revalidate always)."""
    if max_age <= 0:
        return datetime.max.replace(tzinfo=timezone.utc)
    return datetime.now(timezone.utc) - timedelta(seconds=max_age)


def fail_image(ctx: ImgCacheContext, reason: str, request: Request, message: str, error: bool = False) -> NoReturn:
    """Log one line tagged with the reason, count it (``imgcache/invalid/<reason>``; a store failure
    as ``imgcache/store_error``, unless counted when the request went on uncached), and fail this
    image (not the item)."""
    if not (reason == STORE_ERROR and META_STORE_ERROR in request.meta):
        ctx.inc("store_error" if reason == STORE_ERROR else invalid_stat(reason))
    log = logger.error if error else logger.warning
    log("Image (%s): %s referred in <%s>: %s", reason, request.url, referer_str(request), message)
    raise ImageFailed(reason)


def store_failed(ctx: ImgCacheContext, request: Request, exc: StoreError) -> None:
    """``IMGCACHE_ON_STORE_ERROR`` for an image request the store failed, wherever it failed (a
    lookup, storing, a 304's refresh), in the pipeline or the middleware: ``fail`` fails the
    image (:class:`ImageFailed`, one ERROR line); ``continue`` marks the request, so nothing more
    is asked of the store for it, and logs one WARNING. Either way it counts once in
    ``imgcache/store_error``."""
    if ctx.config.on_store_error == "fail":
        fail_image(ctx, STORE_ERROR, request, f"{type(exc).__name__}: {exc}", error=True)
    if META_STORE_ERROR not in request.meta:
        request.meta[META_STORE_ERROR] = str(exc)
        ctx.inc("store_error")
        logger.warning("imgcache: the store failed, so %s goes on uncached: %s", request.url, exc)


def ask_origin(ctx: ImgCacheContext, request: Request, entry: Entry | None) -> None:
    """After the cache was asked about ``request``: a miss goes out as it is (without validators
    an earlier URL of its redirect chain sent), a stale entry with its validators."""
    request.meta[META_LOOKED_UP] = request.url
    if entry is None:
        request.meta[META_STATUS] = "miss"
        request.meta.pop(META_ENTRY, None)
        for name in _VALIDATORS:
            request.headers.pop(name, None)
        ctx.inc("miss")
        return
    request.meta[META_STATUS] = "stale"
    request.meta[META_ENTRY] = entry
    if entry.etag:
        request.headers[b"If-None-Match"] = entry.etag
    if entry.last_modified:
        request.headers[b"If-Modified-Since"] = entry.last_modified


def not_modified(request: Request, response: Response) -> Entry | None:
    """The stale entry a 304 to its validators confirms, else None."""
    entry: Entry | None = request.meta.get(META_ENTRY)
    if response.status == 304 and request.meta.get(META_STATUS) == "stale" and entry is not None:
        return entry
    return None


async def answer_304(ctx: ImgCacheContext, request: Request, response: Response, entry: Entry) -> Response | Request:
    """The cached image, after a 304 confirmed it (the entry refreshed: seen now at every URL of
    the chain, with any new validators). When the store fails under ``continue``, or has lost the
    bytes, the request again without validators, to be downloaded (under ``fail`` the image fails)."""
    try:
        body = await _refresh(ctx, request, response, entry)
    except StoreError as exc:
        store_failed(ctx, request, exc)
        body = None
    if body is None:
        if META_STORE_ERROR not in request.meta:  # gone, or deleted for not matching their hash
            logger.warning("imgcache: bytes of %s are missing from the cache; downloading", request.url)
            ctx.inc("damaged")
        return _download_again(request)
    ctx.inc("revalidated")
    return cached_response(request, entry, "revalidated", body)


async def _refresh(ctx: ImgCacheContext, request: Request, response: Response, entry: Entry) -> bytes | None:
    """A 304: the URLs still show this image; note when we saw them, and read its bytes (one
    request to the engine)."""
    etag = header(response, b"ETag") or entry.etag
    modified = header(response, b"Last-Modified") or entry.last_modified
    seen = replace(entry, etag=etag, last_modified=modified)
    urls = [*request.meta.get("redirect_urls", ()), request.url]
    found: Found = await ctx.call("refresh", seen, urls, ctx.client_name(), True)
    return found.body if found.fresh else None


def _download_again(request: Request) -> Request:
    headers = request.headers.copy()
    for name in _VALIDATORS:
        headers.pop(name, None)
    meta = {**request.meta, META_STATUS: "miss", META_LOOKED_UP: request.url}
    meta.pop(META_ENTRY, None)
    return request.replace(headers=headers, meta=meta, dont_filter=True)


def cached_response(request: Request, entry: Entry, status: str, body: bytes) -> Response:
    """The response the cache gives for ``request``: its bytes, flagged and with the stored headers."""
    request.meta[META_ENTRY] = entry
    request.meta[META_STATUS] = status
    headers = {"Content-Type": entry.content_type, "X-Imgcache": status}
    if entry.etag:
        headers["ETag"] = entry.etag
    if entry.last_modified:
        headers["Last-Modified"] = entry.last_modified
    logger.debug("Image (%s): %s served from the cache (%s)", status, request.url, entry.content_hash[:12])
    return Response(
        request.url,
        status=200,
        headers=headers,
        body=body,
        flags=[RESPONSE_FLAG, status, "cached"],
        request=request,
    )


def count_download(ctx: ImgCacheContext, request: Request, response: Response) -> None:
    """An image fetched from the network: its bytes, and a stale entry the origin replaced."""
    ctx.inc("downloaded_bytes", len(response.body))
    if request.meta.get(META_STATUS) == "stale":
        ctx.inc("expired")
