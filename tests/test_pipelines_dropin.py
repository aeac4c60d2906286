"""ImgCachePipeline as a drop-in for ImagesPipeline: the same project, side by side in one run.

The pipeline is the one Scrapy's documentation teaches ("Downloading and processing files and
images"): a subclass overriding ``get_media_requests`` (adding a header), ``file_path`` and
``item_completed`` (collecting ``image_paths``, dropping items without images), with
``IMAGES_STORE``, ``IMAGES_THUMBS``, ``IMAGES_MIN_WIDTH/HEIGHT`` and ``MEDIA_ALLOW_REDIRECTS``.
Only its base class differs between the two crawls (tests/crawl_spiders.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.helpers import Crawl, Site, crawl, distinct_images, encode, make_project

pytestmark = pytest.mark.scrapy_api

THUMBS = {"small": (50, 50)}
IMAGE_PATHS = {
    "/img/front/a.jpg",
    "/img/side/b.png",
    "/img/top/tiny.jpg",
    "/img/moved/r.jpg",
    "/img/target/r.jpg",
    "/img/gone/x.jpg",
    "/img/front/shared.jpg",
}


def transparent_png() -> bytes:
    """An RGBA photo whose left half is fully transparent (ImagesPipeline thumbnails it on white)."""
    img = distinct_images(2)[1].convert("RGBA")
    img.paste((0, 0, 0, 0), (0, 0, img.width // 2, img.height))
    return encode(img, "PNG")


def build_site(site: Site) -> None:
    a, _b, c = distinct_images(3)
    site.image("/img/front/a.jpg", encode(a))
    site.image("/img/side/b.png", transparent_png(), "image/png")
    site.image("/img/top/tiny.jpg", encode(c.resize((40, 30))))
    site.image("/img/target/r.jpg", encode(c))
    site.redirect("/img/moved/r.jpg", "/img/target/r.jpg")
    site.image("/img/front/shared.jpg", encode(distinct_images(4)[3]))
    site.page("/p1", ["/img/front/a.jpg", "/img/side/b.png", "/img/top/tiny.jpg", "/img/moved/r.jpg",
                      "/img/gone/x.jpg"], ["/p2"])  # fmt: skip
    site.page("/p2", ["/img/front/shared.jpg", "/img/front/a.jpg"], ["/p3"])
    site.page("/p3", ["/img/top/tiny.jpg"])  # no usable image: the pipeline drops the item


def settings(store: Path, redirects: bool, **extra: Any) -> dict[str, Any]:
    return {
        "IMAGES_STORE": str(store),
        "IMAGES_THUMBS": THUMBS,
        "IMAGES_MIN_WIDTH": 100,
        "IMAGES_MIN_HEIGHT": 80,
        "MEDIA_ALLOW_REDIRECTS": redirects,
        **extra,
    }


def by_page(result: Crawl) -> dict[str, dict[str, Any]]:
    return {item["page"].rsplit("/", 1)[-1]: item for item in result.items}


def image_requests(site: Site) -> dict[str, list[dict[str, str]]]:
    return {path: list(reqs) for path, reqs in site.requests.items() if path in IMAGE_PATHS}


def file_stats(result: Crawl) -> dict[str, int]:
    return {k: v for k, v in result.stats.items() if k == "file_count" or k.startswith("file_status_count/")}


@pytest.mark.parametrize(  # each MEDIA_ALLOW_REDIRECTS once; the database is no part of either
    ("backend", "redirects"),
    [("sqlite", True), pytest.param("postgresql", False, marks=pytest.mark.postgres)],
    ids=["sqlite-redirects", "postgresql-no-redirects"],
)
def test_the_documented_pipeline_switched_by_its_base_class(site, tmp_path, request, redirects, backend):
    build_site(site)
    db = f"sqlite:///{tmp_path / 'cache.sqlite3'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    stock_store, cached_store, fresh_store = tmp_path / "stock", tmp_path / "cached", tmp_path / "fresh"
    stock = make_project(
        tmp_path / "stock-proj",
        settings(stock_store, redirects, ADDONS={}, ITEM_PIPELINES={"tests.crawl_spiders.StockDocsPipeline": 1}),
    )
    cached_settings = settings(
        cached_store,
        redirects,
        IMGCACHE_URL=db,
        IMGCACHE_FILES_STORE=str(tmp_path / "cache-files"),
        # the add-on stays on, and leaves the project's own pipeline as the only one
        ITEM_PIPELINES={
            "scrapy_imgcache.pipelines.ImgCachePipeline": None,
            "tests.crawl_spiders.CachedDocsPipeline": 1,
        },
    )
    cached = make_project(tmp_path / "cached-proj", cached_settings)

    want = crawl(stock, "pages", start=site.url("/p1"))
    assert want.returncode == 0, want.log[-3000:]
    stock_requests = image_requests(site)
    site.reset_counts()
    got = crawl(cached, "pages", start=site.url("/p1"))
    assert got.returncode == 0, got.log[-3000:]
    assert "CachedDocsPipeline" in got.log and "'scrapy_imgcache.pipelines.ImgCachePipeline'" not in got.log

    # the same items, image paths and result URLs; /p3 dropped by item_completed in both
    assert set(by_page(got)) == set(by_page(want)) == {"p1", "p2"}
    for page, item in by_page(want).items():
        mine = by_page(got)[page]
        assert mine["image_paths"] == item["image_paths"], page
        assert mine["image_urls_done"] == item["image_urls_done"], page
    moved = site.url("/img/moved/r.jpg")
    assert (moved in by_page(got)["p1"]["image_urls_done"]) is redirects  # keyed by the URL asked for
    # files at those paths, thumbnails at the same thumb paths
    for item in got.items:
        for path in item["image_paths"]:
            assert (stock_store / path).is_file() and (cached_store / path).is_file(), path
            assert (cached_store / path).stat().st_nlink == 1, path  # the user's own file, not a link to a blob
    stock_thumbs = sorted(p.relative_to(stock_store) for p in (stock_store / "thumbs").rglob("*.jpg"))
    assert (
        stock_thumbs
        and sorted(p.relative_to(cached_store) for p in (cached_store / "thumbs").rglob("*.jpg")) == stock_thumbs
    )
    # the header on every image request, and Scrapy's own file stats
    assert image_requests(site).keys() == stock_requests.keys()
    for path, reqs in image_requests(site).items():
        assert all(r.get("X-Docs-Pipeline") == "yes" for r in reqs), path
    assert file_stats(got) == file_stats(want) and file_stats(got)["file_count"] >= 4
    # the subclass's thumb_path (the paths above), convert_image and media_failed are called as often
    for hook in ("thumbnails_converted", "media_failed"):
        assert got.stats.get(f"docs/{hook}", 0) == want.stats.get(f"docs/{hook}", 0) > 0, hook
    assert all(p.parts[2].split("-")[0] in ("front", "side", "target", "moved") for p in stock_thumbs), stock_thumbs
    # the original bytes are kept: a PNG stays a PNG under its .jpg name
    png_path = by_page(got)["p1"]["image_paths"][1]
    assert (cached_store / png_path).read_bytes() == site.routes["/img/side/b.png"].body
    assert Image.open(stock_store / png_path).format == "JPEG"

    # a second crawl into a fresh IMAGES_STORE: no image bytes fetched, every path filled
    site.reset_counts()
    fresh = make_project(tmp_path / "fresh-proj", {**cached_settings, "IMAGES_STORE": str(fresh_store)})
    again = crawl(fresh, "pages", start=site.url("/p1"))
    assert again.returncode == 0, again.log[-3000:]
    assert site.image_bytes == 0
    for page, item in by_page(got).items():
        assert by_page(again)[page]["image_paths"] == item["image_paths"]
        for path in item["image_paths"]:
            assert (fresh_store / path).read_bytes() == (cached_store / path).read_bytes()
    assert sorted(p.relative_to(fresh_store) for p in (fresh_store / "thumbs").rglob("*.jpg")) == stock_thumbs
    # the tiny image too: answered from the cache, without a request, and refused there by IMAGES_MIN_*
    assert again.stats.get("file_status_count/uptodate", 0) == (5 if redirects else 4)
    assert "file_status_count/downloaded" not in again.stats and "file_status_count/cached" not in again.stats
    assert site.hits["/img/top/tiny.jpg"] == 0


def test_transparent_images_are_thumbnailed_on_white_as_imagespipeline_does(site, tmp_path):
    build_site(site)
    project = make_project(
        tmp_path / "proj",
        settings(tmp_path / "images", False, IMGCACHE_URL=f"sqlite:///{tmp_path / 'c.sqlite3'}"),
    )
    result = crawl(project, "pages", start=site.url("/p1"))
    assert result.returncode == 0, result.log[-3000:]
    (png,) = [i for i in result.images if i["url"].endswith("b.png")]
    thumb = Image.open(tmp_path / "images" / png["thumbs"]["small"])
    assert thumb.format == "JPEG" and thumb.getpixel((2, thumb.height // 2)) == (255, 255, 255)


def imgcache_lines(result: Crawl) -> list[str]:
    return [line for line in result.log.splitlines() if "[scrapy_imgcache" in line]


@pytest.mark.parametrize("addon", [True, False], ids=["addon", "no-addon"])
def test_disabled_the_subclass_runs_as_a_plain_imagespipeline(site, tmp_path, addon):
    """IMGCACHE_ENABLED = False removed the project's own pipeline: its item_completed never ran."""
    site.image("/img/front/a.jpg", encode(distinct_images(1)[0]))
    site.image("/img/side/b.png", transparent_png(), "image/png")
    site.page("/p1", ["/img/front/a.jpg", "/img/side/b.png"])
    store = tmp_path / "images"
    extra = {} if addon else {"ADDONS": {}}
    project = make_project(
        tmp_path / "proj",
        {
            **extra,
            "IMGCACHE_ENABLED": False,
            "IMGCACHE_URL": f"sqlite:///{tmp_path / 'cache.sqlite3'}",
            "IMAGES_STORE": str(store),
            "ITEM_PIPELINES": {"tests.crawl_spiders.CachedDocsPipeline": 1},
        },
    )
    result = crawl(project, "pages", start=site.url("/p1"))
    assert result.returncode == 0, result.log[-3000:]
    (item,) = result.items
    assert len(item["image_paths"]) == 2  # the subclass's own item_completed ran
    for path in item["image_paths"]:  # written by ImagesPipeline: re-encoded as JPEG
        assert Image.open(store / path).format == "JPEG", path
    assert file_stats(result)["file_status_count/downloaded"] == 2
    assert not (tmp_path / "cache.sqlite3").exists() and not any(k.startswith("imgcache/") for k in result.stats)
    (line,) = imgcache_lines(result)
    assert " INFO: " in line and "IMGCACHE_ENABLED is False" in line and "DocsPipeline" in line
    assert " WARNING: " not in result.log and " ERROR: " not in result.log


