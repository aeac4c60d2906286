"""ImgCacheContext: what the pipeline and the middleware of one crawler share.

In-process (a real Crawler; the reactor is pytest-twisted's): one context and one parsed config
per crawler, the store opened once when first needed and closed after its last user, a cache
that cannot be used reported once, the stats it counts. In real ``scrapy crawl`` processes: a
crawl's two components use one store, every ``imgcache/`` stat a crawl writes is documented, and
either component alone stops a crawl it cannot cache before a single request.
"""

from __future__ import annotations

import io
import json
import logging
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from PIL import Image
from scrapy import Spider, signals
from scrapy.utils.test import get_crawler

from scrapy_imgcache.context import UNAVAILABLE, ImgCacheContext
from scrapy_imgcache.engine.service import Download
from scrapy_imgcache.errors import StoreError
from scrapy_imgcache.hashing import DEFAULT_MAX_BYTES
from scrapy_imgcache.ingest import Ingestor
from scrapy_imgcache.middleware import ImgCacheMiddleware
from scrapy_imgcache.pipelines import ImgCachePipeline
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import (
    REPO,
    Crawl,
    cache_settings,
    crawl,
    distinct_jpegs,
    encode,
    free_port,
    fresh_url,
    make_project,
)

pytestmark = pytest.mark.scrapy_api

PIPELINE = {"scrapy_imgcache.pipelines.ImgCachePipeline": 1}
MIDDLEWARE = {"scrapy_imgcache.middleware.ImgCacheMiddleware": 585}
USING = "imgcache: using "  # the INFO line of a store being opened


def crawler_for(tmp_path: Path, **settings: Any) -> Any:
    """A real Crawler with the cache in ``tmp_path`` (not crawling: its components are built by hand)."""
    return get_crawler(Spider, cache_settings(tmp_path, IMGCACHE_HASH_PROCESSES=0, **settings))


def unreachable_url() -> str:
    return f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none"


def documented_stats() -> tuple[set[str], set[str]]:
    """docs/reference/stats.md's ``imgcache/`` keys, and the reasons of ``imgcache/invalid/<reason>``."""
    text = (REPO / "docs" / "reference" / "stats.md").read_text()
    keys = set(re.findall(r"^\| `(imgcache/[a-z_/]+)` \|", text, flags=re.M))
    row = next(line for line in text.splitlines() if line.startswith("| `imgcache/invalid/<reason>`"))
    return keys, set(re.findall(r"`([a-z_]+)`", row.split("|")[2]))


def undocumented(stats: dict[str, Any]) -> list[str]:
    keys, reasons = documented_stats()
    return [
        k
        for k in stats
        if k.startswith("imgcache/") and k not in keys and k.removeprefix("imgcache/invalid/") not in reasons
    ]


# -- one context per crawler (in-process) ----------------------------------------------------


def test_the_pipeline_and_the_middleware_of_a_crawler_share_one_context_and_config(tmp_path):
    crawler = crawler_for(tmp_path, IMGCACHE_ON_SIMILAR="skip")
    pipeline = ImgCachePipeline.from_crawler(crawler)
    middleware = ImgCacheMiddleware.from_crawler(crawler)
    ctx = ImgCacheContext.of(crawler)
    assert pipeline.ctx is middleware.ctx is ctx is ImgCacheContext.of(crawler)
    assert pipeline.config is middleware.config is ctx.config and ctx.config.on_similar == "skip"
    assert ctx.failed is None
    other = crawler_for(tmp_path / "other")
    assert ImgCacheContext.of(other) is not ctx
    # nothing is opened until a component needs it
    assert not (tmp_path / "cache.sqlite3").exists() and not (tmp_path / "files").exists()
    with pytest.raises(StoreError, match="not open"):
        _ = ctx.store


