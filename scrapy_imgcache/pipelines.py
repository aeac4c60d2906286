"""``ImgCachePipeline``: a drop-in for Scrapy's ImagesPipeline over the shared cache.

Same item fields (``IMAGES_URLS_FIELD`` → ``IMAGES_RESULT_FIELD``), same result entries
(``url``, ``path``, ``checksum``, ``status``) plus what the cache knows (content and
perceptual hashes, size, type, duplicate status). Differences that are the point:
- each distinct content is stored once, under its content hash, in its original format;
- every URL it was seen at is recorded with the spider's client name, in a store that
  other spiders, processes and machines share;
- near-duplicates follow ``IMGCACHE_ON_SIMILAR`` (annotate, skip or drop the item);
- decoding, hashing, database and disk work run in threads, never on the reactor.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from itemadapter import ItemAdapter
from scrapy import Request
from scrapy.exceptions import DropItem, NotConfigured
from scrapy.http.request import NO_CALLBACK
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from .context import ImgCacheContext, component_result, in_thread
from .errors import InvalidImage, StoreError
from .ingest import Ingestor, Outcome, checksum, ingest_response, make_thumbnails
from .middleware import (
    META_ENTRY,
    META_KEY,
    META_PIPELINE,
    META_STATUS,
    RESPONSE_FLAG,
    cut_at_maxsize,
)
from .store.base import Entry

if TYPE_CHECKING:
    from scrapy import Spider
    from scrapy.crawler import Crawler
    from scrapy.http import Response

logger = logging.getLogger(__name__)


class ImageFailed(Exception):
    """One image of an item could not be cached; the reason is its stat/log name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ImgCachePipeline:
    #: completed results remembered per URL within a crawl, so items sharing an image reuse
    #: it (bounded, so memory stays flat; results still being computed are never evicted)
    results_memory = 4096

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.ctx = ImgCacheContext.of(crawler)
        if not self.ctx.config.enabled:
            raise NotConfigured("IMGCACHE_ENABLED is False")
        self.config = self.ctx.config
        settings = crawler.settings
        self.urls_field = settings.get("IMAGES_URLS_FIELD") or "image_urls"
        self.result_field = settings.get("IMAGES_RESULT_FIELD") or "images"
        self.thumbs: dict[str, tuple[int, int]] = dict(settings.getdict("IMAGES_THUMBS") or {})
        self.min_width = settings.getint("IMAGES_MIN_WIDTH", 0)
        self.min_height = settings.getint("IMAGES_MIN_HEIGHT", 0)
        self.ingestor: Ingestor | None = None
        self._results: OrderedDict[str, _Pending | dict[str, Any]] = OrderedDict()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> ImgCachePipeline:
        return cls(crawler)

    def open_spider(self, spider: Spider | None = None) -> Any:
        return component_result(self._open())

    def close_spider(self, spider: Spider | None = None) -> Any:
        return component_result(self.ctx.release())

    async def _open(self) -> None:
        store = await self.ctx.open()
        self.ingestor = Ingestor(store, self.config, min_width=self.min_width, min_height=self.min_height)
        await in_thread(self.ingestor.start)

    async def process_item(self, item: Any, spider: Spider | None = None) -> Any:
        adapter = ItemAdapter(item)
        urls = list(dict.fromkeys(adapter.get(self.urls_field) or []))
        outcomes = await _gather([self._image(url) for url in urls])
        results: list[dict[str, Any]] = []
        for url, outcome in zip(urls, outcomes, strict=True):
            if isinstance(outcome, ImageFailed):
                self.ctx.inc(f"invalid/{outcome.reason}")
                logger.warning("Image (%s): %s failed: %s", outcome.reason, url, outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.append(outcome)
        try:
            adapter[self.result_field] = results
        except KeyError:  # a declared item class without the results field: as Scrapy does
            pass
        if self.config.on_similar == "drop":
            similar = [r for r in results if r["duplicate"] == "similar"]
            if similar:
                self.ctx.inc("dropped/similar")
                raise DropItem(
                    f"near-duplicate image {similar[0]['url']} (distance {similar[0]['hamming_distance']} "
                    f"from {similar[0]['duplicate_of'][:12]})"
                )
        return item

    async def _image(self, url: str) -> dict[str, Any]:
        """One URL's result, computed once per crawl even when many items share the URL."""
        known = self._results.get(url)
        if isinstance(known, dict):
            return known
        if isinstance(known, _Pending):
            return await maybe_deferred_to_future(known.wait())
        pending = self._results[url] = _Pending()
        try:
            result = await self._fetch_and_cache(url)
        except BaseException as exc:
            self._results.pop(url, None)
            pending.fire(Failure(exc))
            raise
        self._results[url] = result
        pending.fire(result)
        self._forget_oldest_results()
        return result

    def _forget_oldest_results(self) -> None:
        """Evict the oldest completed results past ``results_memory``; pending ones stay, or
        their download's outcome would find nothing to update and its waiters would hang."""
        excess = len(self._results) - self.results_memory
        if excess <= 0:
            return
        for url in [u for u, r in self._results.items() if isinstance(r, dict)][:excess]:
            del self._results[url]

    async def _fetch_and_cache(self, url: str) -> dict[str, Any]:
        meta = {META_KEY: True, META_PIPELINE: True, "download_maxsize": self.ctx.download_maxsize}
        request = Request(url, callback=NO_CALLBACK, meta=meta)
        try:
            response = await _download(self.crawler, request)
        except Exception as exc:  # DNS, connection refused, timeouts: as ImagesPipeline, a failed image
            if cut_at_maxsize(exc):
                raise ImageFailed("too_many_bytes", f"over {self.ctx.download_maxsize} bytes: {exc}") from exc
            raise ImageFailed("download_error", f"{type(exc).__name__}: {exc}") from exc
        if response.status != 200:
            raise ImageFailed("http_error", f"HTTP {response.status}")
        if not response.body:
            raise ImageFailed("empty", "empty body")
        entry: Entry | None = request.meta.get(META_ENTRY)
        try:
            if RESPONSE_FLAG in response.flags and entry is not None:
                return await in_thread(self._from_cache, response, entry, request.meta.get(META_STATUS, "hit"))
            return await in_thread(self._ingest, response)
        except InvalidImage as exc:
            raise ImageFailed(exc.reason, exc.message) from exc
        except StoreError as exc:
            self.ctx.inc("store_error")
            if self.config.on_store_error == "continue":
                raise ImageFailed("store_error", str(exc)) from exc
            raise

    def _ingest(self, response: Response) -> dict[str, Any]:
        assert self.ingestor is not None
        outcome = ingest_response(self.ingestor, response, self.ctx.client_name())
        self.ctx.count(outcome)
        status = "downloaded"
        logger.debug("Image (%s): %s %s", outcome.duplicate or status, response.url, outcome.entry.content_hash[:12])
        return self._result(response, outcome, status)

    def _from_cache(self, response: Response, entry: Entry, status: str) -> dict[str, Any]:
        """Answered by the middleware from the cache: nothing to hash or store again."""
        outcome = Outcome(entry, created=False, stored=False, size=entry.file_size_bytes)
        return self._result(response, outcome, "uptodate", cache_status=status)

    def _result(
        self, response: Response, outcome: Outcome, status: str, cache_status: str | None = None
    ) -> dict[str, Any]:
        entry = outcome.entry
        result: dict[str, Any] = {
            "url": response.url,
            "path": entry.path,
            "checksum": checksum(response.body),
            "status": status,
            "content_hash": entry.content_hash,
            "perceptual_hash": entry.perceptual_hash,
            "width": entry.width,
            "height": entry.height,
            "content_type": entry.content_type,
            "size": entry.file_size_bytes,
            "duplicate": outcome.duplicate,
            "duplicate_of": outcome.duplicate_of,
            "hamming_distance": outcome.hamming_distance,
            "cache": cache_status or "miss",
        }
        if cache_status is not None and entry.similar_to:
            result.update(duplicate="similar", duplicate_of=entry.similar_to, hamming_distance=entry.similar_distance)
        if self.thumbs:
            result["thumbs"] = make_thumbnails(self.ctx.store, entry.content_hash, response.body, self.thumbs)
        return result


class _Pending:
    """A result being computed; later askers wait on their own Deferred (works on either reactor)."""

    def __init__(self) -> None:
        self.waiters: list[Deferred[Any]] = []

    def wait(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiters.append(d)
        return d

    def fire(self, result: Any) -> None:
        for d in self.waiters:
            d.callback(result) if not isinstance(result, Failure) else d.errback(result)


async def _gather(coros: list[Any]) -> list[Any]:
    """Run coroutines concurrently; results or exceptions in order (either reactor)."""
    if not coros:
        return []
    done = await maybe_deferred_to_future(DeferredList([deferred_from_coro(c) for c in coros], consumeErrors=True))
    return [value if ok else value.value for ok, value in done]


async def _download(crawler: Crawler, request: Request) -> Response:
    engine = crawler.engine
    assert engine is not None
    if hasattr(engine, "download_async"):  # Scrapy >= 2.14
        return await engine.download_async(request)
    return await maybe_deferred_to_future(engine.download(request))
