"""Two spiders in two ``scrapy crawl`` processes share one cache through one real server process."""

from __future__ import annotations

import pytest

from scrapy_imgcache.hashing import content_hash
from scrapy_imgcache.store.remote import RemoteStore
from tests.helpers import (
    blob_files,
    crawl,
    distinct_jpegs,
    finish_crawl,
    make_project,
    start_crawl,
)

from .live import imgcache_server

pytestmark = pytest.mark.scrapy_api


def test_two_spiders_share_one_cache_through_the_server(site, tmp_path):
    a, b, c, d, e = distinct_jpegs(5)
    site.image("/i/a.jpg", a)
    site.image("/i/b.jpg", b)
    site.image("/i/b-copy.jpg", b)  # b's bytes at another URL
    site.image("/i/c.jpg", c)
    site.image("/i/d.jpg", d)
    site.image("/i/e.jpg", e)
    site.page("/p1", ["/i/a.jpg", "/i/b.jpg"])
    site.page("/p2", ["/i/a.jpg", "/i/b-copy.jpg", "/i/c.jpg"])
    site.page("/p3", ["/i/d.jpg", "/i/e.jpg"])

    with imgcache_server(f"sqlite:///{tmp_path / 'server.sqlite3'}", tmp_path) as server:
        project = make_project(tmp_path / "proj", {"IMGCACHE_URL": server.url, "IMGCACHE_BUCKET": "shared"})

        first = crawl(project, "pages", start=site.url("/p1"))
        assert first.returncode == 0, first.log[-3000:]
        assert first.stat("stored") == 2

        site.reset_counts()
        second = crawl(project, "otherpages", start=site.url("/p2"))
        assert second.returncode == 0, second.log[-3000:]
        # a.jpg came from the cache the other spider filled: never downloaded again
        assert site.hits["/i/a.jpg"] == 0
        assert site.hits["/i/b-copy.jpg"] == 1 and site.hits["/i/c.jpg"] == 1
        assert second.stat("stored") == 1 and second.stat("duplicate/exact") == 1
        by_url = {img["url"]: img for img in second.images}
        assert by_url[site.url("/i/b-copy.jpg")]["content_hash"] == content_hash(b)
        assert by_url[site.url("/i/a.jpg")]["content_hash"] == content_hash(a)  # answered by the server

        # both at once, on new images: each stored exactly once between them
        runs = [start_crawl(project, name, start=site.url("/p3")) for name in ("pages", "otherpages")]
        both = [finish_crawl(*run) for run in runs]
        assert [r.returncode for r in both] == [0, 0], both[0].log[-2000:] + both[1].log[-2000:]
        assert sum(r.stat("stored") for r in both) == 2

        store = RemoteStore(server.url)
        try:
            usage = {u.bucket: u for u in store.usage()}["shared"]
            assert usage.images == 5 and usage.bytes == sum(map(len, (a, b, c, d, e)))
            assert set(usage.clients) == {"pages", "otherpages"}
            assert {u.client_name for u in store.urls(content_hash(b), "shared")} == {"pages", "otherpages"}
            assert store.get_bytes(content_hash(c), "shared") == c
        finally:
            store.close()
    # the server's own files hold each image once
    assert len(blob_files(tmp_path / "files")) == 5


def test_a_crawl_with_the_service_down_goes_on_when_told(site, tmp_path):
    """IMGCACHE_ON_STORE_ERROR=continue: images fail over to plain downloads, the crawl ends promptly."""
    from .live import free_port

    site.image("/i/a.jpg", distinct_jpegs(1)[0])
    site.page("/p", ["/i/a.jpg"])
    dead = f"http://127.0.0.1:{free_port()}"
    project = make_project(
        tmp_path / "proj",
        {"IMGCACHE_URL": dead, "IMGCACHE_ON_STORE_ERROR": "continue", "IMGCACHE_TIMEOUT": 1, "IMGCACHE_RETRIES": 1},
    )
    result = crawl(project, "pages", start=site.url("/p"))
    assert result.returncode == 0, result.log[-3000:]
    assert len(result.items) == 1
    assert f"imgcache service at {dead}" in result.log and "cannot connect" in result.log