def test_a_bad_setting_is_kept_for_open_and_the_first_problem_wins(tmp_path):
    crawler = crawler_for(tmp_path, IMGCACHE_ON_SIMILAR="bogus")
    pipeline = ImgCachePipeline.from_crawler(crawler)  # builds: the problem is reported at open
    ctx = pipeline.ctx
    assert ctx.failed == "IMGCACHE_ON_SIMILAR='bogus': one of annotate, skip, drop is expected"
    assert ctx.config.on_similar == "annotate"  # the defaults stand in meanwhile
    ctx.check(None)
    ctx.check("another problem")
    assert ctx.failed.startswith("IMGCACHE_ON_SIMILAR='bogus'")
    fine = ImgCacheContext.of(crawler_for(tmp_path / "fine"))
    fine.check(None)
    assert fine.failed is None
    fine.check("IMAGES_STORE cannot be written")
    assert fine.failed == "IMAGES_STORE cannot be written"


@pytest.mark.parametrize(
    ("imgcache_max", "scrapy_max", "expected"),
    [
        (None, None, DEFAULT_MAX_BYTES),  # Scrapy's 1 GiB default is the higher
        (5000, 1000, 1000),
        (1000, 5000, 1000),
        (5000, 0, 5000),  # DOWNLOAD_MAXSIZE = 0: no Scrapy limit
    ],
)
def test_an_image_downloads_limit_is_the_lower_of_imgcache_max_bytes_and_download_maxsize(
    tmp_path, imgcache_max, scrapy_max, expected
):
    limits = {"IMGCACHE_MAX_BYTES": imgcache_max, "DOWNLOAD_MAXSIZE": scrapy_max}
    settings = {name: value for name, value in limits.items() if value is not None}
    assert ImgCacheContext.of(crawler_for(tmp_path, **settings)).download_maxsize == expected


def test_the_client_name_is_the_setting_else_the_spiders_name(tmp_path):
    assert ImgCacheContext.of(crawler_for(tmp_path, IMGCACHE_CLIENT_NAME="shop")).client_name() == "shop"
    crawler = crawler_for(tmp_path / "b")
    ctx = ImgCacheContext.of(crawler)
    assert ctx.client_name() == "scrapy"  # no spider yet
    crawler.spider = Spider(name="blog")
    assert ctx.client_name() == "blog"


# -- opening and closing the store (in-process, on the reactor) --------------------------------


@pytest_twisted.ensureDeferred
async def test_the_store_is_opened_once_for_its_users_and_closed_after_the_last(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="scrapy_imgcache")
    ctx = ImgCacheContext.of(crawler_for(tmp_path))
    assert await ctx.open()
    store = ctx.store
    assert isinstance(store, SqlStore)
    assert (tmp_path / "cache.sqlite3").exists()
    assert await ctx.open()  # the second component
    assert ctx.store is store
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith(USING)] == [
        f"{USING}{store!r} (bucket '')"
    ]
    await ctx.release()  # one component closes: the other still has the store
    assert ctx.store is store
    url = fresh_url()
    stored = await ctx.call("store_download", Download(url, "t"), body=small_jpeg())
    assert stored.outcome.created
    assert store.lookup(url) is not None
    await ctx.release()
    with pytest.raises(StoreError, match="not open"):
        _ = ctx.store
    with pytest.raises(StoreError, match="not open"):
        await ctx.call("answer", url, datetime.now(timezone.utc), "t", False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("IMGCACHE_ON_SIMILAR", "bogus", "IMGCACHE_ON_SIMILAR='bogus': one of annotate, skip, drop is expected"),
        ("IMGCACHE_URL", None, "cannot reach the database at postgresql+psycopg://nobody@127.0.0.1:"),
    ],
    ids=["bad-setting", "unreachable"],
)
@pytest_twisted.ensureDeferred
async def test_a_cache_that_cannot_be_used_is_reported_once_however_many_components_ask(
    tmp_path, caplog, setting, value, message
):
    caplog.set_level(logging.INFO, logger="scrapy_imgcache")
    crawler = crawler_for(tmp_path, **{setting: value or unreachable_url()})
    ctx = ImgCacheContext.of(crawler)
    assert await ctx.open() is False
    assert await ctx.open() is False  # the second component
    assert message in ctx.failed
    mine = [r for r in caplog.records if r.name.startswith("scrapy_imgcache")]
    assert [r.levelno for r in mine] == [logging.ERROR], [r.getMessage() for r in mine]
    assert mine[0].getMessage() == f"imgcache: the image cache cannot be used, so the crawl stops: {ctx.failed}"
    assert mine[0].exc_info is None  # one line, no traceback
    assert crawler.stats.get_value("imgcache/unavailable") == 1
    with pytest.raises(StoreError, match="not open"):
        _ = ctx.store
    assert not (tmp_path / "cache.sqlite3").exists()
    await ctx.release()
    await ctx.release()


