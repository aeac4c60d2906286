"""What the pipeline and the middleware of one crawler share: config, store, ingestor, stats.

The config is parsed once per crawler; the store is opened once, in a thread (opening it may
create the schema), when the first component needs it. When the settings are wrong or the
cache cannot be opened, the crawl must not quietly run uncached: the reason is logged as
one ERROR line, no request is let through, and the spider is closed with the finish reason
``imgcache_unavailable``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from scrapy import signals

from ._compat import close_spider, in_thread
from .config import ImgCacheConfig, unknown_settings
from .errors import ConfigError, ImgCacheError, StoreError
from .store import open_store

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from scrapy.crawler import Crawler

    from .ingest import Ingestor, Outcome
    from .store.base import Answer, Store

logger = logging.getLogger(__name__)
T = TypeVar("T")
_ATTR = "_imgcache_context"
#: the finish reason of a crawl whose cache cannot be used
UNAVAILABLE = "imgcache_unavailable"


class Gathered(Generic[T]):
    """Calls of one blocking function made in one turn of the event loop, run in one thread hop.

    A hop costs the reactor ~0.1-0.2 ms of CPU (a future, an executor work item, a wake-up, the
    callbacks), as much as the SQLite lookup it carries; the pipeline asks the cache about
    every image URL of an item in the same turn, so those lookups now share one hop. Each call
    still gets its own result or exception. Without a running asyncio loop (Twisted's default
    reactor) each call takes its own hop, as before.
    """

    MAX_BATCH = 16

    def __init__(self, func: Callable[..., T]) -> None:
        self.func = func
        self._pending: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[T]]] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> T:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return await in_thread(self.func, *args, **kwargs)
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((args, kwargs, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        pending, self._pending = self._pending, []
        # a crawl's start asks about hundreds of URLs in one turn: hops of at most MAX_BATCH
        # calls run in parallel threads, so the first answers do not wait for the last
        for start in range(0, len(pending), self.MAX_BATCH):
            batch = pending[start : start + self.MAX_BATCH]
            try:
                done = loop.run_in_executor(None, self._run, batch)
            except BaseException as exc:  # noqa: BLE001 - an executor shut down: every caller hears it
                self._fail(batch, exc)
                continue
            done.add_done_callback(functools.partial(self._deliver, batch))

    def _run(self, batch: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[T]]]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        for args, kwargs, _ in batch:
            try:
                results.append((True, self.func(*args, **kwargs)))
            except Exception as exc:  # noqa: BLE001 - handed to that call's caller
                results.append((False, exc))
        return results

    def _deliver(self, batch: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[T]]], done: Any) -> None:
        if done.cancelled():
            self._fail(batch, asyncio.CancelledError())
            return
        exc = done.exception()
        if exc is not None:
            self._fail(batch, exc)
            return
        for (_, _, future), (ok, value) in zip(batch, done.result(), strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    @staticmethod
    def _fail(batch: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[T]]], exc: BaseException) -> None:
        for _, _, future in batch:
            if not future.done():
                future.set_exception(exc)


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
        self._ingestor: Ingestor | None = None
        self._users = 0
        self._reported = False
        #: ImgCacheMiddleware is enabled (without it the pipeline says, at open, what it leaves out)
        self.middleware_on = False
        #: spider_opened has been sent: a handler connected now would never run
        self._spider_opened = False
        crawler.signals.connect(self._note_spider_opened, signal=signals.spider_opened)
        self._answers: Gathered[Answer | None] = Gathered(self._answer)

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

    async def answer(self, url: str, fresh_since: datetime) -> Answer | None:
        """What the cache has for ``url`` (:meth:`Store.answer`), in a thread; the lookups of
        one turn of the event loop share one thread hop."""
        return await self._answers(url, fresh_since)

    def _answer(self, url: str, fresh_since: datetime) -> Answer | None:
        """A fresh entry whose bytes are gone or damaged is counted, and answered as unknown:
        fetched again from scratch (its validators would only bring a 304 without the bytes)."""
        store, bucket = self.store, self.config.bucket
        found = store.answer(url, bucket=bucket, client_name=self.client_name(), fresh_since=fresh_since)
        if found is not None and found.damaged:
            self.inc("damaged")
            return None
        return found

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
        from .ingest import Ingestor

        if self._store is not None:  # pragma: no cover - two components raced; keep the first
            await in_thread(store.close)
            return
        self._store = store
        self._ingestor = Ingestor(store, self.config)
        await in_thread(self._ingestor.start)
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

    @property
    def ingestor(self) -> Ingestor:
        if self._ingestor is None:
            raise StoreError("the image cache is not open")
        return self._ingestor

    async def release(self) -> None:
        self._users -= 1
        if self._users <= 0 and self._store is not None:
            store, self._store, self._ingestor = self._store, None, None
            await in_thread(store.close)

    def inc(self, key: str, count: int = 1) -> None:
        """Count in Scrapy's stats, from any thread: the pipeline counts its images in the
        threads that store them, and Scrapy's ``inc_value`` is a read then a write (two
        threads counting at once lost one: a benchmark crawl reported 3,299 images stored of
        3,300), so the plugin's counts take a lock."""
        if self.stats is not None:
            with self._stats_lock:
                self.stats.inc_value(f"imgcache/{key}", count)

    def count(self, outcome: Outcome) -> None:
        """The stats every stored image counts in, wherever it was stored from."""
        if outcome.created:
            self.inc("stored")
        if outcome.duplicate:
            self.inc(f"duplicate/{outcome.duplicate}")
        if not outcome.stored:
            self.inc("bytes_saved", outcome.size)
