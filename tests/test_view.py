"""IMAGES_STORE as a view of the cache, on local folders, S3 and FTP, configured by Scrapy's own
settings (AWS_*, FTP_*), in real crawls; and storage that fails at start or mid-crawl."""

from __future__ import annotations

import os
import stat
import time

import pytest
from PIL import Image

from scrapy_imgcache.hashing import content_hash
from tests.helpers import (
    FtpServer,
    S3Bucket,
    Site,
    blob_files,
    cache_settings,
    crawl,
    distinct_jpegs,
    finish_crawl,
    make_project,
    start_crawl,
)

# the tests marked scrapy_api run on the oldest supported Scrapy too: those whose path through
# Scrapy's API differs between versions (the rest take the same path once the crawl runs)


def two_pages(site: Site, delay: float = 0.0) -> list[bytes]:
    photos = distinct_jpegs(3)
    for n, photo in enumerate(photos):
        site.image(f"/i/{n}.jpg", photo)
    site.page("/p1", ["/i/0.jpg", "/i/1.jpg"], ["/p2"])
    site.page("/p2", ["/i/2.jpg", "/i/0.jpg"])
    site.routes["/p1"].delay = delay
    return photos


@pytest.mark.scrapy_api
def test_cache_files_and_images_store_on_s3_from_scrapys_aws_settings(site, tmp_path, s3_bucket: S3Bucket):
    """S3 once worked only through environment variables: AWS_* settings were not read."""
    photos = two_pages(site)
    settings = {
        **cache_settings(tmp_path),
        **s3_bucket.settings,
        "IMGCACHE_FILES_STORE": f"s3://{s3_bucket.name}/cache",
        "IMAGES_STORE": f"s3://{s3_bucket.name}/images",
        "IMAGES_THUMBS": {"small": (40, 40)},
    }
    first = crawl(make_project(tmp_path / "proj", settings), "pages", start=site.url("/p1"))
    assert first.returncode == 0, first.log[-3000:]
    paths = {img["path"] for img in first.images}
    assert len(paths) == 3 and all(p.startswith("full/") and p.endswith(".jpg") for p in paths)
    assert {f"images/{p}" for p in paths} <= set(s3_bucket.keys("images/"))
    assert len([k for k in s3_bucket.keys("cache/") if k.endswith(".jpg")]) == 3  # the cache's own blobs
    assert len(s3_bucket.keys("images/thumbs/small/")) == 3
    body = s3_bucket.client().get_object(Bucket=s3_bucket.name, Key=f"images/{first.images[0]['path']}")["Body"]
    assert body.read() in photos

    site.reset_counts()
    fresh = {**settings, "IMAGES_STORE": f"s3://{s3_bucket.name}/fresh"}
    again = crawl(make_project(tmp_path / "proj2", fresh), "pages", start=site.url("/p1"))
    assert again.returncode == 0, again.log[-3000:]
    assert site.image_bytes == 0  # filled from the cache: server-side copies, no download
    assert {f"fresh/{p}" for p in paths} <= set(s3_bucket.keys("fresh/"))


@pytest.mark.scrapy_api
def test_images_store_on_ftp_from_scrapys_ftp_settings(site, tmp_path, ftp_server: FtpServer):
    two_pages(site)
    settings = {
        **cache_settings(tmp_path),
        "IMAGES_STORE": ftp_server.url("shop/images"),
        "FTP_USER": "user",
        "FTP_PASSWORD": "secret",
        "IMAGES_THUMBS": {"small": (40, 40)},
    }
    result = crawl(make_project(tmp_path / "proj", settings), "pages", start=site.url("/p1"))
    assert result.returncode == 0, result.log[-3000:]
    for img in result.images:  # folders made on the server as needed
        assert (ftp_server.root / "shop/images" / img["path"]).read_bytes() == site.routes[img["url"][-8:]].body
        assert (ftp_server.root / "shop/images" / img["thumbs"]["small"]).is_file()