# -- stats ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_count_and_inc_write_the_documented_stats_of_each_outcome(tmp_path):
    crawler = crawler_for(tmp_path)
    ctx = ImgCacheContext.of(crawler)
    assert await ctx.open()
    try:
        original = small_jpeg()
        img = Image.open(io.BytesIO(original))
        near = encode(img.resize((img.width * 3 // 4, img.height * 3 // 4)))
        smaller = encode(img.resize((img.width // 2, img.height // 2)))
        ingestor = Ingestor(ctx.store, ctx.config)
        outcomes = [
            ingestor.ingest(data, url=fresh_url(), client_name="t", on_similar=policy)
            for data, policy in [
                (original, None),  # new
                (original, None),  # an exact copy
                (near, None),  # a near-duplicate, annotated: stored
                (near, "skip"),  # an exact copy of that
                (smaller, "skip"),  # a near-duplicate not stored
            ]
        ]
    finally:
        await ctx.release()
    assert [(o.created, o.duplicate, o.stored) for o in outcomes] == [
        (True, None, True),
        (False, "exact", False),
        (True, "similar", True),
        (False, "exact", False),
        (False, "similar", False),
    ]
    for outcome in outcomes:
        ctx.count(outcome)
    ctx.inc("hit", 3)
    ctx.inc("hit")
    stats = {k: v for k, v in crawler.stats.get_stats().items() if k.startswith("imgcache/")}
    assert stats == {
        "imgcache/stored": 2,
        "imgcache/duplicate/exact": 2,
        "imgcache/duplicate/similar": 2,
        "imgcache/bytes_saved": outcomes[1].size + outcomes[3].size + outcomes[4].size,
        "imgcache/hit": 4,
    }
    assert undocumented(stats) == []


def small_jpeg() -> bytes:
    return distinct_jpegs(1, size=(200, 150))[0]


# -- in real crawls --------------------------------------------------------------------------


class CountingSqlStore(SqlStore):
    """The SQL store, counting in its crawl process how often it was opened and closed."""

    opened = 0
    closed = 0

    @classmethod
    def from_config(cls, config: Any, create: bool = True) -> Any:
        store = super().from_config(config, create)
        CountingSqlStore.opened += 1
        return store

    def close(self) -> None:
        CountingSqlStore.closed += 1
        super().close()


class ContextProbe:
    """An extension of the crawl under test: writes to ``CONTEXT_PROBE_FILE`` what the crawl's
    pipeline and middleware shared, and how often the store was opened and closed."""

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler
        self.seen: dict[str, Any] = {}
        # connected before the components' own handlers (extensions are built first)
        crawler.signals.connect(self.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(self.engine_stopped, signal=signals.engine_stopped)

    @classmethod
    def from_crawler(cls, crawler: Any) -> ContextProbe:
        return cls(crawler)

    def _store_open(self) -> bool:
        try:
            _ = ImgCacheContext.of(self.crawler).store
        except StoreError:
            return False
        return True

    def item_scraped(self, item: Any, response: Any, spider: Any) -> None:
        if "contexts" in self.seen:
            return
        engine = self.crawler.engine
        components = [c for c in engine.scraper.itemproc.middlewares if isinstance(c, ImgCachePipeline)]
        components += [c for c in engine.downloader.middleware.middlewares if isinstance(c, ImgCacheMiddleware)]
        ctx = ImgCacheContext.of(self.crawler)
        self.seen["components"] = sorted(type(c).__name__ for c in components)
        self.seen["contexts"] = len({id(ctx)} | {id(c.ctx) for c in components})
        self.seen["configs"] = len({id(ctx.config)} | {id(c.config) for c in components})
        self.seen["opened_while_crawling"] = CountingSqlStore.opened

    def spider_closed(self, spider: Any, reason: str) -> None:
        # the pipeline has closed by now; the middleware's own handler has not run yet
        self.seen["open_after_the_pipeline_closed"] = self._store_open()

    def engine_stopped(self) -> None:
        self.seen["open_at_the_end"] = self._store_open()
        self.seen["opened"], self.seen["closed"] = CountingSqlStore.opened, CountingSqlStore.closed
        Path(self.crawler.settings["CONTEXT_PROBE_FILE"]).write_text(json.dumps(self.seen))


EXTENSIONS = {
    "tests.crawl_spiders.ReactorAudit": 0,
    "tests.test_context.ContextProbe": 10,
    "example_project.imgdemo.extensions.StatsToFile": 1000,
}


def test_a_crawls_pipeline_and_middleware_use_one_store_and_write_only_documented_stats(site, tmp_path):
    a, b = distinct_jpegs(2, size=(200, 150))
    near = encode(Image.open(io.BytesIO(a)).resize((150, 112)))
    site.image("/i/a.jpg", a)
    site.image("/i/a-again.jpg", a)
    site.image("/i/near.jpg", near)
    site.image("/i/b.jpg", b)
    site.image("/i/bad.jpg", a[: len(a) // 2])
    site.page("/p", ["/i/a.jpg", "/i/b.jpg"], ["/q"])
    site.page("/q", ["/i/a-again.jpg", "/i/near.jpg", "/i/bad.jpg"])
    probe = tmp_path / "probe.json"
    settings = cache_settings(
        tmp_path,
        EXTENSIONS=EXTENSIONS,
        CONTEXT_PROBE_FILE=str(probe),
        IMGCACHE_STORE_SCHEMES={"sqlite": "tests.test_context.CountingSqlStore"},
    )
    result = crawl(make_project(tmp_path / "proj", settings), "pages", start=site.url("/p"))
    assert result.returncode == 0 and result.stats["finish_reason"] == "finished", result.log[-3000:]
    seen = json.loads(probe.read_text())
    assert seen["components"] == ["ImgCacheMiddleware", "ImgCachePipeline"]
    assert seen["contexts"] == 1 and seen["configs"] == 1
    assert seen["opened_while_crawling"] == 1 and (seen["opened"], seen["closed"]) == (1, 1)
    assert seen["open_after_the_pipeline_closed"] is True and seen["open_at_the_end"] is False
    assert len([line for line in result.log.splitlines() if USING in line]) == 1
    # what count() and inc() wrote, under the documented keys only
    assert result.stat("stored") == 3  # a, b, and the near-duplicate (annotated)
    assert result.stat("duplicate/exact") == 1 and result.stat("duplicate/similar") == 1
    assert result.stat("bytes_saved") == len(a)
    assert result.stat("invalid/truncated") == 1
    assert undocumented(result.stats) == []


def stopped_before_any_request(result: Crawl, site: Any, message: str) -> None:
    errors = [line for line in result.log.splitlines() if " ERROR: " in line or " CRITICAL: " in line]
    assert len(errors) == 1 and message in errors[0], result.log[-4000:]
    assert "imgcache: the image cache cannot be used, so the crawl stops: " in errors[0]
    for noise in ("Traceback", "Task exception", "Error caught on signal handler"):
        assert noise not in result.log, noise
    assert sum(site.hits.values()) == 0 and result.items == []
    assert result.stat("unavailable") == 1 and result.returncode == 0
    assert result.stats["finish_reason"] == UNAVAILABLE


@pytest.mark.parametrize(
    ("components", "setting", "value", "message"),
    [
        pytest.param(
            {"ITEM_PIPELINES": PIPELINE},
            "IMGCACHE_URL",
            None,
            "cannot reach the database at postgresql+psycopg://nobody@127.0.0.1:",
            id="pipeline-alone-unreachable-database",
        ),
        pytest.param(
            {"DOWNLOADER_MIDDLEWARES": MIDDLEWARE},
            "IMGCACHE_ON_SIMILAR",
            "bogus",
            "IMGCACHE_ON_SIMILAR='bogus': one of annotate, skip, drop is expected",
            id="middleware-alone-bad-setting",
        ),
    ],
)
def test_either_component_alone_stops_a_crawl_it_cannot_cache_before_any_request(
    site, tmp_path, components, setting, value, message
):
    site.image("/i/a.jpg", small_jpeg())
    site.page("/p", ["/i/a.jpg"])
    settings = cache_settings(tmp_path, ADDONS={}, **components, **{setting: value or unreachable_url()})
    result = crawl(make_project(tmp_path / "proj", settings), "pages", start=site.url("/p"))
    stopped_before_any_request(result, site, message)


def test_a_mistyped_setting_at_any_priority_is_one_warning_naming_the_closest_known_one(site, tmp_path):
    """``IMGCACHE_ONSIMILAR = "skip"`` was ignored without a word, and near-duplicates stored."""
    site.image("/i/a.jpg", small_jpeg())
    site.page("/p", ["/i/a.jpg"])
    settings = cache_settings(
        tmp_path,
        IMGCACHE_ONSIMILAR="skip",  # the project's settings
        IMGCACHE_NOTHING_LIKE_IT=1,
        IMGCACHE_SECRETS_KEY="k" * 32,  # the service's own names, in a settings file it shares
        IMGCACHE_SERVER_DB="sqlite:///x.sqlite3",
        IMGCACHE_VISUALSNOOP_SKEW=60,
    )
    project = make_project(tmp_path / "proj", settings)
    # the spider's custom_settings has IMGCACHE_BUKET; the command line another
    result = crawl(project, "mistyped", "-s", "IMGCACHE_SIMILARITY_TRESHOLD=4", start=site.url("/p"))
    assert result.returncode == 0 and result.stat("stored") == 1, result.log[-3000:]
    warned = [line for line in result.log.splitlines() if "is not a scrapy-imgcache setting" in line]
    assert all("WARNING" in line for line in warned), warned
    expected = {
        "IMGCACHE_ONSIMILAR": "did you mean IMGCACHE_ON_SIMILAR?",
        "IMGCACHE_BUKET": "did you mean IMGCACHE_BUCKET?",
        "IMGCACHE_SIMILARITY_TRESHOLD": "did you mean IMGCACHE_SIMILARITY_THRESHOLD?",
        "IMGCACHE_NOTHING_LIKE_IT": "docs/reference/settings.md",
    }
    assert len(warned) == len(expected), warned  # one each, and none for the service's names
    for name, hint in expected.items():
        (line,) = [line for line in warned if f" {name} " in line]
        assert hint in line, line


def test_calls_made_in_one_turn_share_thread_hops_and_each_gets_its_own_answer():
    """Gathered: the pipeline's cache lookups of one item go to a thread together (at most
    MAX_BATCH a hop); one call's exception reaches that caller alone."""
    import asyncio
    import threading

    from scrapy_imgcache.engine.threads import Gathered

    threads: dict[int, int] = {}

    def lookup(n: int) -> int:
        threads[n] = threading.get_ident()
        if n == 7:
            raise StoreError("the database went away")
        return n * n

    async def main() -> list[Any]:
        gathered = Gathered(lookup)
        return await asyncio.gather(*(gathered(n) for n in range(40)), return_exceptions=True)

    answers = asyncio.run(main())
    assert [a for n, a in enumerate(answers) if n != 7] == [n * n for n in range(40) if n != 7]
    assert isinstance(answers[7], StoreError)
    assert len(threads) == 40 and threading.get_ident() not in threads.values()
    batch = Gathered.MAX_BATCH
    for first in range(0, 40, batch):  # 3 hops: calls 0-15, 16-31, 32-39, each in one thread
        assert len({threads[n] for n in range(first, min(first + batch, 40))}) == 1, first
