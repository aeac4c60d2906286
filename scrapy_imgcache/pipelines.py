"""``ImgCachePipeline``: Scrapy's ImagesPipeline, over the shared cache.

It *is* an ``ImagesPipeline`` (a subclass), so a project switches by changing one base class
or one line of settings, and keeps what it customised: ``get_media_requests``,
``file_path``, ``thumb_path``, ``convert_image`` (for thumbnails), ``item_completed``,
``media_failed``, the ``IMAGES_*`` and ``MEDIA_ALLOW_REDIRECTS`` settings (per-pipeline
prefixed ones too), per-URL download sharing within a crawl, and Scrapy's file stats.

What changes is where images come from and go:
- a URL the cache knows and that was seen within the expiry is answered from the cache,
  without the network (status ``uptodate``); an expired one is revalidated with a
  conditional request (a 304 gives status ``cached``); an image ``IMAGES_MIN_*`` refuses
  fails from the cache too. The pipeline does all that itself: ``ImgCacheMiddleware`` only
  adds the caching of image requests a spider makes itself (:mod:`.fetching`);
- when the store fails, ``IMGCACHE_ON_STORE_ERROR`` decides: the image fails, or is kept
  uncached (``cache: "error"``);
- a downloaded image is stored once per distinct content (BLAKE2b), in its original format,
  with every URL it was seen at; near-duplicates follow ``IMGCACHE_ON_SIMILAR``;
- ``IMAGES_STORE``, when set, is a view of the cache: each image also exists at
  ``file_path()`` under it (a file of the user's own: a copy, a clone or a server-side copy,
  never a link to the cache's bytes) and its thumbnails at ``thumb_path()``; a fresh
  ``IMAGES_STORE`` is filled from the cache without the network;
- decoding, hashing, database and file work run in threads, never on the reactor.

Hooks it cannot honour are refused when the crawler starts (see :data:`REPLACED_HOOKS`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from scrapy.exceptions import DropItem, NotConfigured
from scrapy.http import Response
from scrapy.pipelines.images import ImagesPipeline
from scrapy.utils.request import referer_str

from ._compat import component_result, download, in_thread, media_result
from .context import ImgCacheContext
from .contract import (
    META_ENTRY,
    META_EXTENSION,
    META_KEY,
    META_MAX_AGE,
    META_PIPELINE,
    META_STATUS,
    META_STORE_ERROR,
    RESPONSE_FLAG,
    CacheStatus,
)
from .engine.service import Download, Found, Placement, Stored, ViewSpec
from .errors import ImageTooSmall, InvalidImage, StoreError
from .fetching import (
    STORE_ERROR,
    ImageFailed,
    answer_304,
    ask_origin,
    count_download,
    fail_image,
    fresh_since,
    not_modified,
    quiet_reported_failures,
    store_failed,
)
from .hashing import md5_hex
from .ingest import Outcome, header
from .middleware import cut_at_maxsize, guess_extension
from .view import ImagesStoreView, Thumbnailer

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.crawler import Crawler
    from scrapy.pipelines.media import MediaPipeline
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    from .store.base import Entry
    from .store.blobs import BlobStore

    SpiderInfo = MediaPipeline.SpiderInfo

logger = logging.getLogger(__name__)
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: ImagesPipeline hooks this pipeline does not call, because it keeps each image's original
#: bytes instead of re-encoding them as JPEG; a subclass overriding one is refused at start
REPLACED_HOOKS = ("get_images", "image_downloaded", "file_downloaded")
#: IMAGES_STORE schemes the view can write (through fsspec beyond local folders)
VIEW_SCHEMES = ("", "file", "s3", "gs", "gcs", "ftp", "memory")


__all__ = ["REPLACED_HOOKS", "ImageFailed", "ImgCachePipeline"]


class _NoFilesStore:
    """What Scrapy's FilesPipeline keeps as ``self.store``: here a placeholder, since the
    cache and its :class:`ImagesStoreView` do the storing."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def persist_file(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError("ImgCachePipeline writes IMAGES_STORE through the cache")

    def stat_file(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}


