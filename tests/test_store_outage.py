"""The store failing mid-crawl, for real: IMGCACHE_ON_STORE_ERROR decides, counts are exact, the
crawl recovers.

A real crawl of a few hundred tiny images in three phases of pages. When the spider asks for
the first page of phase B, the database fails: PostgreSQL and MariaDB behind a TCP proxy that
resets every connection and refuses new ones; SQLite that cannot grow ("database or disk is
full"). The database comes back once every image of phase B has failed the store, and only
then is the first page of phase C served, so phase B is wholly in the outage and phase C
wholly after it, however fast or slow the machine; phase A's images in flight at the start of
the outage may go either way. The database failed with 208 images vanishing from the items
(190 as tracebacks of Scrapy's media pipeline, 18 as ``download_error``) and
``imgcache/store_error`` never counted.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy.engine import make_url

from tests.helpers import (
    Crawl,
    Site,
    TcpProxy,
    crawl_result,
    database_url,
    encode,
    make_project,
    noise_bytes,
    open_cache,
    start_crawl,
)

pytestmark = pytest.mark.scrapy_api

PHASES = "abc"
PAGES = 4  # a phase
PER_PAGE = 20  # images a page: 240 in all
#: a long name makes each URL record need a page of its own in SQLite, so that every write of
#: phase B needs the database to grow (and fails): none fits in a page's free space
LONG = "x" * 2200
TOKEN = re.compile(r"/img/([abc]\d{3})-")
HANG_GUARD = 240


def image_paths(phase: str) -> list[str]:
    return [f"/img/{phase}{n:03d}-{LONG}.png" for n in range(PAGES * PER_PAGE)]


def tiny_png(seed: int) -> bytes:
    return encode(Image.frombytes("L", (24, 24), noise_bytes(24 * 24, seed)), "PNG")


def build_site(site: Site, outage: Callable[[], None], restored: threading.Event) -> None:
    """Pages a0..a3, b0..b3, c0..c3, each linking to the next; ``outage`` runs when b0 is asked
    for, c0 waits for ``restored``."""
    pages = [f"/{phase}{n}" for phase in PHASES for n in range(PAGES)]
    for index, phase in enumerate(PHASES):
        for n, path in enumerate(image_paths(phase)):
            site.image(path, tiny_png(1000 * index + n), "image/png")
    for i, page in enumerate(pages):
        phase, n = page[1], int(page[2:])
        links = pages[i + 1 : i + 2]
        site.page(page, image_paths(phase)[n * PER_PAGE : (n + 1) * PER_PAGE], links)
    site.routes["/b0"].before = outage
    site.routes["/c0"].before = lambda: restored.wait(HANG_GUARD)


class Watched:
    """A running ``scrapy crawl`` whose log is read as it is written."""

    def __init__(self, proc: subprocess.Popen[str], items: Path, stats: Path) -> None:
        self.proc, self.items, self.stats = proc, items, stats
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, done: Callable[[list[str]], bool]) -> None:
        with self.changed:
            ok = self.changed.wait_for(lambda: done(self.lines) or not self.reader.is_alive(), HANG_GUARD)
            assert ok and done(self.lines), "".join(self.lines[-60:])

    def finish(self) -> Crawl:
        self.reader.join(HANG_GUARD)
        return crawl_result(self.proc.wait(HANG_GUARD), self.items, self.stats, "".join(self.lines))


def failure_lines(lines: list[str], policy: str) -> list[str]:
    marker = "Image (store_error): " if policy == "fail" else "the store failed, so "
    return [line for line in lines if marker in line]


def tokens(lines: list[str]) -> list[str]:
    return [m.group(1) for line in lines for m in [TOKEN.search(line)] if m]


Switch = Callable[[], None]


@contextlib.contextmanager
def failing_database(kind: str, workdir: Path) -> Iterator[tuple[str, Switch, Switch, dict[str, Any]]]:
    """(the crawl's IMGCACHE_URL, break it, mend it, extra settings)."""
    with database_url(kind, workdir) as url:
        if kind == "sqlite":
            flag = workdir / "full"
            yield (
                url,
                flag.touch,
                lambda: flag.unlink(missing_ok=True),
                {
                    "IMGCACHE_TEST_FULL": str(flag),
                    "EXTENSIONS": {
                        "tests.crawl_spiders.ReactorAudit": 0,
                        "example_project.imgdemo.extensions.StatsToFile": 1000,
                        "tests.crawl_spiders.SqliteFull": 0,
                    },
                },
            )
            return
        parsed = make_url(url)
        proxy = TcpProxy(parsed.port or (5432 if kind == "postgresql" else 3306)).start()
        try:
            through = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
            yield through, proxy.down, proxy.up, {}
        finally:
            proxy.stop()


@pytest.mark.parametrize(
    ("kind", "spider", "policy"),
    [
        ("sqlite", "pages", "continue"),
        ("sqlite", "pages", "fail"),
        pytest.param("postgresql", "pages", "continue", marks=pytest.mark.postgres),
        pytest.param("mysql", "pages", "fail", marks=pytest.mark.mysql),
        pytest.param("postgresql", "pageimages", "continue", marks=pytest.mark.postgres),
        pytest.param("postgresql", "pageimages", "fail", marks=pytest.mark.postgres),
    ],
    ids=[
        "sqlite-continue",
        "sqlite-fail",
        "postgresql-continue",
        "mysql-fail",
        "postgresql-middleware-only-continue",
        "postgresql-middleware-only-fail",
    ],
)
def test_a_database_failing_mid_crawl_follows_on_store_error(site, tmp_path, kind, spider, policy):
    """The pipeline's images (``pages``), and a spider's own image requests, which the
    middleware alone caches (``pageimages``). Each policy on SQLite; on the servers, each
    database's way of failing and coming back once (the policies do not depend on it)."""
    restored = threading.Event()
    with failing_database(kind, tmp_path) as (url, fail, mend, extra):
        build_site(site, fail, restored)
        settings = {
            "IMGCACHE_URL": url,
            "IMGCACHE_FILES_STORE": str(tmp_path / "files"),
            "IMGCACHE_ON_STORE_ERROR": policy,
            "IMGCACHE_HASH_PROCESSES": 0,
            "IMAGES_STORE": str(tmp_path / "images"),
            "URLLENGTH_LIMIT": 0,  # the spider's own requests for the long image URLs
            **extra,
        }
        watched = Watched(*start_crawl(make_project(tmp_path / "proj", settings), spider, start=site.url("/a0")))
        phase_b = {path[5:9] for path in image_paths("b")}
        try:  # the outage lasts until every image of phase B has failed the store, then C is served
            watched.wait_for(lambda lines: phase_b <= set(tokens(failure_lines(lines, policy))))
        finally:
            mend()
            restored.set()
        result = watched.finish()
        check(result, site, policy, url, tmp_path, spider)


def check(result: Crawl, site: Site, policy: str, url: str, tmp_path: Path, spider: str) -> None:
    assert result.returncode == 0 and result.stats["finish_reason"] == "finished", result.log[-3000:]
    for noise in ("Traceback", "download_error", "found errors processing", "Error downloading", " CRITICAL: "):
        assert noise not in result.log, noise
    paths = {path[5:9]: path for phase in PHASES for path in image_paths(phase)}
    got = {TOKEN.search(img["url"]).group(1): img for img in (result.images if spider == "pages" else result.items)}
    assert len(got) == len(result.images if spider == "pages" else result.items)  # no image twice
    failed = tokens(failure_lines(result.log.splitlines(), policy))
    assert len(failed) == len(set(failed)) == result.stat("store_error")  # each logged and counted once
    assert {t for t in paths if t[0] == "b"} <= set(failed)  # the outage
    assert not {t for t in failed if t[0] == "c"}  # and the recovery
    if policy == "fail":  # the images the store failed are not in the items; the others are
        assert set(got) == set(paths) - set(failed)
    elif spider == "pages":  # every image is in its item: uncached where the store failed
        assert set(got) == set(paths)
        assert {t for t, img in got.items() if img["cache"] == "error"} == set(failed)
        for t in failed:
            img = got[t]
            assert img["content_hash"] is None and img["status"] == "downloaded"
            assert (tmp_path / "images" / img["path"]).read_bytes() == site.routes[paths[t]].body
    else:  # every image reached the spider: uncached where the store failed
        assert set(got) == set(paths)
        assert {t for t, img in got.items() if img["store_error"]} == set(failed)
        assert all(img["size"] == len(site.routes[paths[t]].body) for t, img in got.items())
    store = open_cache(tmp_path, url)
    try:  # every image not reported failed is cached, phase C's included
        for t, img in got.items():
            if t not in failed:
                assert img["cache"] == "miss", t
                assert store.lookup(img["url"]).file_size_bytes == len(site.routes[paths[t]].body), t
    finally:
        store.close()
