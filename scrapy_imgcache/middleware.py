"""``ImgCacheMiddleware``: answers image requests from the shared cache, and fills it.

For an image request (the pipeline's own, or any request with ``meta["imgcache"] = True``):
- a fresh cached URL (seen within ``IMGCACHE_EXPIRES``) is answered from the cache, no network;
- a stale one is revalidated with ``If-None-Match``/``If-Modified-Since``; a 304 is answered
  from the cache and refreshes the entry; a changed image becomes a new version of the URL.

Image responses fetched from the network (recognised by their bytes, never by Content-Type)
are stored, so the cache fills even for spiders that never use the pipeline; the pipeline
stores its own downloads itself. Non-image responses pass through untouched.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.http import Response
from scrapy.utils.httpobj import urlparse_cached

from .context import ImgCacheContext, in_thread
from .errors import InvalidImage, StoreError, TooManyBytes
from .ingest import header, ingest_response, record_urls
from .store.base import Entry

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Request.meta key: True marks a request as an image request (the pipeline sets it)
META_KEY = "imgcache"
#: Request.meta key the middleware sets: the cache Entry a response was answered from
META_ENTRY = "imgcache_entry"
#: Request.meta key the middleware sets: "hit" | "revalidated" | "miss" | "stale"
META_STATUS = "imgcache_status"
#: Request.meta key the pipeline sets on its own requests (it stores them itself)
META_PIPELINE = "imgcache_pipeline"
#: Request.meta key: seconds a cached answer stays fresh for this request (default IMGCACHE_EXPIRES)
META_MAX_AGE = "imgcache_max_age"
#: Request.meta key the pipeline sets: the URL it already looked up (a miss, or stale)
META_LOOKED_UP = "imgcache_looked_up"
RESPONSE_FLAG = "imgcache"

_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".avif")


def is_image_request(request: Request) -> bool:
    """Marked with ``meta["imgcache"]``, or an http(s) URL whose path ends like an image.

    (The extension only decides whether to look the URL up; what is served is whatever
    bytes the cache holds for that URL, and what is stored is judged by its bytes.)
    """
    parsed = urlparse_cached(request)
    if parsed.scheme not in ("http", "https") or request.meta.get(META_KEY) is False:
        return False
    return bool(request.meta.get(META_KEY)) or parsed.path.lower().endswith(_EXTENSIONS)


def looks_like_image(body: bytes) -> bool:
    """A cheap signature check on the first bytes (every format the inspector opens: JPEG,
    PNG, GIF, BMP, TIFF, WebP, AVIF); the full check happens when hashing."""
    return (
        body.startswith(_MAGIC)
        or (body[:4] == b"RIFF" and body[8:12] == b"WEBP")
        or (body[4:8] == b"ftyp" and body[8:12] in (b"avif", b"avis"))
    )


class ImgCacheMiddleware:
    def __init__(self, crawler: Crawler) -> None:
        self.ctx = ImgCacheContext.of(crawler)
        if not self.ctx.config.enabled:
            raise NotConfigured  # no args: Scrapy says nothing; the add-on logs one INFO line
        self.config = self.ctx.config
        crawler.signals.connect(self.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ImgCacheMiddleware:
        return cls(crawler)

    async def spider_opened(self, spider: Spider) -> None:
        await self.ctx.open()

    async def spider_closed(self, spider: Spider) -> None:
        await self.ctx.release()

    # -- requests --------------------------------------------------------------------------

    async def process_request(self, request: Request, spider: Spider | None = None) -> Response | None:
        if self.ctx.failed is not None:  # the crawl is stopping: nothing goes out uncached
            raise IgnoreRequest(f"the image cache cannot be used: {self.ctx.failed}")
        if not is_image_request(request):
            return None
        request.meta.setdefault("download_maxsize", self.ctx.download_maxsize)
        if request.meta.get(META_LOOKED_UP) == request.url:  # the pipeline asked the cache already
            self._revalidate(request, request.meta.get(META_ENTRY))
            return None
        try:
            answer = await self.ctx.answer(request.url, self._fresh_since(request))
        except StoreError as exc:
            self._store_failed(request, exc)
            return None
        if answer is not None and answer.body is not None:
            self.ctx.inc("hit")
            await self._record_redirects(request, answer.entry)
            return self._respond(request, answer.entry, "hit", answer.body)
        self._revalidate(request, None if answer is None else answer.entry)
        return None

    async def _record_redirects(self, request: Request, entry: Entry) -> None:
        """A redirect that ends at a cached URL: the URLs it started from are recorded too,
        so that the next crawl answers them without following the redirect again."""
        try:
            await in_thread(
                record_urls,
                self.ctx.store,
                entry,
                request.meta.get("redirect_urls", ()),
                self.ctx.client_name(),
                known=request.url,
            )
        except StoreError as exc:
            self._store_failed(request, exc)

    def _revalidate(self, request: Request, entry: Entry | None) -> None:
        """A miss goes out as it is; a stale entry goes out with its validators."""
        if entry is None:
            request.meta[META_STATUS] = "miss"
            self.ctx.inc("miss")
            return
        request.meta[META_STATUS] = "stale"
        request.meta[META_ENTRY] = entry
        if entry.etag:
            request.headers[b"If-None-Match"] = entry.etag
        if entry.last_modified:
            request.headers[b"If-Modified-Since"] = entry.last_modified
        return

    def _fresh_since(self, request: Request) -> datetime:
        """Entries seen after this are fresh: ``meta["imgcache_max_age"]`` (seconds; the
        pipeline sets its own expiry there), else ``IMGCACHE_EXPIRES``; 0 revalidates always."""
        max_age = request.meta.get(META_MAX_AGE, self.config.expires)
        if max_age <= 0:
            return datetime.max.replace(tzinfo=timezone.utc)
        return datetime.now(timezone.utc) - timedelta(seconds=max_age)

    async def _cached_response(self, request: Request, entry: Entry, status: str) -> Response | None:
        body = await in_thread(self.ctx.store.get_bytes, entry.content_hash, entry.bucket)
        return self._respond(request, entry, status, body)

    def _respond(self, request: Request, entry: Entry, status: str, body: bytes | None) -> Response | None:
        if body is None:  # the row outlived its bytes (see imgcache-gc), or they were damaged: fetch it again
            logger.warning("imgcache: bytes of %s are missing from the cache; downloading", request.url)
            self.ctx.inc("damaged")
            request.meta[META_STATUS] = "miss"
            return None
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

    def _store_failed(self, request: Request, exc: Exception) -> None:
        self.ctx.inc("store_error")
        if self.config.on_store_error == "fail":
            raise exc
        logger.warning("imgcache: store unavailable, %s fetched uncached: %s", request.url, exc)
        return

    # -- responses -------------------------------------------------------------------------

    async def process_response(self, request: Request, response: Response, spider: Spider | None = None) -> Any:
        if RESPONSE_FLAG in response.flags:
            return response
        status = request.meta.get(META_STATUS)
        entry: Entry | None = request.meta.get(META_ENTRY)
        if response.status == 304 and status == "stale" and entry is not None:
            try:
                await in_thread(self._refresh, request, response, entry)
            except StoreError as exc:
                self._store_failed(request, exc)
                return response
            self.ctx.inc("revalidated")
            return await self._cached_response(request, entry, "revalidated") or self._refetch(request)
        if response.status != 200:
            return response
        is_image = looks_like_image(response.body)
        if is_image or request.meta.get(META_KEY):
            self.ctx.inc("downloaded_bytes", len(response.body))
            if status == "stale":
                self.ctx.inc("expired")
        if is_image and not request.meta.get(META_PIPELINE):
            await self._store_response(request, response)
        return response

    def _refetch(self, request: Request) -> Request:
        """A 304 for an image whose cached bytes are gone: the same request again without its
        validators, so that the server sends the bytes."""
        headers = request.headers.copy()
        for name in (b"If-None-Match", b"If-Modified-Since"):
            headers.pop(name, None)
        meta = {**request.meta, META_STATUS: "miss", META_LOOKED_UP: request.url}
        meta.pop(META_ENTRY, None)
        return request.replace(headers=headers, meta=meta, dont_filter=True)

    def _refresh(self, request: Request, response: Response, entry: Entry) -> None:
        """A 304: the URL still has this image; note when we saw it (and any new validators)."""
        etag = header(response, b"ETag") or entry.etag
        modified = header(response, b"Last-Modified") or entry.last_modified
        self.ctx.store.record_url(
            entry.content_hash,
            url=request.url,
            client_name=self.ctx.client_name(),
            bucket=entry.bucket,
            etag=etag,
            last_modified=modified,
        )

    def process_exception(self, request: Request, exception: Exception, spider: Spider | None = None) -> None:
        """A spider's own image download cut at its ``download_maxsize`` is counted and logged
        as the pipeline counts its own (``invalid/too_many_bytes``); the spider's errback
        still gets the error."""
        if request.meta.get(META_PIPELINE) or not cut_at_maxsize(exception):
            return
        if "download_maxsize" not in request.meta or not is_image_request(request):
            return
        self.ctx.inc(f"invalid/{TooManyBytes.reason}")
        logger.warning("imgcache: not caching %s: over %s bytes", request.url, request.meta["download_maxsize"])

    async def _store_response(self, request: Request, response: Response) -> None:
        try:
            outcome = await in_thread(
                ingest_response,
                self.ctx.ingestor,
                response,
                self.ctx.client_name(),
                on_similar="skip" if self.config.on_similar == "skip" else "annotate",
                also=[*request.meta.get("redirect_urls", ()), request.url],
            )
        except InvalidImage as exc:
            self.ctx.inc(f"invalid/{exc.reason}")
            logger.warning("imgcache: not caching %s: %s", response.url, exc)
            return
        except StoreError as exc:
            self._store_failed(request, exc)
            return
        self.ctx.count(outcome)
        request.meta[META_ENTRY] = outcome.entry


def cut_at_maxsize(exc: BaseException) -> bool:
    """Whether a download failed because it passed its ``download_maxsize``: Scrapy cancels it
    (a declared or a received size) or, for a compressed body, ignores it while decompressing."""
    from scrapy.exceptions import IgnoreRequest
    from twisted.internet.defer import CancelledError

    cancelled: tuple[type[BaseException], ...] = (CancelledError,)
    try:
        from scrapy.exceptions import DownloadCancelledError  # Scrapy >= 2.14

        cancelled += (DownloadCancelledError,)
    except ImportError:  # pragma: no cover - depends on the Scrapy version
        pass
    text = str(exc)
    if isinstance(exc, IgnoreRequest):
        return "DOWNLOAD_MAXSIZE" in text or "download max size" in text
    return isinstance(exc, cancelled)
