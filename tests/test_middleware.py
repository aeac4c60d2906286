"""ImgCacheMiddleware alone (no pipeline): fills the cache, serves hits, revalidates."""

from __future__ import annotations

import pytest

from scrapy_imgcache.imaging import ALLOWED_FORMATS
from scrapy_imgcache.middleware import looks_like_image
from tests.helpers import (
    cache_settings,
    crawl,
    distinct_images,
    distinct_jpegs,
    encode,
    make_project,
    open_cache,
)

# the tests marked scrapy_api run on the oldest supported Scrapy too: those whose path through
# Scrapy's API differs between versions (the rest take the same path once the crawl runs)

MIDDLEWARE_ONLY = {
    "ADDONS": {},
    "DOWNLOADER_MIDDLEWARES": {"scrapy_imgcache.middleware.ImgCacheMiddleware": 585},
}


@pytest.fixture
def photos(site):
    data = distinct_jpegs(3)
    for i, body in enumerate(data):
        site.image(f"/img/{i}", body)  # no extension: only the bytes say these are images
    site.page("/page.html", [])
    return data


def urls(site, *paths: str) -> str:
    return ",".join(site.url(p) for p in paths)


def test_fills_the_cache_from_unmarked_image_responses_and_leaves_pages_alone(site, photos, tmp_path):
    project = make_project(tmp_path / "proj", {**cache_settings(tmp_path), **MIDDLEWARE_ONLY})
    result = crawl(project, "fetch", urls=urls(site, "/img/0", "/img/1", "/page.html"), mark="0")
    assert result.returncode == 0, result.log[-3000:]
    store = open_cache(tmp_path)
    assert sorted(e.url for e in store.images()) == [site.url("/img/0"), site.url("/img/1")]
    page = next(i for i in result.items if i["url"].endswith("page.html"))
    assert page["size"] == len(site.routes["/page.html"].body) and page["flags"] == []
    assert result.stat("stored") == 2
    assert result.stat("downloaded_bytes") == site.image_bytes == len(photos[0]) + len(photos[1])


@pytest.mark.scrapy_api
def test_marked_requests_are_answered_from_the_cache(site, photos, tmp_path):
    project = make_project(tmp_path / "proj", {**cache_settings(tmp_path), **MIDDLEWARE_ONLY})
    wanted = urls(site, "/img/0", "/img/1", "/img/2")
    assert crawl(project, "fetch", urls=wanted).stat("stored") == 3
    site.reset_counts()
    second = crawl(project, "fetch", urls=wanted)
    assert second.returncode == 0, second.log[-3000:]
    assert site.image_hits == 0 and site.image_bytes == 0
    assert second.stat("hit") == 3
    assert sorted(i["size"] for i in second.items) == sorted(len(p) for p in photos)
    assert all(i["flags"] == ["imgcache", "hit", "cached"] and i["cache"] == "hit" for i in second.items)


@pytest.mark.scrapy_api
def test_stale_entries_are_revalidated_with_304(site, photos, tmp_path):
    settings = {**cache_settings(tmp_path, IMGCACHE_EXPIRES=0), **MIDDLEWARE_ONLY}
    project = make_project(tmp_path / "proj", settings)
    wanted = urls(site, "/img/0", "/img/1")
    crawl(project, "fetch", urls=wanted)
    before = {e.url: e.lookup_time for e in open_cache(tmp_path).images()}
    site.reset_counts()
    second = crawl(project, "fetch", urls=wanted)
    assert second.returncode == 0, second.log[-3000:]
    assert sum(site.not_modified.values()) == 2 and site.image_bytes == 0
    assert second.stat("revalidated") == 2
    assert all(i["cache"] == "revalidated" and i["status"] == 200 for i in second.items)
    after = {e.url: e.lookup_time for e in open_cache(tmp_path).images()}
    assert all(after[u] > before[u] for u in before)  # the 304 refreshed the entries


