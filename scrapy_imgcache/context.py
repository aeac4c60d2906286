"""What the pipeline and the middleware of one crawler share: config, store, ingestor, stats.

The config is parsed once per crawler; the store is opened once, in a thread (opening it may
create the schema), when the first component needs it. When the settings are wrong or the
cache cannot be opened, the crawl must not quietly run uncached: the reason is logged as
one ERROR line, no request is let through, and the spider is closed with the finish reason
``imgcache_unavailable``.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, cast

from scrapy import signals

from ._compat import close_spider, in_thread
from .config import ImgCacheConfig, unknown_settings
from .contract import STAT_PREFIX, InvalidStat, StatKey
from .errors import ConfigError, ImgCacheError, StoreError
from .store import open_store

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

    from .engine.client import Engine
    from .engine.service import ViewSpec
    from .ingest import Outcome
    from .store.base import Store

logger = logging.getLogger(__name__)
_ATTR = "_imgcache_context"
#: the finish reason of a crawl whose cache cannot be used
UNAVAILABLE = "imgcache_unavailable"


class ImgCacheContext:
    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self._stats_lock = threading.Lock()
        #: why the cache cannot be used (a bad setting, a store that cannot be opened)
        self.failed: str | None = None
        for warning in unknown_settings(crawler.settings):
            logger.warning("imgcache: %s", warning)
        try:
            self.config = ImgCacheConfig.from_settings(crawler.settings)
        except ConfigError as exc:  # reported at open, as one line, with the crawl stopped
            self.config = ImgCacheConfig()
            self.failed = str(exc)
        #: the most bytes an image download may bring: IMGCACHE_MAX_BYTES, or Scrapy's
        #: DOWNLOAD_MAXSIZE where that is lower (set as each image request's download_maxsize)
        scrapy_max = crawler.settings.getint("DOWNLOAD_MAXSIZE")
        self.download_maxsize = min(self.config.max_bytes, scrapy_max) if scrapy_max else self.config.max_bytes
        self._store: Store | None = None
        #: where the per-image work runs (engine worker processes, or threads); set at open
        self._engine: Engine | None = None
        #: the IMAGES_STORE folders/buckets the engine writes, by key (the pipelines add theirs)
        self.views: dict[str, ViewSpec] = {}
        self._users = 0
        self._reported = False
        #: ImgCacheMiddleware is enabled (without it the pipeline says, at open, what it leaves out)
        self.middleware_on = False
        #: spider_opened has been sent: a handler connected now would never run
        self._spider_opened = False
        crawler.signals.connect(self._note_spider_opened, signal=signals.spider_opened)

    @classmethod
    def of(cls, crawler: Crawler) -> ImgCacheContext:
        """The one context of this crawler (created by whichever component asks first)."""
        ctx: ImgCacheContext | None = getattr(crawler, _ATTR, None)
        if ctx is None:
            ctx = cls(crawler)
            setattr(crawler, _ATTR, ctx)
        return ctx

    def client_name(self) -> str:
        spider = self.crawler.spider
        return self.config.client_name or (spider.name if spider is not None else "scrapy")

    def add_view(self, spec: ViewSpec) -> str:
        """Register an ``IMAGES_STORE`` for the engine to write (before the cache is opened)."""
        key = str(len(self.views))
        self.views[key] = spec
        return key

    async def call(self, operation: str, *args: Any, body: bytes = b"") -> Any:
        """One of the engine's operations (:class:`~.engine.service.CacheService`'s), where it
        runs; its StoreError, InvalidImage or OSError is raised here."""
        if self._engine is None:
            raise StoreError("the image cache is not open")
        return await self._engine.call(operation, *args, body=body)

    def check(self, problem: str | None) -> None:
        """Note a start-up problem a component found (an option it cannot honour)."""
        if problem and self.failed is None:
            self.failed = problem

    async def open(self) -> bool:
        """Open the store and the ingestor (once) for a component; pair with :meth:`release`.
        False when the cache cannot be used: the reason is logged once and the spider closed."""
        self._users += 1
        if self.failed is None and self._store is None:
            try:
                store = await in_thread(open_store, self.config)
            except ImgCacheError as exc:
                self.failed = str(exc)
            except ImportError as exc:  # a missing driver or extra (the message names it)
                self.failed = f"cannot open the image cache at {self.config.url!r}: {exc}"
            except Exception as exc:  # noqa: BLE001 - driver errors, unreachable servers
                self.failed = f"cannot open the image cache at {self.config.url!r}: {type(exc).__name__}: {exc}"
            else:
                await self._started(store)
        if self.failed is not None:
            self._report()
            return False
        return True

    async def _started(self, store: Store) -> None:
        from .engine.client import open_engine

        if self._store is not None:  # pragma: no cover - two components raced; keep the first
            await in_thread(store.close)
            return
        self._store = store
        try:
            self._engine = await in_thread(open_engine, self.config, self.views, store)
        except Exception as exc:  # noqa: BLE001 - the store could be opened, not its workers' own
            self.failed = f"cannot open the image cache at {self.config.url!r}: {type(exc).__name__}: {exc}"
            return
        logger.info("imgcache: using %r (bucket %r)", store, self.config.bucket)

    def _report(self) -> None:
        """One ERROR line, and the spider closed as soon as it is open."""
        if self._reported:
            return
        self._reported = True
        logger.error("imgcache: the image cache cannot be used, so the crawl stops: %s", self.failed)
        self.inc("unavailable")
        # reported from a spider_opened handler (the middleware's open), where a handler of that
        # signal connected now would never run: closed once the engine starts, as closing a spider
        # still being opened can leave Scrapy (2.13) waiting for ever
        if self._spider_opened:
            self.crawler.signals.connect(self._close_at_start, signal=signals.engine_started)
        else:
            self.crawler.signals.connect(self._close_spider, signal=signals.spider_opened)

    def _note_spider_opened(self, spider: Any) -> None:
        self._spider_opened = True

    def _close_at_start(self) -> None:
        """While the engine starts: before its start requests, after the spider is open."""
        self._close_now(self.crawler.spider)

    def _close_spider(self, spider: Any) -> None:
        """Scheduled, not done here: an engine still opening the spider cannot close it yet."""
        from twisted.internet import reactor

        cast(Any, reactor).callLater(0, self._close_now, spider)  # the installed reactor (untyped module)

    def _close_now(self, spider: Any) -> Any:
        engine = self.crawler.engine
        assert engine is not None
        return close_spider(engine, spider, UNAVAILABLE)

    @property
    def store(self) -> Store:
        if self._store is None:
            raise StoreError("the image cache is not open")
        return self._store

    async def release(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._store is not None:
            from .engine.client import release_engine

            store, self._store, engine, self._engine = self._store, None, self._engine, None
            if engine is not None:
                await in_thread(release_engine, engine)
            await in_thread(store.close)

    def inc(self, key: StatKey | InvalidStat, count: int = 1) -> None:
        """Count in Scrapy's stats, from any thread: the pipeline counts its images in the
        threads that store them, and Scrapy's ``inc_value`` is a read then a write (two
        threads counting at once lost one: a benchmark crawl reported 3,299 images stored of
        3,300), so the plugin's counts take a lock."""
        if self.stats is not None:
            with self._stats_lock:
                self.stats.inc_value(STAT_PREFIX + key, count)

    def count(self, outcome: Outcome) -> None:
        """The stats every stored image counts in, wherever it was stored from."""
        if outcome.created:
            self.inc("stored")
        if outcome.duplicate:
            self.inc("duplicate/similar" if outcome.duplicate == "similar" else "duplicate/exact")
        if not outcome.stored:
            self.inc("bytes_saved", outcome.size)