@pytest.mark.parametrize("setting", ["IMAGES_STORE", "IMGCACHE_FILES_STORE"])
def test_a_bad_storage_location_stops_the_crawl_at_start_in_one_line(site, tmp_path, s3_bucket: S3Bucket, setting):
    """A credentials or bucket error once lost the items, uncounted, and was not seen at start."""
    two_pages(site)
    settings = {**cache_settings(tmp_path), **s3_bucket.settings, setting: f"s3://{s3_bucket.name}-missing/x"}
    result = crawl(make_project(tmp_path / "proj", settings), "pages", start=site.url("/p1"))
    errors = [line for line in result.log.splitlines() if " ERROR: " in line]
    assert len(errors) == 1 and f"{s3_bucket.name}-missing" in errors[0], result.log[-3000:]
    assert "Traceback" not in result.log
    assert result.stats["finish_reason"] == "imgcache_unavailable"
    assert site.hits["/p1"] == 0 and result.items == []


@pytest.mark.parametrize("policy", ["continue", "fail"])
def test_cache_files_failing_mid_crawl_follow_on_store_error(site, tmp_path, ftp_server: FtpServer, policy):
    two_pages(site, delay=2.0)
    settings = {
        **cache_settings(tmp_path),
        "IMGCACHE_FILES_STORE": ftp_server.url("cache"),
        "FTP_USER": "user",
        "FTP_PASSWORD": "secret",
        "IMGCACHE_ON_STORE_ERROR": policy,
        "IMAGES_STORE": str(tmp_path / "images"),
    }
    crawling = start_crawl(make_project(tmp_path / "proj", settings), "pages", start=site.url("/p1"))
    deadline = time.monotonic() + 60
    while site.hits["/p1"] == 0 and time.monotonic() < deadline:  # the spider is open, the probe passed
        time.sleep(0.05)
    ftp_server.stop()  # the cache's files go away while the first page is still on its way
    result = finish_crawl(*crawling)
    assert result.returncode == 0, result.log[-3000:]
    assert result.stat("store_error") >= 3
    if policy == "continue":  # the crawl goes on uncached: items keep their images, in IMAGES_STORE
        assert len(result.images) == 4 and {img["cache"] for img in result.images} == {"error"}
        assert all((tmp_path / "images" / img["path"]).is_file() for img in result.images)
    else:  # each image fails with the error, logged; the items go on without them
        assert result.images == [] and len(result.items) == 2
        assert "Image (store_error)" in result.log