def test_disabled_without_images_store_the_subclass_is_off_as_imagespipeline_would_be(site, tmp_path):
    site.image("/img/front/a.jpg", encode(distinct_images(1)[0]))
    site.page("/p1", ["/img/front/a.jpg"])
    project = make_project(
        tmp_path / "proj",
        {"IMGCACHE_ENABLED": False, "ITEM_PIPELINES": {"tests.crawl_spiders.CachedDocsPipeline": 1}},
    )
    result = crawl(project, "pages", start=site.url("/p1"))
    assert result.returncode == 0, result.log[-3000:]
    assert "image_paths" not in result.items[0] and site.image_hits == 0
    (line,) = imgcache_lines(result)
    assert " INFO: " in line and "IMAGES_STORE is not set" in line and "DocsPipeline" in line


@pytest.mark.parametrize("middleware", [False, True], ids=["base-class-only", "with-middleware"])
def test_the_base_class_switch_alone_revalidates_and_refuses_small_images_from_the_cache(site, tmp_path, middleware):
    """With only the base class switched (no add-on, so no middleware), every stale image was
    downloaded again instead of revalidated (65 full downloads instead of 63 304s), and an
    image IMAGES_MIN_* refuses was downloaded again every crawl. With the middleware too, the
    same: each image asked once, a 304 handled once."""
    *photos, small = distinct_images(7)
    paths = [f"/img/front/p{n}.jpg" for n in range(len(photos))]
    for path, img in zip(paths, photos, strict=True):
        site.image(path, encode(img))
    site.image("/img/top/tiny.jpg", encode(small.resize((40, 30))))
    site.page("/p1", [*paths[:3], "/img/top/tiny.jpg"], ["/p2"])
    site.page("/p2", paths[3:])
    images = [*paths, "/img/top/tiny.jpg"]
    own = {
        "ADDONS": {},
        "ITEM_PIPELINES": {"tests.crawl_spiders.CachedDocsPipeline": 1},
        "DOWNLOADER_MIDDLEWARES": {"scrapy_imgcache.middleware.ImgCacheMiddleware": 585} if middleware else {},
        "IMGCACHE_URL": f"sqlite:///{tmp_path / 'cache.sqlite3'}",
        "IMGCACHE_FILES_STORE": str(tmp_path / "cache-files"),
        "IMAGES_STORE": str(tmp_path / "images"),
        "IMAGES_MIN_WIDTH": 100,
        "IMAGES_MIN_HEIGHT": 80,
        "IMGCACHE_EXPIRES": 0,
    }
    project = make_project(tmp_path / "proj", own)
    first = crawl(project, "pages", start=site.url("/p1"))
    assert first.returncode == 0, first.log[-3000:]
    assert first.stat("stored") == 7 and first.stat("invalid/too_small") == 1 and first.stat("miss") == 7
    site.reset_counts()

    second = crawl(project, "pages", start=site.url("/p1"))
    assert second.returncode == 0, second.log[-3000:]
    assert {path: site.not_modified[path] for path in images} == dict.fromkeys(images, 1)  # counted at the server
    assert site.image_bytes == 0 and all(site.hits[path] == 1 for path in images)
    assert all(r.get("If-None-Match") for path in images for r in site.requests[path])
    assert second.stat("revalidated") == 7 and second.stat("invalid/too_small") == 1
    assert second.stats["file_status_count/cached"] == 7 and "file_status_count/downloaded" not in second.stats
    assert sorted(p for item in second.items for p in item["image_paths"]) == sorted(
        p for item in first.items for p in item["image_paths"]
    )
    without = [line for line in second.log.splitlines() if "without ImgCacheMiddleware" in line]
    assert len(without) == (0 if middleware else 1) and all(" INFO: " in line for line in without)

    site.reset_counts()  # within the expiry: answered, and the small image refused, without a request
    fresh = crawl(make_project(tmp_path / "fresh", {**own, "IMGCACHE_EXPIRES": 3600}), "pages", start=site.url("/p1"))
    assert fresh.returncode == 0, fresh.log[-3000:]
    assert site.image_hits == 0 and fresh.stat("hit") == 7 and fresh.stat("invalid/too_small") == 1
