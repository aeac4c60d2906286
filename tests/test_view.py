"""IMAGES_STORE as a view of the cache, on local folders, S3 and FTP, configured by Scrapy's own
settings (AWS_*, FTP_*), in real crawls; and storage that fails at start or mid-crawl."""

from __future__ import annotations

import time

import pytest

from tests.helpers import (
    FtpServer,
    S3Bucket,
    Site,
    cache_settings,
    crawl,
    distinct_jpegs,
    finish_crawl,
    make_project,
    start_crawl,
)

pytestmark = pytest.mark.scrapy_api


def two_pages(site: Site, delay: float = 0.0) -> list[bytes]:
    photos = distinct_jpegs(3)
    for n, photo in enumerate(photos):
        site.image(f"/i/{n}.jpg", photo)
    site.page("/p1", ["/i/0.jpg", "/i/1.jpg"], ["/p2"])
    site.page("/p2", ["/i/2.jpg", "/i/0.jpg"])
    site.routes["/p1"].delay = delay
    return photos


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