def _files(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def test_images_store_files_are_the_users_own(site, tmp_path):
    """IMAGES_STORE files were hard links to the cache's blobs, mode 0600: resizing one in place,
    as people post-process stored images, changed the cached image for every later crawl."""
    photos = two_pages(site)
    old_umask = os.umask(0o022)  # the crawl inherits it: files are then expected at 0644
    try:
        settings = {
            **cache_settings(tmp_path),
            "IMAGES_STORE": str(tmp_path / "images"),
            "IMAGES_THUMBS": {"s": (30, 30)},
        }
        first = crawl(make_project(tmp_path / "proj", settings), "pages", start=site.url("/p1"))
        assert first.returncode == 0, first.log[-3000:]
        placed = _files(tmp_path / "images")
        assert len(placed) == 6  # 3 images and 3 thumbnails
        for path in placed:
            st = path.stat()
            assert st.st_nlink == 1, path  # no other name: not the cache's blob
            assert stat.S_IMODE(st.st_mode) == 0o644, (path, oct(st.st_mode))
        assert {stat.S_IMODE(p.stat().st_mode) for p in blob_files(tmp_path / "files")} == {0o644}
        for img in first.images:  # what people do to the files they are given
            path = tmp_path / "images" / img["path"]
            Image.open(path).resize((20, 15)).save(path, "JPEG")
        site.reset_counts()
        again = crawl(make_project(tmp_path / "proj2", {**settings, "IMAGES_STORE": str(tmp_path / "fresh")}), "pages",
                      start=site.url("/p1"))  # fmt: skip
    finally:
        os.umask(old_umask)
    assert again.returncode == 0, again.log[-3000:]
    assert site.image_bytes == 0 and {img["cache"] for img in again.images} == {"hit"}
    for img in again.images:  # every later crawl gets the image, not the edit
        assert (tmp_path / "fresh" / img["path"]).read_bytes() == site.routes[img["url"][-8:]].body
    assert sorted(content_hash(p.read_bytes()) for p in blob_files(tmp_path / "files") if "thumbs" not in p.parts) == (
        sorted(content_hash(p) for p in photos)
    )


def test_a_hit_replaces_an_images_store_link_left_by_an_earlier_version(site, tmp_path):
    photos = two_pages(site)
    settings = {**cache_settings(tmp_path), "IMAGES_STORE": str(tmp_path / "images")}
    project = make_project(tmp_path / "proj", settings)
    first = crawl(project, "pages", start=site.url("/p1"))
    assert first.returncode == 0, first.log[-3000:]
    img = first.images[0]
    placed = tmp_path / "images" / img["path"]
    blob = next(p for p in blob_files(tmp_path / "files") if p.name.startswith(img["content_hash"]))
    placed.unlink()
    os.link(blob, placed)  # what 0.x placed
    again = crawl(project, "pages", start=site.url("/p1"))
    assert again.returncode == 0, again.log[-3000:]
    assert placed.stat().st_nlink == blob.stat().st_nlink == 1
    assert placed.read_bytes() in photos


def test_no_temporary_file_survives_a_placement(site, tmp_path):
    """Re-placing a file that was a hard link to the same blob renamed a temporary link onto it, a
    no-op that left the link: 0, 3, 6 … `.tmp-*` files after each crawl of a site without validators."""
    photos = distinct_jpegs(3)
    for n, photo in enumerate(photos):
        site.image(f"/i/{n}.jpg", photo, validators=False)  # downloaded again on every crawl
    site.image("/i/same.jpg", photos[0], validators=False)  # the bytes of /i/0.jpg, at another URL
    site.page("/p1", ["/i/0.jpg", "/i/1.jpg", "/i/2.jpg"], ["/p2"])
    site.page("/p2", ["/i/0.jpg", "/i/same.jpg"])  # one item, one file_path(), identical bytes twice
    for pipeline, store in (
        ("scrapy_imgcache.pipelines.ImgCachePipeline", "images"),
        ("tests.crawl_spiders.OnePathPipeline", "one"),
    ):
        settings = {
            **cache_settings(tmp_path, IMGCACHE_EXPIRES=0),
            "IMAGES_STORE": str(tmp_path / store),
            "IMAGES_THUMBS": {"s": (30, 30)},
            "ITEM_PIPELINES": {pipeline: 1},
        }
        project = make_project(tmp_path / f"proj-{store}", settings)
        for _ in range(2):  # the second crawl re-places every file: that left the links
            result = crawl(project, "pages", start=site.url("/p1"))
            assert result.returncode == 0, result.log[-3000:]
            assert len(result.images) == 5
            left = [p for p in (tmp_path / store).rglob("*") if p.name.startswith(".tmp-")]
            assert left == [], (pipeline, left)
    assert not list((tmp_path / "files").rglob(".tmp-*"))


@pytest.mark.parametrize("expires", [3600, 0], ids=["fresh-hit", "revalidated"])
def test_a_blob_changed_on_disk_is_never_served_but_fetched_again(site, tmp_path, expires):
    """A hit served whatever the blob held; a row without its bytes was revalidated, got a 304,
    and failed the image. Bytes that do not match their hash are now a miss, fetched again."""
    photos = two_pages(site)
    settings = {**cache_settings(tmp_path, IMGCACHE_EXPIRES=expires), "IMAGES_STORE": str(tmp_path / "images")}
    project = make_project(tmp_path / "proj", settings)
    first = crawl(project, "pages", start=site.url("/p1"))
    assert first.returncode == 0, first.log[-3000:]
    damaged = next(p for p in blob_files(tmp_path / "files") if p.read_bytes() == photos[1])
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one bit-flipped byte: the same size, other bytes
    damaged.write_bytes(bytes(data))
    site.reset_counts()
    again = crawl(project, "pages", start=site.url("/p1"))
    assert again.returncode == 0, again.log[-3000:]
    assert again.stat("damaged") == 1
    assert len(again.images) == 4
    by_url = {img["url"]: img for img in again.images}
    assert by_url[site.url("/i/1.jpg")]["status"] == "downloaded"
    assert site.hits["/i/1.jpg"] == (1 if expires else 2)  # (a 304, then the bytes)
    assert damaged.read_bytes() == photos[1]  # written again
    assert (tmp_path / "images" / by_url[site.url("/i/1.jpg")]["path"]).read_bytes() == photos[1]
    assert "does not hold the bytes of its hash" in again.log
