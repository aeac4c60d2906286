"""Spiders, item types and test extensions used by the crawl tests' Scrapy projects."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import attrs
import scrapy
from itemadapter import ItemAdapter
from scrapy import signals
from scrapy.exceptions import DropItem
from scrapy.pipelines.images import ImagesPipeline

from scrapy_imgcache.pipelines import ImgCachePipeline


class ImageItem(scrapy.Item):
    page = scrapy.Field()
    image_urls = scrapy.Field()
    images = scrapy.Field()


@dataclass
class ImageDataclass:
    page: str = ""
    image_urls: list[str] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)


@attrs.define
class ImageAttrs:
    page: str = ""
    image_urls: list = attrs.field(factory=list)
    images: list = attrs.field(factory=list)


ITEM_TYPES = {"dict": dict, "item": ImageItem, "dataclass": ImageDataclass, "attrs": ImageAttrs}


class PagesSpider(scrapy.Spider):
    """Pages → one item per page with its <img> URLs; follows links."""

    name = "pages"

    def __init__(self, start: str = "", item: str = "dict", name: str | None = None, **kw):
        """``item``: the item type of every page, or ``by-page``: the one a page's URL ends with
        (``/p-attrs``)."""
        super().__init__(name=name or self.name, **kw)
        self.start_urls = [u for u in start.split(",") if u]
        self.item_type = None if item == "by-page" else ITEM_TYPES[item]

    def parse(self, response):
        urls = [response.urljoin(src) for src in response.css("img::attr(src)").getall()]
        item_type = self.item_type or ITEM_TYPES[response.url.rsplit("-", 1)[1]]
        yield item_type(page=response.url, image_urls=urls)
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, self.parse)


class OtherPagesSpider(PagesSpider):
    """The same, under another name (a second spider sharing the cache)."""

    name = "otherpages"


class MistypedSettingsSpider(PagesSpider):
    """The same, with a setting of its own, mistyped as a user might."""

    name = "mistyped"
    custom_settings = {"IMGCACHE_BUKET": "shop"}  # noqa: RUF012 - Scrapy's own attribute


class FetchSpider(scrapy.Spider):
    """Requests image URLs directly, without the pipeline (the middleware alone caches)."""

    name = "fetch"

    def __init__(self, urls: str = "", mark: str = "1", **kw):
        super().__init__(**kw)
        self.urls = [u for u in urls.split(",") if u]
        self.mark = mark == "1"

    async def start(self):
        for url in self.urls:
            meta = {"imgcache": True} if self.mark else {}
            yield scrapy.Request(url, meta=meta, dont_filter=True)

    def parse(self, response):
        yield {
            "url": response.url,
            "status": response.status,
            "size": len(response.body),
            "flags": response.flags,
            "cache": response.meta.get("imgcache_status"),
        }


class PageImagesSpider(scrapy.Spider):
    """Pages → a request for each of their <img> (not through the pipeline: the middleware alone
    caches them), and an item for each image response; follows links."""

    name = "pageimages"

    def __init__(self, start: str = "", **kw):
        super().__init__(**kw)
        self.start_urls = [u for u in start.split(",") if u]

    def parse(self, response):
        for src in response.css("img::attr(src)").getall():
            yield response.follow(src, self.image, meta={"imgcache": True})
        for href in response.css("a::attr(href)").getall():
            yield response.follow(href, self.parse)

    def image(self, response):
        yield {
            "url": response.url,
            "size": len(response.body),
            "cache": response.meta.get("imgcache_status"),
            "store_error": response.meta.get("imgcache_store_error"),
        }


class ReactorAudit:
    """Counts, per thread kind, the calls of what must never run on the reactor thread: image
    decoding and conversion, image inspection, SQL statements, blob and file writes. The stats
    ``test/on_reactor/<what>`` and ``test/off_reactor/<what>`` say what ran where (in this
    process: work done in worker processes is in neither)."""

    AUDITED = (
        ("PIL.ImageFile", "ImageFile", "load", "decode"),
        ("PIL.Image", "Image", "convert", "convert"),
        ("scrapy_imgcache.hashing", "Inspector", "inspect", "inspect"),
        ("sqlalchemy.engine.base", "Connection", "execute", "sql"),
        ("scrapy_imgcache.store.blobs", "LocalBlobStore", "put", "blob_write"),
        ("scrapy_imgcache.store.blobs", "LocalBlobStore", "replace", "file_write"),
    )

    def __init__(self, crawler):
        import importlib
        import threading

        self.crawler = crawler
        self.reactor_thread = threading.current_thread()  # extensions are built on the reactor thread
        self.counts = {}
        for module, cls_name, method, what in self.AUDITED:
            cls = getattr(importlib.import_module(module), cls_name)
            setattr(cls, method, self._audited(getattr(cls, method), what))
        crawler.signals.connect(self.closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def _audited(self, func, what):
        import functools
        import threading

        @functools.wraps(func)
        def audited(*args, **kwargs):
            where = "on_reactor" if threading.current_thread() is self.reactor_thread else "off_reactor"
            self.counts[f"{where}/{what}"] = self.counts.get(f"{where}/{what}", 0) + 1
            return func(*args, **kwargs)

        return audited

    def closed(self, spider):
        for key, count in self.counts.items():
            self.crawler.stats.set_value(f"test/{key}", count)


class SqliteFull:
    """While the file ``IMGCACHE_TEST_FULL`` names exists, the crawl's SQLite database cannot grow:
    each connection, as it is taken from its pool, gets ``PRAGMA max_page_count`` set to the
    database's size, so a write that needs a new page fails as on a full disk ("database or disk
    is full"); reads go on. (The pragma belongs to one connection: set from another process it
    would limit nothing, so it is set here, in the crawl's own.)"""

    def __init__(self, crawler):
        from scrapy.exceptions import NotConfigured
        from sqlalchemy import event
        from sqlalchemy.pool import Pool

        self.flag = crawler.settings.get("IMGCACHE_TEST_FULL")
        if not self.flag:
            raise NotConfigured
        event.listen(Pool, "checkout", self.checkout)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def checkout(self, dbapi_conn, record, proxy):
        import os
        import sqlite3

        full = os.path.exists(self.flag)
        if not isinstance(dbapi_conn, sqlite3.Connection) or record.info.get("full", False) == full:
            return
        pages = dbapi_conn.execute("PRAGMA page_count").fetchone()[0] if full else 2**32 - 2
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")
        record.info["full"] = full


