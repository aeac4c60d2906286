"""``ImgCacheMiddleware``: answers a spider's own image requests from the shared cache, and fills it.

For an image request the cache was not asked about yet (a spider's own, marked with
``meta["imgcache"] = True`` or ending like an image; a redirect's target of the pipeline's):
- a fresh cached URL (seen within ``IMGCACHE_EXPIRES``) is answered from the cache, no network;
- a stale one is revalidated with ``If-None-Match``/``If-Modified-Since``; a 304 is answered
  from the cache and refreshes the entry; a changed image becomes a new version of the URL.

Image responses fetched from the network (recognised by their bytes, never by Content-Type)
are stored, so the cache fills even for spiders that never use the pipeline; the pipeline
asks, revalidates and stores its own requests itself (:mod:`.fetching` holds what both do).
Non-image responses pass through untouched.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.utils.httpobj import urlparse_cached

from ._compat import download_cancelled_errors
from .context import ImgCacheContext
from .contract import (
    META_ENTRY,
    META_KEY,
    META_LOOKED_UP,
    META_MAX_AGE,
    META_PIPELINE,
    META_STORE_ERROR,
    RESPONSE_FLAG,
    invalid_stat,
)
from .engine.service import Download, Found, Stored
from .errors import InvalidImage, StoreError, TooManyBytes
from .fetching import (
    answer_304,
    ask_origin,
    cached_response,
    count_download,
    fresh_since,
    not_modified,
    quiet_reported_failures,
    store_failed,
)
from .ingest import header

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response


logger = logging.getLogger(__name__)

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


#: the extension the cache gives an image (imaging.ALLOWED_FORMATS), by its first bytes
_SIGNATURES = (
    (b"\xff\xd8\xff", ".jpg"),
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"GIF87a", ".gif"),
    (b"GIF89a", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


def guess_extension(body: bytes) -> str | None:
    """The extension the cache will give these bytes, from their signature (None: unknown);
    a guess, checked when they are stored."""
    for magic, extension in _SIGNATURES:
        if body.startswith(magic):
            return extension
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return ".webp"
    return None


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
        self.ctx.middleware_on = True
        quiet_reported_failures()
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
        if request.meta.get(META_LOOKED_UP) == request.url or META_STORE_ERROR in request.meta:
            return None  # the cache was asked already (by the pipeline, say), or failed for it
        try:
            answer = await self._ask(request)
        except StoreError as exc:
            store_failed(self.ctx, request, exc)
            return None
        if answer is not None and answer.body is not None:
            self.ctx.inc("hit")
            return cached_response(request, answer.entry, "hit", answer.body)
        ask_origin(self.ctx, request, None if answer is None else answer.entry)
        return None

    async def _ask(self, request: Request) -> Found | None:
        """What the cache has for the URL (a fresh one with its bytes). A redirect that ends at a
        cached URL: the URLs it started from are recorded too, so the next crawl answers them
        without the redirect. Bytes gone or damaged: counted, and fetched again from scratch."""
        max_age = request.meta.get(META_MAX_AGE, self.config.expires)
        client = self.ctx.client_name()
        answer: Found | None = await self.ctx.call("answer", request.url, fresh_since(max_age), client, True)
        if answer is not None and answer.damaged:
            self.ctx.inc("damaged")
            return None
        redirected = request.meta.get("redirect_urls", ())
        if answer is not None and answer.body is not None and redirected:
            await self.ctx.call("record_urls", answer.entry, redirected, client, request.url)
        return answer

    async def process_response(self, request: Request, response: Response, spider: Spider | None = None) -> Any:
        if RESPONSE_FLAG in response.flags:
            return response
        stale = not_modified(request, response)
        if stale is not None:  # whoever sent the validators (here, or the pipeline): answered once, here
            return await answer_304(self.ctx, request, response, stale)
        if response.status != 200 or request.meta.get(META_PIPELINE):
            return response  # the pipeline counts and stores its own downloads
        is_image = looks_like_image(response.body)
        if is_image or request.meta.get(META_KEY):
            count_download(self.ctx, request, response)
        if is_image and META_STORE_ERROR not in request.meta:
            await self._store_response(request, response)
        return response

    def process_exception(self, request: Request, exception: Exception, spider: Spider | None = None) -> None:
        """A spider's own image download cut at its ``download_maxsize`` is counted and logged
        as the pipeline counts its own (``invalid/too_many_bytes``); the spider's errback
        still gets the error."""
        if request.meta.get(META_PIPELINE) or not cut_at_maxsize(exception):
            return
        if "download_maxsize" not in request.meta or not is_image_request(request):
            return
        self.ctx.inc(invalid_stat(TooManyBytes.reason))
        logger.warning("imgcache: not caching %s: over %s bytes", request.url, request.meta["download_maxsize"])

    async def _store_response(self, request: Request, response: Response) -> None:
        download = Download(
            url=response.url,
            client_name=self.ctx.client_name(),
            etag=header(response, b"ETag"),
            last_modified=header(response, b"Last-Modified"),
            also=[*request.meta.get("redirect_urls", ()), request.url],
            on_similar="skip" if self.config.on_similar == "skip" else "annotate",
        )
        try:
            stored: Stored = await self.ctx.call("store_download", download, body=response.body)
        except InvalidImage as exc:
            self.ctx.inc(invalid_stat(exc.reason))
            logger.warning("imgcache: not caching %s: %s", response.url, exc)
            return
        except StoreError as exc:
            store_failed(self.ctx, request, exc)
            return
        self.ctx.count(stored.outcome)
        request.meta[META_ENTRY] = stored.outcome.entry


def cut_at_maxsize(exc: BaseException) -> bool:
    """Whether a download failed because it passed its ``download_maxsize``: Scrapy cancels it
    (a declared or a received size) or, for a compressed body, ignores it while decompressing."""
    from scrapy.exceptions import IgnoreRequest

    text = str(exc)
    if isinstance(exc, IgnoreRequest):
        return "DOWNLOAD_MAXSIZE" in text or "download max size" in text
    return isinstance(exc, download_cancelled_errors())