def _cached(method: F) -> F:
    """``method`` while the cache is on; with ``IMGCACHE_ENABLED = False``, ImagesPipeline's own
    (nothing where it has none), so a project's subclass runs as the pipeline it was written on."""
    plain = getattr(ImagesPipeline, method.__name__, None)

    @functools.wraps(method)
    def either(self: ImgCachePipeline, *args: Any, **kwargs: Any) -> Any:
        if self.cache_on:
            return method(self, *args, **kwargs)
        return None if plain is None else plain(self, *args, **kwargs)

    return cast(F, either)


class ImgCachePipeline(ImagesPipeline):
    STORE_SCHEMES: ClassVar[dict[str, Any]] = dict.fromkeys((*VIEW_SCHEMES, "imgcache"), _NoFilesStore)
    #: completed results remembered per URL within a crawl, so that items sharing an image
    #: reuse it (bounded so memory stays flat; downloads in flight are never forgotten)
    results_memory = 4096

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """A subclass's own ``item_completed`` still sees ``IMGCACHE_ON_SIMILAR = "drop"``
        applied first, whether or not it calls ``super()``."""
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("item_completed")
        if own is not None and not getattr(own, "_applies_on_similar", False):

            @functools.wraps(own)
            def item_completed(self: ImgCachePipeline, results: list[Any], item: Any, info: Any) -> Any:
                drop_near_duplicates(self, results)
                return own(self, results, item, info)

            item_completed._applies_on_similar = True  # type: ignore[attr-defined]
            cls.item_completed = item_completed  # type: ignore[method-assign]

    def __init__(
        self,
        store_uri: Any = None,
        download_func: Any = None,
        settings: Any = None,
        *,
        crawler: Crawler | None = None,
    ) -> None:
        if crawler is None:
            raise TypeError(f"{type(self).__name__} is built with from_crawler(crawler)")
        self.ctx = ImgCacheContext.of(crawler)
        #: False: IMGCACHE_ENABLED is False, and this is Scrapy's ImagesPipeline (see _cached)
        self.cache_on = self.ctx.config.enabled
        if not self.cache_on:
            self._without_cache(store_uri, crawler)
            return
        view_uri = str(store_uri or "")
        super().__init__(view_uri or "imgcache://", crawler=crawler)
        self.config = self.ctx.config
        self.view = ImagesStoreView.open(view_uri, crawler.settings, self._problem) if view_uri else None
        self.thumbnailer = Thumbnailer(self)
        #: the pipeline's own convert_image makes its thumbnails, here (in threads)
        self._thumbs_here = bool(self.thumbs) and type(self).convert_image is not ImagesPipeline.convert_image
        #: an IMAGES_STORE only this process can write (memory://): placed here (in threads)
        self._place_here = self.view is not None and view_uri.startswith("memory:")
        #: where the engine places files, when it does
        self._view_key = None
        if self.view is not None and not self._place_here:
            self._view_key = self.ctx.add_view(ViewSpec(view_uri, self.view.options))
        #: what is done here needs the image's bytes here
        self._body_here = self._thumbs_here or self._place_here
        #: file_path() is ours: the engine can make the path (ImagesPipeline's, with the stored
        #: image's extension), so a hit or a download is placed in the request that finds or stores it
        self._stem_paths = type(self).file_path is ImgCachePipeline.file_path
        self.ctx.check(self._refused_options(view_uri))
        quiet_reported_failures()

    def _without_cache(self, store_uri: Any, crawler: Crawler) -> None:
        """``IMGCACHE_ENABLED = False``: ImagesPipeline, with its own files stores; without
        ``IMAGES_STORE`` that is off (``NotConfigured``), and so is this pipeline. One INFO line."""
        name = type(self).__name__
        if not store_uri:
            off = "so %s is off, as Scrapy's ImagesPipeline is without IMAGES_STORE"
            logger.info("imgcache: IMGCACHE_ENABLED is False and IMAGES_STORE is not set, " + off, name)
            raise NotConfigured  # no args: Scrapy says nothing more
        logger.info(
            "imgcache: IMGCACHE_ENABLED is False, so %s runs as Scrapy's ImagesPipeline, without the cache", name
        )
        self.STORE_SCHEMES = ImagesPipeline.STORE_SCHEMES  # type: ignore[misc]  # the files stores, not the cache's
        super().__init__(store_uri, crawler=crawler)

    def _problem(self, message: str) -> None:
        self.ctx.check(message)

    @property
    def cache_blobs(self) -> BlobStore | None:
        """The cache's own blob store (thumbnails go beside its blobs without IMAGES_STORE)."""
        return self.ctx.store.blobs

    def _refused_options(self, view_uri: str) -> str | None:
        """What this subclass or these settings ask that cannot be honoured, in one line."""
        cls = type(self)
        for hook in REPLACED_HOOKS:
            if getattr(cls, hook) is not getattr(ImgCachePipeline, hook):
                return (
                    f"{cls.__name__} overrides {hook}(), which ImgCachePipeline does not call: it keeps each "
                    "image's original bytes instead of re-encoding them (customise file_path(), thumb_path() "
                    "or convert_image() instead)"
                )
        if cls.STORE_SCHEMES is not ImgCachePipeline.STORE_SCHEMES:
            return f"{cls.__name__} sets STORE_SCHEMES; ImgCachePipeline writes IMAGES_STORE itself (through fsspec)"
        if self.thumbs and self.config.is_remote and not view_uri:
            return (
                "IMAGES_THUMBS with a remote cache (IMGCACHE_URL is a service) needs IMAGES_STORE: "
                "thumbnails are made here and written there"
            )
        return None

    # -- the crawl -------------------------------------------------------------------------

    @_cached
    def open_spider(self, spider: Spider | None = None) -> Any:
        if spider is None:
            super().open_spider()
        else:
            super().open_spider(spider)
        return component_result(self._open())

    async def _open(self) -> None:
        if not await self.ctx.open():
            return
        if self.view is not None:
            try:
                await in_thread(self.view.probe)
            except StoreError as exc:
                self.ctx.check(str(exc))
                await self.ctx.open()  # reports the problem and stops the crawl
                return
        if not self.ctx.middleware_on:
            logger.info(
                "imgcache: %s answers, revalidates and stores its own images; without ImgCacheMiddleware "
                "(the add-on enables it) image requests the spider makes itself are not cached",
                type(self).__name__,
            )

    @_cached
    def close_spider(self, spider: Spider | None = None) -> Any:
        return component_result(self.ctx.release())

    @_cached
    def process_item(self, item: Any, spider: Spider | None = None) -> Any:
        if self.ctx.failed is not None:
            raise DropItem(f"the image cache cannot be used: {self.ctx.failed}")
        return super().process_item(item) if spider is None else super().process_item(item, spider)

    @_cached
    def media_to_download(  # type: ignore[override]  # a coroutine where Scrapy awaits one
        self, request: Request, info: SpiderInfo, *, item: Any = None
    ) -> Deferred[Any] | Coroutine[Any, Any, Any]:
        """A URL the cache has fresh is answered from it, with no download."""
        request.meta.setdefault(META_KEY, True)
        request.meta[META_PIPELINE] = True
        request.meta.setdefault("download_maxsize", self.ctx.download_maxsize)
        request.meta.setdefault(META_MAX_AGE, self._max_age())
        self._forget_oldest(info)
        return media_result(self._from_cache(request, info, item))

    def _max_age(self) -> float:
        """IMGCACHE_EXPIRES when set, else this pipeline's IMAGES_EXPIRES (days), as Scrapy reads it."""
        return self.config.expires if self.config.expires_set else self.expires * 86400.0

    def _forget_oldest(self, info: SpiderInfo) -> None:
        """Keep at most ``results_memory`` completed results (the oldest go first); results of
        downloads in flight are in ``info.downloading``/``info.waiting``, never here."""
        excess = len(info.downloaded) - self.results_memory
        if excess > 0:
            for fingerprint in list(info.downloaded)[:excess]:
                del info.downloaded[fingerprint]

    async def _from_cache(self, request: Request, info: SpiderInfo, item: Any) -> dict[str, Any] | None:
        """A fresh cached URL is answered from the cache (or, too small for IMAGES_MIN_*, fails
        there): no request. A stale one goes out with its validators, a miss as it is. With
        the default ``file_path()`` a hit is looked up and placed in one request to the engine."""
        since = fresh_since(request.meta[META_MAX_AGE])
        placement = None
        if self._stem_paths or self._view_key is None:  # the paths do not depend on the entry
            placement = self._placement(request, None, info, item, refresh=False)
        client = self.ctx.client_name()
        try:
            found: Found | None = await self._engine_or_fail(
                request, "answer", request.url, since, client, self._body_here, placement
            )
        except StoreError as exc:
            store_failed(self.ctx, request, exc)  # "continue": downloaded, and nothing more asked
            return None
        if found is not None and found.damaged:  # fresh, but its bytes are gone or damaged
            self.ctx.inc("damaged")
            found = None
        if found is None or not found.fresh:
            ask_origin(self.ctx, request, None if found is None else found.entry)
            return None
        self.ctx.inc("hit")
        self._count("uptodate", request, info)
        self._check_size(found.entry, request)
        if placement is not None:
            request.meta[META_ENTRY] = found.entry
            return await self._finished(request, None, found, None, "hit", item, info)
        return await self._served(request, None, found, "hit", item, info)

    def _large_enough(self, entry: Entry) -> bool:
        return (entry.width or 0) >= self.min_width and (entry.height or 0) >= self.min_height

    def _check_size(self, entry: Entry, request: Request) -> None:
        """IMAGES_MIN_WIDTH/HEIGHT, as ImagesPipeline applies them (to cache hits too)."""
        if not self._large_enough(entry):
            too_small = self._too_small(entry)
            fail_image(self.ctx, too_small.reason, request, too_small.message)

    def _too_small(self, entry: Entry) -> ImageTooSmall:
        return ImageTooSmall(f"Image too small ({entry.width}x{entry.height} < {self.min_width}x{self.min_height})")

    @_cached
    def media_downloaded(  # type: ignore[override]  # a Deferred: Scrapy 2.13 awaits nothing else
        self, response: Response, request: Request, info: SpiderInfo, *, item: Any = None
    ) -> Deferred[dict[str, Any]] | Coroutine[Any, Any, dict[str, Any]]:
        return media_result(self._downloaded(response, request, info, item))

    async def _downloaded(self, response: Response, request: Request, info: SpiderInfo, item: Any) -> dict[str, Any]:
        response, sent = await self._answered_304(response, response.request or request)
        if META_STORE_ERROR in sent.meta:  # (the request that went out: a redirect's is a copy)
            request.meta.setdefault(META_STORE_ERROR, sent.meta[META_STORE_ERROR])
        if response.status != 200:
            fail_image(self.ctx, "http_error", request, f"HTTP {response.status}")
        if not response.body:
            fail_image(self.ctx, "empty", request, "empty body")
        entry: Entry | None = sent.meta.get(META_ENTRY)
        answered = RESPONSE_FLAG in response.flags and entry is not None  # from the cache, after a 304 or a hit
        self._count("cached" if answered else "downloaded", request, info)  # as FilesPipeline counts
        if answered:
            assert entry is not None
            self._check_size(entry, request)
            status = sent.meta.get(META_STATUS, "hit")
            return await self._served(request, response, Found(entry, True, response.body), status, item, info)
        count_download(self.ctx, sent, response)
        return await self._stored(response, request, item, info)

    async def _answered_304(self, response: Response, sent: Request) -> tuple[Response, Request]:
        """A 304 to the validators this pipeline sent (without the middleware, which answers them
        first): the cached image, or, when the store could not give it, the image downloaded."""
        stale = not_modified(sent, response)
        if stale is None:
            return response, sent
        answer = await answer_304(self.ctx, sent, response, stale)
        if isinstance(answer, Response):
            return answer, sent
        engine = self.crawler.engine
        assert engine is not None
        downloaded = await download(engine, answer)
        return downloaded, downloaded.request or answer

    async def _stored(self, response: Response, request: Request, item: Any, info: SpiderInfo) -> dict[str, Any]:
        """A download stored in the cache, placed in IMAGES_STORE with its thumbnails, as one
        request to the engine; its result."""
        if META_STORE_ERROR in request.meta:  # it goes on uncached: nothing more asked of the store
            return await self._uncached(response, request, item, info)
        extension = None if self._stem_paths else guess_extension(response.body)
        placement = None
        if self._stem_paths or self._view_key is None or extension is not None:
            if extension is not None:
                request.meta[META_EXTENSION] = extension  # file_path() gives the path that extension
            placement = self._placement(request, response, info, item, refresh=True, extension=extension)
        download = Download(
            url=response.url,
            client_name=self.ctx.client_name(),
            etag=header(response, b"ETag"),
            last_modified=header(response, b"Last-Modified"),
            also=[*(response.request or request).meta.get("redirect_urls", ()), request.url],
            placement=placement,
        )
        try:
            stored: Stored = await self._engine_or_fail(request, "store_download", download, body=response.body)
        except StoreError as exc:
            store_failed(self.ctx, request, exc)  # "continue": kept, uncached
            return await self._uncached(response, request, item, info)
        finally:
            request.meta.pop(META_EXTENSION, None)
        outcome, entry = stored.outcome, stored.outcome.entry
        self.ctx.count(outcome)  # cached whatever its size; this pipeline may still refuse it
        self._check_size(entry, request)
        request.meta[META_ENTRY] = entry
        found = Found(entry, True, response.body, stored.checksum, thumbs=stored.thumbs)
        if placement is not None and stored.placed:
            return await self._finished(request, response, found, outcome, "miss", item, info)
        return await self._served(request, response, found, "miss", item, info, outcome)

    async def _served(
        self,
        request: Request,
        response: Response | None,
        found: Found,
        status: CacheStatus,
        item: Any,
        info: SpiderInfo,
        outcome: Outcome | None = None,
    ) -> dict[str, Any]:
        """A cached image (a hit, a 304, a download stored without its placement): its
        IMAGES_STORE file and thumbnails made, where missing, by one request to the engine."""
        request.meta[META_ENTRY] = found.entry
        placement = self._placement(request, response, info, item, refresh=status == "miss")
        if placement is not None:
            placed: Found = await self._engine_or_fail(request, "place", found.entry, placement)
            if placed.damaged:  # deleted or damaged since it was looked up
                fail_image(self.ctx, STORE_ERROR, request, "its bytes are gone from the cache", error=True)
            found = replace(found, checksum=placed.checksum, thumbs=placed.thumbs)
        return await self._finished(request, response, found, outcome, status, item, info)

    async def _finished(
        self,
        request: Request,
        response: Response | None,
        found: Found,
        outcome: Outcome | None,
        status: CacheStatus,
        item: Any,
        info: SpiderInfo,
    ) -> dict[str, Any]:
        """The result, after what runs in the crawl process (in threads): a view the engine
        cannot write (memory://), thumbnails of the pipeline's own convert_image."""
        path = self.file_path(request, response=response, info=info, item=item) if self.view else found.entry.path
        thumbs = dict(found.thumbs)
        if self._body_here:
            assert found.body is not None
            body, refresh = found.body, status == "miss"
            if self._place_here and self.view is not None and path is not None:
                await self._thread_or_fail(request, self.view.place, path, body, found.entry, self.ctx.store, refresh)
            if self._thumbs_here:
                make = self.thumbnailer.make
                thumbs = await self._thread_or_fail(
                    request, make, request, response, body, found.entry, item, info, refresh
                )
        checksum: str = found.checksum if found.checksum else await in_thread(md5_hex, found.body or b"")
        return self._result(request, path, found.entry, outcome, status, checksum, len(found.body or b""), thumbs)

    async def _uncached(self, response: Response, request: Request, item: Any, info: SpiderInfo) -> dict[str, Any]:
        """Under IMGCACHE_ON_STORE_ERROR = "continue": the image kept in IMAGES_STORE and the
        item, not in the cache (``cache: "error"``)."""
        body = response.body
        path = None
        if self.view is not None:
            path = self.file_path(request, response=response, info=info, item=item)
            await self._thread_or_fail(request, self.view.place, path, body, None, None, True)
        thumbs: dict[str, str] = {}
        if self.thumbs and self.view is not None:
            make = self.thumbnailer.make
            thumbs = await self._thread_or_fail(request, make, request, response, body, None, item, info, True)
        checksum = await in_thread(md5_hex, body)
        return self._result(request, path, None, None, "miss", checksum, len(body), thumbs)

    def _placement(
        self,
        request: Request,
        response: Response | None,
        info: SpiderInfo,
        item: Any,
        refresh: bool,
        extension: str | None = None,
    ) -> Placement | None:
        """What the engine is to place for this image (None: nothing): the file at
        ``file_path()`` in IMAGES_STORE, the thumbnails (at ``thumb_path()`` there, else beside
        the cache's blobs), unless the crawl process makes them (:attr:`_body_here`)."""
        path = None
        if self._view_key is not None and self._stem_paths:  # the engine adds the stored image's extension
            path = ImagesPipeline.file_path(self, request, response=response, info=info, item=item).rsplit(".", 1)[0]
        elif self._view_key is not None:
            path = self.file_path(request, response=response, info=info, item=item)
        sizes = {} if self._thumbs_here else dict(self.thumbs)
        if path is None and not sizes:
            return None
        thumbs = {}
        if sizes and self.view is not None:
            thumbs = {t: self.thumb_path(request, t, response=response, info=info, item=item) for t in sizes}
        min_size = (self.min_width, self.min_height)
        return Placement(self._view_key, path, thumbs, sizes, refresh, extension, min_size, self._stem_paths)

    async def _engine_or_fail(self, request: Request, operation: str, *args: Any, body: bytes = b"") -> Any:
        """An engine operation for this image; a refusal of the bytes, or a failure of
        IMAGES_STORE or its thumbnails, fails this image (logged once). A StoreError of the
        cache itself is the caller's (IMGCACHE_ON_STORE_ERROR)."""
        try:
            return await self.ctx.call(operation, *args, body=body)
        except InvalidImage as exc:
            fail_image(self.ctx, exc.reason, request, exc.message)
        except OSError as exc:  # IMAGES_STORE or its thumbnails failed
            fail_image(self.ctx, STORE_ERROR, request, f"{type(exc).__name__}: {exc}", error=True)

    async def _thread_or_fail(self, request: Request, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in a thread; what it refuses fails this image, logged once."""
        try:
            return await in_thread(func, *args)
        except InvalidImage as exc:
            fail_image(self.ctx, exc.reason, request, exc.message)
        except (StoreError, OSError) as exc:  # IMAGES_STORE or its thumbnails failed
            fail_image(self.ctx, STORE_ERROR, request, f"{type(exc).__name__}: {exc}", error=True)

    @_cached
    def media_failed(self, failure: Failure, request: Request, info: SpiderInfo) -> Any:
        if isinstance(failure.value, ImageFailed):  # media_downloaded refused it, and said so
            raise failure.value
        if failure.value is not None and cut_at_maxsize(failure.value):
            fail_image(self.ctx, "too_many_bytes", request, f"over {self.ctx.download_maxsize} bytes")
        fail_image(self.ctx, "download_error", request, f"{type(failure.value).__name__}: {failure.value}")

    def _count(self, status: str, request: Request, info: SpiderInfo) -> None:
        """Scrapy's own file stats and its debug line, as FilesPipeline gives them."""
        stats = self.crawler.stats
        assert stats is not None
        stats.inc_value("file_count")
        stats.inc_value(f"file_status_count/{status}")
        if logger.isEnabledFor(logging.DEBUG):  # (its referer costs more than the line is worth off)
            logger.debug("File (%s): %s referred in <%s>", status, request.url, referer_str(request))

    # -- results (blocking: in threads) ----------------------------------------------------

    def _result(
        self,
        request: Request,
        path: str | None,
        entry: Entry | None,
        outcome: Outcome | None,
        cache_status: CacheStatus,
        checksum: str,
        size: int,
        thumbs: dict[str, str],
    ) -> dict[str, Any]:
        """What ImagesPipeline returns for one image, and what the cache knows of it."""
        result: dict[str, Any] = {
            "url": request.url,
            "path": path,
            "checksum": checksum,
            "status": {"hit": "uptodate", "miss": "downloaded"}.get(cache_status, "cached"),
        }
        result.update(cache_fields(entry, outcome, cache_status, size))
        if self.thumbs:
            result["thumbs"] = thumbs
        return result

    # -- hooks ImgCachePipeline replaces (see REPLACED_HOOKS) ------------------------------

    @_cached
    def file_path(
        self, request: Request, response: Response | None = None, info: SpiderInfo | None = None, *, item: Any = None
    ) -> str:
        """ImagesPipeline's ``full/<SHA-1 of the URL>``, with the image's real extension (the
        original bytes are kept): ``.jpg`` for JPEGs, ``.png`` for PNGs…"""
        path = super().file_path(request, response=response, info=info, item=item)
        extension: str | None = request.meta.get(META_EXTENSION)
        entry: Entry | None = request.meta.get(META_ENTRY)
        if extension is None and entry is not None and entry.path:
            extension = "." + entry.path.rsplit(".", 1)[-1]
        return path.rsplit(".", 1)[0] + extension if extension else path

    @_cached
    def item_completed(self, results: list[Any], item: Any, info: SpiderInfo) -> Any:
        """ImagesPipeline's, after ``IMGCACHE_ON_SIMILAR = "drop"`` had its say."""
        drop_near_duplicates(self, results)
        return super().item_completed(results, item, info)


def drop_near_duplicates(pipeline: ImgCachePipeline, results: list[Any]) -> None:
    """``DropItem`` when an image of the item is a near-duplicate of an image another item
    brought (two near-identical photos of one item do not drop it)."""
    if not pipeline.cache_on or pipeline.config.on_similar != "drop":
        return
    images = [r for ok, r in results if ok]
    for r in images:
        if r.get("duplicate") != "similar":
            continue
        # the item's own photos: not near-duplicates themselves (under "drop" those point at
        # the image they matched, which another item's near-duplicate does too)
        others = {o.get("content_hash") for o in images if o is not r and o.get("duplicate") != "similar"}
        if r.get("duplicate_of") not in others:
            pipeline.ctx.inc("dropped/similar")
            raise DropItem(
                f"near-duplicate image {r['url']} (distance {r['hamming_distance']} from {r['duplicate_of'][:12]})"
            )


def cache_fields(entry: Entry | None, outcome: Outcome | None, cache_status: CacheStatus, size: int) -> dict[str, Any]:
    """The result fields beyond ImagesPipeline's: what the cache knows of the image."""
    if entry is None:  # stored nowhere: the store was down and IMGCACHE_ON_STORE_ERROR = "continue"
        return {"content_hash": None, "cache": "error", "size": size}
    duplicate = outcome.duplicate if outcome is not None else None
    duplicate_of = outcome.duplicate_of if outcome is not None else None
    distance = outcome.hamming_distance if outcome is not None else None
    match = outcome.match if outcome is not None else None
    match_distance = outcome.match_distance if outcome is not None else None
    if outcome is None and entry.similar_to:  # answered from the cache: what it was stored as
        duplicate, duplicate_of, distance = "similar", entry.similar_to, entry.similar_distance
        match = entry.similar_match
    elif outcome is None and entry.duplicate == "exact":  # and what this URL's record says it was
        duplicate, duplicate_of = "exact", entry.content_hash
    return {
        "content_hash": entry.content_hash,
        "perceptual_hash": entry.perceptual_hash,
        "width": entry.width,
        "height": entry.height,
        "content_type": entry.content_type,
        "size": entry.file_size_bytes,
        "duplicate": duplicate,
        "duplicate_of": duplicate_of,
        "hamming_distance": distance,
        "match_distance": match_distance,
        "match": match,
        "cache": cache_status,
    }