class SmallMemoryPipeline(ImgCachePipeline):
    """Remembers two results: a slow download outlives many others' results."""

    results_memory = 2


def docs_pipeline(base: type) -> type:
    """The custom pipeline of Scrapy's "Downloading and processing files and images" page,
    over ``base``: the very same class body on ImagesPipeline and on ImgCachePipeline."""

    class DocsPipeline(base):  # type: ignore[misc,valid-type]
        def get_media_requests(self, item, info):
            for image_url in item["image_urls"]:
                yield scrapy.Request(image_url, headers={"X-Docs-Pipeline": "yes"})

        def file_path(self, request, response=None, info=None, *, item=None):
            image_url_hash = hashlib.shake_256(request.url.encode()).hexdigest(5)
            image_perspective = request.url.split("/")[-2]
            return f"{image_url_hash}_{image_perspective}.jpg"

        def thumb_path(self, request, thumb_id, response=None, info=None, *, item=None):
            return f"thumbs/{thumb_id}/{request.url.split('/')[-2]}-{self.file_path(request)}"

        def convert_image(self, image, size=None, *, response_body=None):
            if size is not None:  # a thumbnail: counted, so both sides can be compared
                self.crawler.stats.inc_value("docs/thumbnails_converted")
            return super().convert_image(image, size, response_body=response_body)

        def media_failed(self, failure, request, info):
            self.crawler.stats.inc_value("docs/media_failed")
            return super().media_failed(failure, request, info)

        def item_completed(self, results, item, info):
            image_paths = [x["path"] for ok, x in results if ok]
            if not image_paths:
                raise DropItem("Item contains no images")
            adapter = ItemAdapter(item)
            adapter["image_paths"] = image_paths
            adapter["image_urls_done"] = [x["url"] for ok, x in results if ok]
            return item

    return DocsPipeline


StockDocsPipeline = docs_pipeline(ImagesPipeline)
CachedDocsPipeline = docs_pipeline(ImgCachePipeline)


class OverridesGetImages(ImgCachePipeline):
    """A hook ImgCachePipeline cannot honour: it never re-encodes the image."""

    def get_images(self, response, request, info, *, item=None):
        return super().get_images(response, request, info, item=item)


class OnePathPipeline(ImgCachePipeline):
    """Every image of an item at one path (``full/<page>.jpg``): two URLs of one item serving
    the same bytes are placed twice at the same file, at once."""

    def file_path(self, request, response=None, info=None, *, item=None):
        return f"full/{item['page'].rsplit('/', 1)[-1]}.jpg"
