"""The add-on: one line turns the cache on, and a project's own configuration is kept as it is."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from scrapy.utils.test import get_crawler

from scrapy_imgcache.addon import MIDDLEWARE_PRIORITY, PIPELINE_PRIORITY, Addon
from scrapy_imgcache.middleware import ImgCacheMiddleware
from scrapy_imgcache.pipelines import ImgCachePipeline

pytestmark = pytest.mark.scrapy_api

PIPELINE = "scrapy_imgcache.pipelines.ImgCachePipeline"
MIDDLEWARE = "scrapy_imgcache.middleware.ImgCacheMiddleware"


def settings_with(**settings: Any) -> Any:
    crawler = get_crawler(settings_dict={"ADDONS": {Addon: 0}, **settings})
    crawler._apply_settings()
    return crawler.settings


def components(settings: Any, name: str) -> dict[Any, Any]:
    return {
        (k if isinstance(k, str) else f"{k.__module__}.{k.__qualname__}"): v for k, v in settings.getdict(name).items()
    }


def test_one_line_enables_the_pipeline_and_the_middleware():
    settings = settings_with()
    assert components(settings, "ITEM_PIPELINES") == {PIPELINE: PIPELINE_PRIORITY}
    assert components(settings, "DOWNLOADER_MIDDLEWARES") == {MIDDLEWARE: MIDDLEWARE_PRIORITY}


def test_a_project_subclass_is_the_only_pipeline():
    """As scrapy-zyte-api tests its add-on: the user's choice of pipeline stands."""
    own = {PIPELINE: None, "tests.crawl_spiders.CachedDocsPipeline": 1}
    assert components(settings_with(ITEM_PIPELINES=own), "ITEM_PIPELINES") == own
    only_subclass = {"tests.crawl_spiders.CachedDocsPipeline": 300}
    assert components(settings_with(ITEM_PIPELINES=only_subclass), "ITEM_PIPELINES") == only_subclass


def test_components_the_project_placed_or_turned_off_stay_so():
    placed = settings_with(ITEM_PIPELINES={ImgCachePipeline: 500}, DOWNLOADER_MIDDLEWARES={MIDDLEWARE: None})
    assert components(placed, "ITEM_PIPELINES") == {PIPELINE: 500}
    assert components(placed, "DOWNLOADER_MIDDLEWARES") == {MIDDLEWARE: None}
    moved = settings_with(DOWNLOADER_MIDDLEWARES={ImgCacheMiddleware: 50})
    assert components(moved, "DOWNLOADER_MIDDLEWARES") == {MIDDLEWARE: 50}


def test_other_components_are_kept_beside_ours():
    settings = settings_with(ITEM_PIPELINES={"tests.crawl_spiders.StockDocsPipeline": 300})
    assert components(settings, "ITEM_PIPELINES") == {
        "tests.crawl_spiders.StockDocsPipeline": 300,
        PIPELINE: PIPELINE_PRIORITY,
    }


def test_disabled_adds_nothing_and_says_so_once(caplog):
    with caplog.at_level(logging.INFO, logger="scrapy_imgcache"):
        settings = settings_with(IMGCACHE_ENABLED=False)
    assert components(settings, "ITEM_PIPELINES") == {} and components(settings, "DOWNLOADER_MIDDLEWARES") == {}
    assert [r.getMessage() for r in caplog.records if r.name.startswith("scrapy_imgcache")] == [
        "imgcache: IMGCACHE_ENABLED is False; the image cache is off"
    ]


def test_disabled_leaves_the_line_to_a_pipeline_the_project_lists(caplog):
    """The project's own pipeline says what it does without the cache (it runs as ImagesPipeline):
    one line, not two."""
    with caplog.at_level(logging.INFO, logger="scrapy_imgcache"):
        settings = settings_with(IMGCACHE_ENABLED=False, ITEM_PIPELINES={"tests.crawl_spiders.CachedDocsPipeline": 1})
    assert components(settings, "ITEM_PIPELINES") == {"tests.crawl_spiders.CachedDocsPipeline": 1}
    assert [r for r in caplog.records if r.name.startswith("scrapy_imgcache")] == []
    with caplog.at_level(logging.INFO, logger="scrapy_imgcache"):  # listed but turned off: the add-on says it
        settings_with(IMGCACHE_ENABLED=False, ITEM_PIPELINES={"tests.crawl_spiders.CachedDocsPipeline": None})
    assert len([r for r in caplog.records if r.name.startswith("scrapy_imgcache")]) == 1
