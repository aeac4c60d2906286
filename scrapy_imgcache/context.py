"""What the pipeline and the middleware of one crawler share: config, store, stats.

The config is parsed once per crawler; the store is opened once, in a thread (opening it
may create the schema), when the first component needs it; a store that cannot be opened
fails the spider's start with a clear message instead of a crawl that caches nothing.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.threads import deferToThread

from .config import ImgCacheConfig
from .errors import ImgCacheError, StoreError
from .store.base import Store

if TYPE_CHECKING:
    from collections.abc import Callable

    from scrapy.crawler import Crawler

    from .ingest import Outcome

logger = logging.getLogger(__name__)
T = TypeVar("T")
_ATTR = "_imgcache_context"


async def in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work off the reactor thread, under either reactor (Scrapy >= 2.13)."""
    try:
        from scrapy.utils.asyncio import run_in_thread  # Scrapy >= 2.15
    except ImportError:  # pragma: no cover - depends on the Scrapy version
        from scrapy.utils.defer import maybe_deferred_to_future

        return await maybe_deferred_to_future(deferToThread(func, *args, **kwargs))
    return await run_in_thread(func, *args, **kwargs)


def component_result(coro: Any) -> Any:
    """What a pipeline's ``open_spider``/``close_spider`` returns: Scrapy >= 2.14 awaits a
    coroutine; Scrapy 2.13 only waits for a Deferred."""
    from scrapy.pipelines import ItemPipelineManager

    if hasattr(ItemPipelineManager, "open_spider_async"):
        return coro
    from scrapy.utils.defer import deferred_from_coro

    return deferred_from_coro(coro)


class ImgCacheContext:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.config = ImgCacheConfig.from_settings(crawler.settings)
        self.stats = crawler.stats
        #: the most bytes an image download may bring: IMGCACHE_MAX_BYTES, or Scrapy's
        #: DOWNLOAD_MAXSIZE where that is lower (set as each image request's download_maxsize)
        scrapy_max = crawler.settings.getint("DOWNLOAD_MAXSIZE")
        self.download_maxsize = min(self.config.max_bytes, scrapy_max) if scrapy_max else self.config.max_bytes
        self._store: Store | None = None
        self._users = 0

    @classmethod
    def of(cls, crawler: Crawler) -> ImgCacheContext:
        """The one context of this crawler (created by whichever component asks first)."""
        ctx = getattr(crawler, _ATTR, None)
        if ctx is None:
            ctx = cls(crawler)
            setattr(crawler, _ATTR, ctx)
        return ctx

    def client_name(self) -> str:
        spider = self.crawler.spider
        return self.config.client_name or (spider.name if spider is not None else "scrapy")

    async def open(self) -> Store:
        """Open the store (once) for a component; pair with :meth:`release`."""
        self._users += 1
        if self._store is None:
            try:
                store = await in_thread(self.config.open_store)
            except ImgCacheError:
                raise
            except Exception as exc:  # driver errors, unreachable servers
                raise StoreError(f"cannot open the image cache at {self.config.url!r}: {exc}") from exc
            if self._store is None:
                self._store = store
                logger.info("imgcache: using %r (bucket %r)", store, self.config.bucket)
            else:  # pragma: no cover - two components raced; keep the first
                await in_thread(store.close)
        return self._store

    @property
    def store(self) -> Store:
        if self._store is None:
            raise StoreError("the image cache is not open yet")
        return self._store

    async def release(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._store is not None:
            store, self._store = self._store, None
            await in_thread(store.close)

    def inc(self, key: str, count: int = 1) -> None:
        if self.stats is not None:
            self.stats.inc_value(f"imgcache/{key}", count)

    def count(self, outcome: Outcome) -> None:
        """The stats every stored image counts in, wherever it was stored from."""
        if outcome.created:
            self.inc("stored")
        if outcome.duplicate:
            self.inc(f"duplicate/{outcome.duplicate}")
        if not outcome.stored:
            self.inc("bytes_saved", outcome.size)