def test_a_changed_image_becomes_a_new_version_of_its_url(site, photos, tmp_path):
    settings = {**cache_settings(tmp_path, IMGCACHE_EXPIRES=0), **MIDDLEWARE_ONLY}
    project = make_project(tmp_path / "proj", settings)
    crawl(project, "fetch", urls=urls(site, "/img/0"))
    site.image("/img/0", photos[2], mtime=1_800_000_000.0)  # new bytes, new validators
    second = crawl(project, "fetch", urls=urls(site, "/img/0"))
    assert second.stat("expired") == 1 and second.stat("stored") == 1
    store = open_cache(tmp_path)
    current = store.lookup(site.url("/img/0"))
    assert current.file_size_bytes == len(photos[2])
    assert len(list(store.images())) == 2  # the old version is kept


def test_a_redirect_ending_at_a_cached_image_is_recorded_under_the_url_it_started_from(site, tmp_path):
    """Only a download recorded a redirect's first URL: one answered from the cache (its
    target already cached, by this crawl or an earlier one) left every later crawl paying
    the redirect."""
    site.image("/img/target", encode(distinct_images(1)[0]), "image/jpeg")
    site.redirect("/img/moved", "/img/target")
    project = make_project(tmp_path / "proj", {**cache_settings(tmp_path), **MIDDLEWARE_ONLY})
    first = crawl(project, "fetch", urls=urls(site, "/img/target"))
    assert first.stat("stored") == 1, first.log[-3000:]
    site.reset_counts()
    redirected = crawl(project, "fetch", urls=urls(site, "/img/moved"))
    assert redirected.stat("hit") == 1 and site.hits["/img/moved"] == 1 and site.image_bytes == 0
    site.reset_counts()
    again = crawl(project, "fetch", urls=urls(site, "/img/moved"))
    assert again.stat("hit") == 1 and site.hits["/img/moved"] == 0 and site.image_bytes == 0
    assert again.items[0]["url"] == site.url("/img/moved")


@pytest.mark.parametrize("fmt", sorted(ALLOWED_FORMATS))
def test_every_format_the_cache_accepts_is_recognised_by_its_bytes(fmt):
    """AVIF was accepted by the inspector but never stored by the middleware: its magic was missing."""
    assert looks_like_image(encode(distinct_images(1)[0], fmt))


def test_a_spider_fetching_images_itself_caches_every_format_and_a_redirects_url(site, tmp_path):
    """A redirect to another URL was stored under the final URL only: every later crawl paid the redirect."""
    photo = distinct_images(1)[0]
    paths = []
    for fmt in sorted(ALLOWED_FORMATS):
        paths.append(f"/img/{fmt.lower()}")
        site.image(paths[-1], encode(photo, fmt), f"image/{fmt.lower()}")
    site.redirect("/img/moved", "/img/jpeg")
    project = make_project(tmp_path / "proj", {**cache_settings(tmp_path), **MIDDLEWARE_ONLY})
    first = crawl(project, "fetch", urls=urls(site, *paths, "/img/moved"))
    assert first.returncode == 0, first.log[-3000:]
    assert first.stat("stored") == len(ALLOWED_FORMATS)
    site.reset_counts()
    second = crawl(project, "fetch", urls=urls(site, *paths, "/img/moved"))
    assert second.stat("hit") == len(paths) + 1 and site.hits["/img/moved"] == 0 and site.image_bytes == 0


@pytest.mark.scrapy_api
def test_a_spiders_own_image_download_over_the_limit_is_cut_and_counted(site, tmp_path):
    """With the middleware alone a cut download was never counted as ``too_many_bytes``."""
    chunk = b"BM" + bytes(64 * 1024 - 2)
    site.image("/img/declared.bmp", chunk * 80, "image/bmp")  # 5 MB with its Content-Length
    site.image("/img/stream.bmp", chunk, "image/bmp", stream=300 * 1024 * 1024)  # no length
    site.image("/img/good.jpg", distinct_jpegs(1)[0])
    settings = {**cache_settings(tmp_path, IMGCACHE_MAX_BYTES=2 * 1024 * 1024), **MIDDLEWARE_ONLY}
    result = crawl(make_project(tmp_path / "proj", settings), "fetch", urls=urls(site, *site.routes))
    assert result.returncode == 0, result.log[-3000:]
    assert result.stat("invalid/too_many_bytes") == 2 and result.stat("stored") == 1
    assert [item["url"] for item in result.items] == [site.url("/img/good.jpg")]
    assert site.image_bytes < 30 * 1024 * 1024
