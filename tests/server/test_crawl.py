"""Two spiders in two ``scrapy crawl`` processes share one cache through one real server process."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from scrapy_imgcache.hashing import content_hash
from scrapy_imgcache.server.process import LiveServer
from scrapy_imgcache.store.remote import RemoteStore
from tests.forked import imgcache_server
from tests.helpers import (
    blob_files,
    crawl,
    distinct_jpegs,
    finish_crawl,
    free_port,
    make_project,
    start_crawl,
    start_up_error,
)


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


READ_KEY = "r" * 24 + "-read"
WRITE_KEY = "w" * 24 + "-write"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[LiveServer]:
    """A service that requires keys: a read key and a write key."""
    workdir = tmp_path_factory.mktemp("keyed")
    db = f"sqlite:///{workdir / 'server.sqlite3'}"
    with imgcache_server(db, workdir, "--read-key", READ_KEY, "--write-key", WRITE_KEY) as server:
        yield server


@pytest.mark.parametrize("policy", ["fail", "continue"])
def test_a_service_that_does_not_answer_stops_the_crawl_at_start(site, tmp_path, policy):
    """The crawl ran 23 s, ended "finished" with empty image lists and 130 WARNINGs, although the
    settings reference said it stops; IMGCACHE_ON_STORE_ERROR is about failures mid-crawl."""
    site.page("/p", ["/i/a.jpg"])
    dead = f"http://127.0.0.1:{free_port()}"
    settings = {"IMGCACHE_URL": dead, "IMGCACHE_ON_STORE_ERROR": policy, "IMGCACHE_TIMEOUT": 1}
    line = start_up_error(crawl(make_project(tmp_path / "proj", settings), "pages", start=site.url("/p")), site)
    assert f"imgcache service at {dead}: GET /health cannot connect" in line


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "refused GET /auth/whoami: 401 a valid X-API-Key header is required (check IMGCACHE_API_KEY)"),
        ("not-a-key-of-this-service", "refused GET /auth/whoami: 401"),
        (READ_KEY, "the key in IMGCACHE_API_KEY may read but not store images, which a crawl does"),
    ],
    ids=["no-key", "wrong-key", "read-only-key"],
)
def test_a_key_the_service_refuses_or_that_cannot_write_stops_the_crawl_at_start(site, tmp_path, keyed, key, message):
    """Images were downloaded, then dropped with an ERROR each (a read-only key), or the crawl
    went on without its cache (no key, a wrong key)."""
    site.image("/i/a.jpg", distinct_jpegs(1)[0])
    site.page("/p", ["/i/a.jpg"])
    settings = {"IMGCACHE_URL": keyed.url, **({"IMGCACHE_API_KEY": key} if key else {})}
    line = start_up_error(crawl(make_project(tmp_path / "proj", settings), "pages", start=site.url("/p")), site)
    assert message in line and site.image_hits == 0
    assert key is None or key not in line  # a key is never logged


def test_a_write_key_crawls(site, tmp_path, keyed):
    site.image("/i/a.jpg", distinct_jpegs(1)[0])
    site.page("/p", ["/i/a.jpg"])
    settings = {"IMGCACHE_URL": keyed.url, "IMGCACHE_API_KEY": WRITE_KEY}
    result = crawl(make_project(tmp_path / "proj", settings), "pages", start=site.url("/p"))
    assert result.returncode == 0 and result.stat("stored") == 1, result.log[-3000:]
    assert " ERROR: " not in result.log and " WARNING: " not in result.log


def requests_by_route(url: str) -> dict[tuple[str, str], float]:
    """The service's own count of the requests it answered, by method and route."""
    found: dict[tuple[str, str], float] = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("imgcache_http_requests_total{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(","))
            key = (labels["method"].strip('"'), labels["route"].strip('"'))
            found[key] = found.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return found


@pytest.mark.scrapy_api  # the remote store's path through the pipeline, on the oldest Scrapy too
def test_a_hit_through_a_remote_cache_is_one_request_and_no_download(site, tmp_path):
    """A second spider's hit once cost two downloads of the image and an upload."""
    photos = distinct_jpegs(3)
    for n, photo in enumerate(photos):
        site.image(f"/i/{n}.jpg", photo)
    site.page("/p", [f"/i/{n}.jpg" for n in range(3)])
    with imgcache_server(f"sqlite:///{tmp_path / 'server.sqlite3'}", tmp_path) as server:
        project = make_project(tmp_path / "proj", {"IMGCACHE_URL": server.url})
        assert crawl(project, "pages", start=site.url("/p")).stat("stored") == 3
        site.reset_counts()
        before = requests_by_route(server.url)
        other = crawl(project, "otherpages", start=site.url("/p"))
        assert other.returncode == 0, other.log[-3000:]
        after = requests_by_route(server.url)
        made = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        for start_up in (("GET", "/metrics"), ("GET", "/health"), ("GET", "/auth/whoami")):  # ours; the check at open
            made.pop(start_up, None)
        assert made == {("GET", "/images/answer"): 3}  # one request an image, nothing else
        assert site.image_bytes == 0 and {img["status"] for img in other.images} == {"uptodate"}
        store = RemoteStore(server.url)
        try:  # the other spider's sightings, recorded by that one request each
            assert {u.client_name for u in store.urls(content_hash(photos[0]))} == {"pages", "otherpages"}
        finally:
            store.close()


def test_thumbnails_with_a_remote_cache_are_made_here_into_images_store(site, tmp_path):
    site.image("/i/a.jpg", distinct_jpegs(1)[0])
    site.page("/p", ["/i/a.jpg"])
    with imgcache_server(f"sqlite:///{tmp_path / 'server.sqlite3'}", tmp_path) as server:
        thumbs = {"IMGCACHE_URL": server.url, "IMAGES_THUMBS": {"small": (40, 40)}}
        refused = crawl(make_project(tmp_path / "refused", thumbs), "pages", start=site.url("/p"))
        assert "IMAGES_THUMBS with a remote cache" in refused.log and "needs IMAGES_STORE" in refused.log
        assert refused.stats["finish_reason"] == "imgcache_unavailable" and site.hits["/p"] == 0
        project = make_project(tmp_path / "proj", {**thumbs, "IMAGES_STORE": str(tmp_path / "images")})
        result = crawl(project, "pages", start=site.url("/p"))
        assert result.returncode == 0, result.log[-3000:]
        (img,) = result.images
        assert (tmp_path / "images" / img["thumbs"]["small"]).is_file()
        assert (tmp_path / "images" / img["path"]).read_bytes() == site.routes["/i/a.jpg"].body
