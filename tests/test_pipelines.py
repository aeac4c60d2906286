"""ImgCachePipeline in real ``scrapy crawl`` processes against a real HTTP server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import shutil

import pytest
from PIL import Image, ImageOps

from scrapy_imgcache.hashing import Inspector, hamming
from tests.crawl_spiders import ITEM_TYPES
from tests.helpers import (
    PLAIN_REACTOR,
    blob_files,
    cache_settings,
    crawl,
    damaged_variants,
    distinct_images,
    distinct_jpegs,
    encode,
    every_mode_and_format,
    finish_crawl,
    make_project,
    near_duplicates,
    open_cache,
    png_bomb,
    start_crawl,
    start_up_error,
)

# the tests marked scrapy_api run on the oldest supported Scrapy too: those whose path through
# Scrapy's API differs between versions (the rest take the same path once the crawl runs)


@pytest.mark.scrapy_api
def test_first_crawl_dedupes_and_second_crawl_downloads_no_image_bytes(site, tmp_path):
    photos = distinct_jpegs(3)
    png = encode(distinct_images(4)[3], "PNG")
    site.image("/i/a.jpg", photos[0])
    site.image("/i/a-again.jpg", photos[0])  # the same bytes at another URL
    site.image("/i/b.jpg", photos[1])
    site.image("/i/c.png", png, "image/png")
    site.page("/p1", ["/i/a.jpg", "/i/b.jpg"], ["/p2"])
    site.page("/p2", ["/i/a-again.jpg", "/i/c.png", "/i/b.jpg"])
    project = make_project(tmp_path / "proj", cache_settings(tmp_path))

    first = crawl(project, "pages", start=site.url("/p1"))
    assert first.returncode == 0, first.log[-3000:]
    by_url = {img["url"]: img for img in first.images}
    assert set(by_url) == {site.url(p) for p in ("/i/a.jpg", "/i/a-again.jpg", "/i/b.jpg", "/i/c.png")}
    a, a2 = by_url[site.url("/i/a.jpg")], by_url[site.url("/i/a-again.jpg")]
    assert a["content_hash"] == a2["content_hash"] == hashlib.blake2b(photos[0], digest_size=32).hexdigest()
    assert {a["duplicate"], a2["duplicate"]} == {None, "exact"}
    assert a["checksum"] == hashlib.md5(photos[0]).hexdigest()
    assert a["status"] == "downloaded" and a["content_type"] == "image/jpeg"
    assert (a["width"], a["height"]) == (320, 240)
    assert a["perceptual_hash"] == Inspector().inspect(photos[0]).perceptual_hash
    c = by_url[site.url("/i/c.png")]
    assert c["content_type"] == "image/png" and c["path"].endswith(".png")
    # stored once each, in the original format, byte for byte
    assert (tmp_path / "files" / c["path"]).read_bytes() == png
    assert first.stat("stored") == 3 and first.stat("duplicate/exact") == 1
    assert first.stat("bytes_saved") == len(photos[0])
    assert site.image_bytes == len(photos[0]) * 2 + len(photos[1]) + len(png)  # b.jpg fetched once per crawl
    store = open_cache(tmp_path)
    assert [u.client_name for u in store.urls(a["content_hash"])] == ["pages", "pages"]
    assert len(list(store.images())) == 3

    site.reset_counts()
    second = crawl(project, "pages", start=site.url("/p1"))
    assert second.returncode == 0, second.log[-3000:]
    assert site.image_bytes == 0 and site.image_hits == 0
    assert second.stat("hit") == 4 and second.stat("miss") == 0 and second.stat("stored") == 0
    assert {img["status"] for img in second.images} == {"uptodate"}
    other = crawl(project, "otherpages", start=site.url("/p1"))  # another spider, all from the cache
    assert other.stat("hit") == 4 and site.image_bytes == 0
    assert sorted(u.client_name for u in store.urls(a["content_hash"])) == [
        "otherpages",
        "otherpages",
        "pages",
        "pages",
    ]
    assert {img["url"]: img["content_hash"] for img in second.images} == {
        img["url"]: img["content_hash"] for img in first.images
    }
    # what each URL was to the cache survives a hit: "exact" was once lost on the second crawl
    assert {img["url"]: img["duplicate"] for img in second.images} == {
        img["url"]: img["duplicate"] for img in first.images
    }


@pytest.mark.scrapy_api
def test_every_item_type(site, tmp_path):
    """A dict, a scrapy.Item, a dataclass and an attrs class, one page each, in one crawl."""
    photos = distinct_jpegs(len(ITEM_TYPES))
    for kind, photo in zip(ITEM_TYPES, photos, strict=True):
        site.image(f"/i/{kind}.jpg", photo)
        site.page(f"/p-{kind}", [f"/i/{kind}.jpg"])
    project = make_project(tmp_path / "proj", cache_settings(tmp_path))
    start = ",".join(site.url(f"/p-{kind}") for kind in ITEM_TYPES)
    result = crawl(project, "pages", start=start, item="by-page")
    assert result.returncode == 0, result.log[-3000:]
    got = {item["page"].rsplit("-", 1)[1]: [img["url"] for img in item["images"]] for item in result.items}
    assert got == {kind: [site.url(f"/i/{kind}.jpg")] for kind in ITEM_TYPES}


@pytest.mark.scrapy_api
def test_plain_twisted_reactor(site, tmp_path):
    site.image("/i/x.jpg", distinct_jpegs(1)[0])
    site.image("/i/y.jpg", distinct_jpegs(2)[1])
    site.page("/p", ["/i/x.jpg", "/i/y.jpg"])
    project = make_project(tmp_path / "proj", cache_settings(tmp_path, TWISTED_REACTOR=PLAIN_REACTOR))
    first = crawl(project, "pages", start=site.url("/p"))
    assert first.returncode == 0, first.log[-3000:]
    assert "EPollReactor" in first.log
    assert first.stat("stored") == 2
    second = crawl(project, "pages", start=site.url("/p"))
    assert second.stat("hit") == 2 and len(second.images) == 2


@pytest.mark.parametrize("policy", ["annotate", "skip", "drop"])
def test_near_duplicates_follow_on_similar(site, tmp_path, policy):
    original = distinct_images(1)[0]
    copies = {"resized": near_duplicates(original)["resized"], "mirrored": encode(ImageOps.mirror(original))}
    site.image("/i/original.jpg", encode(original))
    for how, data in copies.items():
        site.image(f"/i/{how}.jpg", data)
    site.image("/i/other.jpg", distinct_jpegs(2)[1])
    site.page("/first", ["/i/original.jpg"])
    site.page("/second", ["/i/resized.jpg", "/i/mirrored.jpg", "/i/other.jpg"])
    project = make_project(tmp_path / "proj", cache_settings(tmp_path, IMGCACHE_ON_SIMILAR=policy))
    assert crawl(project, "pages", start=site.url("/first")).returncode == 0
    result = crawl(project, "pages", start=site.url("/second"))
    assert result.returncode == 0, result.log[-3000:]
    store = open_cache(tmp_path)
    original_hash = hashlib.blake2b(encode(original), digest_size=32).hexdigest()
    stored = {e.content_hash for e in store.images()}
    if policy == "drop":
        assert result.items == []
        assert result.stat("dropped/similar") == 1
        assert "near-duplicate image" in result.log
        assert len(stored) == 2  # the near-duplicates' bytes were not stored
        return
    (item,) = result.items
    original_phash = Inspector().inspect(encode(original)).perceptual_hash
    for how in copies:  # the mirror's pHash is far from the original's: robust search found it
        near = next(img for img in item["images"] if img["url"].endswith(f"/{how}.jpg"))
        assert near["duplicate"] == "similar" and near["duplicate_of"] == original_hash
        assert near["match"] == how
        # the pHashes' distance (issue 19 item 6); the hash that found it: match_distance
        assert near["hamming_distance"] == hamming(Inspector().inspect(copies[how]).perceptual_hash, original_phash)
        assert 0 <= near["match_distance"] <= 8
        # the result describes one file, the one at path (issue 19 item 11)
        kept = (tmp_path / "files" / near["path"]).read_bytes()
        assert (near["checksum"], near["size"]) == (hashlib.md5(kept).hexdigest(), len(kept))
    assert result.stat("duplicate/similar") == 2
    if policy == "annotate":
        assert len(stored) == 4
        assert store.get_meta(near["content_hash"]).similar_to == original_hash
        assert store.get_meta(near["content_hash"]).similar_match == "mirrored"
    else:  # skip: the URLs point at the image we had; their bytes were not stored
        assert len(stored) == 2 and near["content_hash"] == original_hash
        assert result.stat("bytes_saved") == sum(len(data) for data in copies.values())
        assert store.lookup(site.url("/i/resized.jpg")).content_hash == original_hash


@pytest.mark.parametrize("policy", ["skip", "drop"])
def test_skip_and_drop_keep_the_larger_original_whatever_came_first(site, tmp_path, policy):
    """Issue 19 item 11: a small re-encoded copy crawled first was what the cache kept, and the
    original's URL then pointed at it; a result's checksum was that of the bytes downloaded,
    its path, size and hash those of the copy kept."""
    original = distinct_images(1, size=(640, 480))[0]
    small, full, again = encode(original.resize((320, 240)), quality=60), encode(original), encode(original, quality=55)
    for name, data in (("small", small), ("original", full), ("again", again)):
        site.image(f"/i/{name}.jpg", data)
        site.page(f"/{name}", [f"/i/{name}.jpg"])
    project = make_project(tmp_path / "proj", cache_settings(tmp_path, IMGCACHE_ON_SIMILAR=policy))
    blake = {
        name: hashlib.blake2b(data, digest_size=32).hexdigest() for name, data in (("small", small), ("original", full))
    }
    results = {}
    for name in ("small", "original", "again"):  # one crawl each: a fixed order of arrival
        result = crawl(project, "pages", start=site.url(f"/{name}"))
        assert result.returncode == 0, result.log[-3000:]
        if policy == "skip":
            (results[name],) = result.images
    store = open_cache(tmp_path)
    assert {e.content_hash for e in store.images()} == set(blake.values())  # the original kept too
    assert store.lookup(site.url("/i/again.jpg")).content_hash == blake["original"]  # later copies: it
    if policy == "drop":
        return
    assert (results["original"]["content_hash"], results["original"]["duplicate_of"]) == (
        blake["original"],
        blake["small"],
    )
    assert (results["again"]["content_hash"], results["again"]["duplicate_of"]) == (
        blake["original"],
        blake["original"],
    )
    for r in results.values():  # checksum, size and hash: of the file at path
        kept = (tmp_path / "files" / r["path"]).read_bytes()
        assert (r["checksum"], r["size"]) == (hashlib.md5(kept).hexdigest(), len(kept))
        assert r["content_hash"] == hashlib.blake2b(kept, digest_size=32).hexdigest()


def test_bad_images_are_reported_once_and_never_stored(site, tmp_path):
    good = distinct_jpegs(1)[0]
    truncated = good[: len(good) // 2]
    site.image("/i/good.jpg", good)
    site.image("/i/error.jpg", b"gone", status=500)
    site.image("/i/empty.jpg", b"")
    site.image("/i/html.jpg", b"<html>not an image</html>")
    site.image("/i/truncated.jpg", truncated)
    site.image("/i/bomb.png", png_bomb(), "image/png")
    site.image("/i/huge.jpg", encode(Image.new("RGB", (1200, 1200), (10, 20, 30)), quality=100) + b"\0" * 300_000)
    site.image("/i/eps.jpg", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n")
    paths = [
        "/i/good.jpg",
        "/i/error.jpg",
        "/i/empty.jpg",
        "/i/html.jpg",
        "/i/truncated.jpg",
        "/i/bomb.png",
        "/i/huge.jpg",
        "/i/eps.jpg",
        "/i/missing.jpg",
    ]
    site.page("/p", paths)
    project = make_project(tmp_path / "proj", cache_settings(tmp_path, IMGCACHE_MAX_BYTES=200_000))
    result = crawl(project, "pages", start=site.url("/p"))
    assert result.returncode == 0, result.log[-3000:]
    (item,) = result.items
    assert [img["url"] for img in item["images"]] == [site.url("/i/good.jpg")]  # the item keeps its good image
    expected = {
        "http_error": 2,  # 500 and 404
        "empty": 1,
        "not_an_image": 1,
        "truncated": 1,
        "too_many_pixels": 1,
        "too_many_bytes": 1,
        "unsupported_format": 1,
    }
    for reason, count in expected.items():
        assert result.stat(f"invalid/{reason}") == count, reason
    for path in paths[1:]:
        assert result.log.count(site.url(path)) >= 1
        failed_lines = [ln for ln in result.log.splitlines() if "[scrapy_imgcache" in ln and site.url(path) in ln]
        assert len(failed_lines) == 1, path  # logged once, with its URL and reason
    store = open_cache(tmp_path)
    assert [e.url for e in store.images()] == [site.url("/i/good.jpg")]
    assert [p.name for p in blob_files(tmp_path / "files")] == [next(store.images()).path.rsplit("/", 1)[-1]]


@functools.lru_cache(maxsize=1)
def large_photos() -> tuple[bytes, ...]:
    """24-megapixel JPEGs: hashing one takes long enough that doing it on the reactor would show."""
    return tuple(encode(img.resize((6000, 4000)), quality=95) for img in distinct_images(4))


@pytest.mark.parametrize("processes", [0, 2], ids=["threads", "processes"])
@pytest.mark.scrapy_api
def test_no_image_decoding_sql_or_file_write_runs_on_the_reactor(site, tmp_path, processes):
    """Proven by what ran where (tests.crawl_spiders.ReactorAudit), not by how long the reactor
    waited, which depends on how busy the machine is. With worker processes, the crawl process
    decodes nothing at all; in threads, the audit sees the work, off the reactor."""
    photos = distinct_jpegs(3)
    for i, data in enumerate(photos):
        site.image(f"/i/{i}.jpg", data)
    site.page("/p", [f"/i/{i}.jpg" for i in range(len(photos))])
    settings = cache_settings(
        tmp_path, IMGCACHE_HASH_PROCESSES=processes, IMAGES_STORE=str(tmp_path / "view"), IMAGES_THUMBS={"s": (50, 50)}
    )
    project = make_project(tmp_path / "proj", settings)
    for round_ in ("first", "second"):  # downloads stored, then hits placed again
        shutil.rmtree(tmp_path / "view", ignore_errors=True)
        result = crawl(project, "pages", start=site.url("/p"))
        assert result.returncode == 0, result.log[-3000:]
        assert result.stat("stored" if round_ == "first" else "hit") == len(photos)
        on_reactor = {k: v for k, v in result.stats.items() if k.startswith("test/on_reactor/")}
        assert on_reactor == {}, on_reactor
        off = {k.removeprefix("test/off_reactor/"): v for k, v in result.stats.items() if k.startswith("test/off_")}
        if processes:
            assert "inspect" not in off and "decode" not in off and "blob_write" not in off, off
        else:  # the audit does see the work when it runs in this process
            assert off.get("sql", 0) > 0 and off.get("file_write", 0) >= len(photos), off
            if round_ == "first":
                assert off.get("inspect", 0) >= len(photos) and off.get("decode", 0) >= len(photos), off


@pytest.mark.scrapy_api
def test_thumbs_and_minimum_size(site, tmp_path):
    site.image("/i/big.jpg", distinct_jpegs(1)[0])
    site.image("/i/small.jpg", encode(distinct_images(2)[1].resize((40, 30))))
    site.page("/p", ["/i/big.jpg", "/i/small.jpg"])
    settings = cache_settings(tmp_path, IMAGES_THUMBS={"small": (50, 50)}, IMAGES_MIN_WIDTH=100, IMAGES_MIN_HEIGHT=100)
    project = make_project(tmp_path / "proj", settings)
    result = crawl(project, "pages", start=site.url("/p"))
    assert result.returncode == 0, result.log[-3000:]
    (img,) = result.images
    assert img["url"].endswith("big.jpg")
    thumb = Image.open(tmp_path / "files" / img["thumbs"]["small"])
    assert max(thumb.size) == 50 and thumb.format == "JPEG"
    assert result.stat("invalid/too_small") == 1


def test_custom_fields(site, tmp_path):
    site.image("/i/x.jpg", distinct_jpegs(1)[0])
    site.page("/p", ["/i/x.jpg"])
    project = make_project(
        tmp_path / "proj", cache_settings(tmp_path, IMAGES_URLS_FIELD="image_urls", IMAGES_RESULT_FIELD="cached")
    )
    result = crawl(project, "pages", start=site.url("/p"))
    assert result.items[0]["cached"][0]["url"] == site.url("/i/x.jpg")
    assert "images" not in result.items[0] or result.items[0]["images"] == []


def test_disabled_is_one_info_line(site, tmp_path):
    site.image("/i/x.jpg", distinct_jpegs(1)[0])
    site.page("/p", ["/i/x.jpg"])
    project = make_project(tmp_path / "proj", cache_settings(tmp_path, IMGCACHE_ENABLED=False))
    result = crawl(project, "pages", start=site.url("/p"))
    assert result.returncode == 0
    assert result.items[0].get("images") in (None, [])
    assert not any(k.startswith("imgcache/") for k in result.stats)
    assert not (tmp_path / "cache.sqlite3").exists()
    mine = [line for line in result.log.splitlines() if "[scrapy_imgcache" in line]
    assert len(mine) == 1 and " INFO: " in mine[0] and "IMGCACHE_ENABLED is False" in mine[0]
    assert "WARNING" not in result.log


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("IMGCACHE_ON_SIMILAR", "ignore", "IMGCACHE_ON_SIMILAR='ignore': one of annotate, skip, drop is expected"),
        ("IMGCACHE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none", "cannot reach the database at"),
        (
            "IMGCACHE_URL",
            "mysql://root@127.0.0.1:3306/test",
            "pip install 'scrapy-imgcache[mysql]' installs pymysql, which serves mysql+pymysql:// URLs",
        ),
        ("IMGCACHE_URL", "redis://127.0.0.1/0", "no store serves the scheme 'redis'"),
    ],
    ids=["bad-setting", "unreachable", "missing-driver", "unknown-scheme"],
)
@pytest.mark.scrapy_api
def test_start_up_errors_are_one_clear_line(site, tmp_path, setting, value, message):
    site.page("/p", [])
    project = make_project(tmp_path / "proj", cache_settings(tmp_path, **{setting: value}))
    assert message in start_up_error(crawl(project, "pages", start=site.url("/p")), site)


@pytest.mark.scrapy_api
def test_a_hook_that_cannot_be_honoured_is_refused_at_start(site, tmp_path):
    site.page("/p", [])
    settings = cache_settings(tmp_path, ITEM_PIPELINES={"tests.crawl_spiders.OverridesGetImages": 1}, ADDONS={})
    line = start_up_error(crawl(make_project(tmp_path / "proj", settings), "pages", start=site.url("/p")), site)
    assert "OverridesGetImages overrides get_images()" in line


def test_a_normal_run_logs_no_alembic_or_warning_lines(site, tmp_path):
    site.image("/i/x.jpg", distinct_jpegs(1)[0])
    site.page("/p", ["/i/x.jpg"])
    result = crawl(make_project(tmp_path / "proj", cache_settings(tmp_path)), "pages", start=site.url("/p"))
    assert result.returncode == 0 and len(result.images) == 1
    assert "alembic" not in result.log and " WARNING: " not in result.log and " ERROR: " not in result.log


def test_images_expires_applies_when_imgcache_expires_is_not_set(site, tmp_path):
    """IMAGES_EXPIRES was ignored: ImagesPipeline users set it, in days."""
    site.image("/i/x.jpg", distinct_jpegs(1)[0])
    site.page("/p", ["/i/x.jpg"])
    project = make_project(tmp_path / "proj", cache_settings(tmp_path, IMAGES_EXPIRES=0))
    assert crawl(project, "pages", start=site.url("/p")).stat("stored") == 1
    again = crawl(project, "pages", start=site.url("/p"))
    assert again.stat("revalidated") == 1 and again.stat("hit") == 0 and site.not_modified["/i/x.jpg"] == 1
    kept = make_project(tmp_path / "proj2", cache_settings(tmp_path, IMAGES_EXPIRES=0, IMGCACHE_EXPIRES=3600))
    assert crawl(kept, "pages", start=site.url("/p")).stat("hit") == 1  # IMGCACHE_EXPIRES wins


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_two_crawl_processes_share_one_cache(site, tmp_path, backend, request):
    url = f"sqlite:///{tmp_path / 'cache.sqlite3'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    photos = distinct_jpegs(12)
    for i, data in enumerate(photos):
        site.image(f"/shop/{i}.jpg", data)
        site.image(f"/blog/{i}.jpg", data)  # the same photos, elsewhere
    site.page("/shop", [f"/shop/{i}.jpg" for i in range(12)])
    site.page("/blog", [f"/blog/{i}.jpg" for i in range(12)])
    project = make_project(tmp_path / "proj", cache_settings(tmp_path, IMGCACHE_URL=url))
    runs = [
        start_crawl(project, "pages", start=site.url("/shop")),
        start_crawl(project, "otherpages", start=site.url("/blog")),
    ]
    results = [finish_crawl(*run) for run in runs]
    for r in results:
        assert r.returncode == 0, r.log[-3000:]
        assert "Traceback" not in r.log and "locked" not in r.log
        assert len(r.images) == 12
    store = open_cache(tmp_path, url)
    images = list(store.images())
    assert len(images) == 12  # one row per content, whichever process stored it first
    for e in images:
        assert sorted(u.client_name for u in store.urls(e.content_hash)) == ["otherpages", "pages"]
    assert sum(r.stat("stored") for r in results) == 12
    assert sum(r.stat("duplicate/exact") for r in results) == 12


@pytest.mark.scrapy_api
def test_downloads_over_the_byte_limit_are_cut_while_downloading(site, tmp_path):
    """Image requests once had no download_maxsize: a 300 MB stream was read whole before being refused."""
    limit = 2 * 1024 * 1024
    good = distinct_jpegs(1)[0]
    chunk = b"BM" + bytes(64 * 1024 - 2)
    site.image("/i/good.jpg", good)
    site.image("/i/declared.bmp", chunk * 80, "image/bmp")  # 5 MB with its Content-Length
    site.image("/i/stream.bmp", chunk, "image/bmp", stream=300 * 1024 * 1024)  # 300 MB, no length
    bomb = gzip.compress(b"BM" + bytes(30 * 1024 * 1024), 9)  # ~30 KB on the wire, 30 MB inflated
    site.image("/i/bomb.bmp", bomb, "image/bmp", headers={"Content-Encoding": "gzip"})
    site.page("/p", ["/i/good.jpg", "/i/declared.bmp", "/i/stream.bmp", "/i/bomb.bmp"])
    project = make_project(tmp_path / "proj", cache_settings(tmp_path, IMGCACHE_MAX_BYTES=limit))

    result = crawl(project, "pages", start=site.url("/p"))
    assert result.returncode == 0, result.log[-3000:]
    assert [img["url"] for img in result.images] == [site.url("/i/good.jpg")]  # the item keeps its good image
    assert result.stat("invalid/too_many_bytes") == 3
    assert site.image_bytes < 30 * 1024 * 1024  # of the 300 MB stream, little more than the limit was sent
    assert len(list(open_cache(tmp_path).images())) == 1


@pytest.mark.scrapy_api
def test_a_slow_failing_download_outliving_the_result_memory_fails_only_its_image(site, tmp_path):
    """With more results completed than remembered while one download was in flight, its failure
    raised KeyError: the item errored and the items waiting on that URL were never released."""
    photos = distinct_jpegs(5)
    for n, photo in enumerate(photos):
        site.image(f"/i/{n}.jpg", photo)
    site.image("/i/slow.jpg", b"gone", status=404, delay=2.0)
    site.page("/p1", ["/i/slow.jpg", *[f"/i/{n}.jpg" for n in range(5)]], ["/p2"])
    site.page("/p2", ["/i/slow.jpg"])
    settings = cache_settings(
        tmp_path,
        ADDONS={},
        ITEM_PIPELINES={"tests.crawl_spiders.SmallMemoryPipeline": 1},
        DOWNLOADER_MIDDLEWARES={"scrapy_imgcache.middleware.ImgCacheMiddleware": 585},
    )
    project = make_project(tmp_path / "proj", settings)

    result = crawl(project, "pages", start=site.url("/p1"))
    assert result.returncode == 0, result.log[-3000:]
    assert "Traceback" not in result.log and "KeyError" not in result.log
    by_page = {item["page"]: item for item in result.items}
    assert set(by_page) == {site.url("/p1"), site.url("/p2")}  # both items made it out
    assert len(by_page[site.url("/p1")]["images"]) == 5 and by_page[site.url("/p2")]["images"] == []
    assert site.hits["/i/slow.jpg"] == 1  # the second item waited for the first download


def test_drop_keeps_an_item_whose_own_photos_are_near_duplicates_of_each_other(site, tmp_path):
    """Under IMGCACHE_ON_SIMILAR = "drop", an item was dropped for two near-identical photos of its own."""
    original = distinct_images(1)[0]
    site.image("/i/front.jpg", encode(original))
    site.image("/i/front-small.jpg", near_duplicates(original)["resized"])
    site.page("/product", ["/i/front.jpg", "/i/front-small.jpg"], ["/copycat"])
    site.image("/i/stolen.jpg", near_duplicates(original)["brightened"])
    site.page("/copycat", ["/i/stolen.jpg"])
    site.routes["/copycat"].delay = 1.5  # the product's photos are cached first
    project = make_project(tmp_path / "proj", cache_settings(tmp_path, IMGCACHE_ON_SIMILAR="drop"))
    result = crawl(project, "pages", start=site.url("/product"))
    assert result.returncode == 0, result.log[-3000:]
    assert [item["page"] for item in result.items] == [site.url("/product")]  # the copycat's item went
    assert len(result.items[0]["images"]) == 2 and result.stat("dropped/similar") == 1


TYPED_REASONS = {
    "empty", "not_an_image", "unsupported_format", "unsupported_mode", "truncated", "too_many_bytes", "too_many_pixels",
}  # fmt: skip


def test_every_pixel_mode_and_format_whole_or_damaged_fails_no_item(site, tmp_path):
    """A LAB TIFF once raised out of the hashing and dropped the whole item with its good images."""
    images = every_mode_and_format(distinct_images(1)[0])
    bodies = (
        list(images.values())
        + damaged_variants(images["LAB", "TIFF"], range(6))
        + damaged_variants(images["RGB", "PNG"], range(6, 12))
    )
    paths = []
    for n, body in enumerate(bodies):
        paths.append(f"/i/{n}.img")
        site.image(paths[-1], body)
    site.page("/p", paths)
    result = crawl(make_project(tmp_path / "proj", cache_settings(tmp_path)), "pages", start=site.url("/p"))
    assert result.returncode == 0, result.log[-3000:]
    assert "Traceback" not in result.log and " ERROR: " not in result.log
    (item,) = result.items
    refused = {k.split("/", 2)[2]: v for k, v in result.stats.items() if k.startswith("imgcache/invalid/")}
    assert set(refused) <= TYPED_REASONS, refused
    assert len(item["images"]) + sum(refused.values()) == len(paths)
    assert len(item["images"]) >= len(images)  # every whole image, LAB included, hashed


@pytest.mark.parametrize("hook", ["get_images", "image_downloaded", "file_downloaded", "STORE_SCHEMES"])
@pytest.mark.scrapy_api
def test_every_hook_that_cannot_be_honoured_is_named_at_start(tmp_path, hook):
    """Overriding one of Scrapy's hooks that the pipeline never calls was silently ignored."""
    from scrapy.utils.test import get_crawler

    from scrapy_imgcache.context import ImgCacheContext
    from scrapy_imgcache.pipelines import ImgCachePipeline

    schemes = {**ImgCachePipeline.STORE_SCHEMES, "mine": object}
    override = schemes if hook == "STORE_SCHEMES" else (lambda self, *a, **kw: None)
    subclass = type("MyImages", (ImgCachePipeline,), {hook: override})
    crawler = get_crawler(settings_dict=cache_settings(tmp_path))
    subclass.from_crawler(crawler)
    problem = ImgCacheContext.of(crawler).failed
    assert problem is not None and problem.startswith(
        f"MyImages overrides {hook}()" if hook != "STORE_SCHEMES" else "MyImages sets STORE_SCHEMES"
    )
