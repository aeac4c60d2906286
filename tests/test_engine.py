"""The engine: the cache's per-image work (CacheService) in worker processes, awaited from the
crawl's event loop; on SQLite, PostgreSQL and MariaDB where a database decides something."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image

from scrapy_imgcache.config import ImgCacheConfig
from scrapy_imgcache.engine.client import ProcessEngine, open_engine, release_engine
from scrapy_imgcache.engine.service import CacheService, Download, Stored
from scrapy_imgcache.errors import NotAnImage
from scrapy_imgcache.hashing import Inspector, content_hash, md5_hex
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import distinct_images, encode, fresh_url, noise_bytes

ORIGINALS = distinct_images(8)
ORIGINAL_JPEG = encode(ORIGINALS[0])


def settings(db_url: str, tmp_path: Any, **more: Any) -> ImgCacheConfig:
    return ImgCacheConfig.from_settings(
        {"IMGCACHE_URL": db_url, "IMGCACHE_FILES_STORE": str(tmp_path / "files"), "IMGCACHE_HASH_PROCESSES": 2, **more}
    )


@pytest.fixture
def engine_of(tmp_path) -> Iterator[Any]:
    """``engine_of(db_url, **settings)``: a started engine of worker processes, closed after."""
    opened: list[Any] = []

    def start(db_url: str, **more: Any) -> ProcessEngine:
        engine = open_engine(settings(db_url, tmp_path, **more), {}, None)  # type: ignore[arg-type]
        opened.append(engine)
        inner = getattr(engine, "engine", engine)
        assert isinstance(inner, ProcessEngine), "the worker processes did not start"
        return inner

    yield start
    for engine in opened:
        release_engine(engine)


def store_all(engine: ProcessEngine, bodies: list[bytes], **download: Any) -> list[Stored]:
    async def all_at_once() -> list[Stored]:
        calls = [engine.call("store_download", Download(fresh_url(), "t", **download), body=b) for b in bodies]
        return list(await asyncio.gather(*calls))

    return asyncio.run(all_at_once())


# -- CacheService in this process ------------------------------------------------------------


@pytest.fixture
def service(tmp_path) -> Iterator[CacheService]:
    config = ImgCacheConfig.from_settings({"IMGCACHE_HASH_PROCESSES": 0})
    store = SqlStore(f"sqlite:///{tmp_path / 'cache.sqlite3'}", str(tmp_path / "files"))
    yield CacheService(store, config)
    store.close()


@pytest.mark.scrapy_api
def test_a_download_keeps_its_validators_and_is_recorded_at_every_url_of_its_redirects(service):
    asked, hop, final = fresh_url("asked"), fresh_url("hop"), fresh_url("final")
    modified = "Wed, 01 Jan 2025 00:00:00 GMT"
    download = Download(final, "spider", '"abc"', modified, also=[asked, hop, asked, final])
    stored = service.store_download(ORIGINAL_JPEG, download)
    chash = content_hash(ORIGINAL_JPEG)
    assert stored.outcome.created and stored.outcome.entry.url == final
    assert stored.checksum == hashlib.md5(ORIGINAL_JPEG).hexdigest()
    records = service.store.urls(chash)
    assert sorted(e.url for e in records) == sorted([asked, hop, final])  # each once
    for entry in records:
        assert (entry.etag, entry.last_modified, entry.client_name) == ('"abc"', modified, "spider")


def test_a_near_duplicate_under_skip_points_every_url_at_the_image_we_have(service):
    service.store_download(ORIGINAL_JPEG, Download(fresh_url(), "spider"))
    w, h = ORIGINALS[0].size
    copy = encode(ORIGINALS[0].resize((w * 3 // 4, h * 3 // 4), Image.Resampling.LANCZOS))
    url, asked = fresh_url("copy"), fresh_url("asked")
    stored = service.store_download(copy, Download(url, "spider", also=[asked], on_similar="skip"))
    assert (stored.outcome.duplicate, stored.outcome.stored) == ("similar", False)
    for u in (url, asked):
        assert service.store.lookup(u).content_hash == content_hash(ORIGINAL_JPEG)


@pytest.mark.parametrize("data", [b"", ORIGINAL_JPEG, noise_bytes(1000)], ids=["empty", "jpeg", "noise"])
def test_the_checksum_is_the_md5_scrapys_images_pipeline_reports(data):
    assert md5_hex(data) == hashlib.md5(data).hexdigest()
    assert len(md5_hex(data)) == 32 and md5_hex(data) != content_hash(data)[:32]


# -- worker processes ------------------------------------------------------------------------


def test_the_work_runs_in_the_worker_processes_not_in_the_crawls(engine_of, sqlite_url, monkeypatch):
    """No decoding in this process: an inspector that refuses everything here changes nothing."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an image was decoded in the crawl process")

    monkeypatch.setattr(Inspector, "inspect", refuse)
    engine = engine_of(sqlite_url)
    bodies = [encode(img) for img in ORIGINALS[:4]]
    stored = store_all(engine, bodies)
    assert [s.outcome.created for s in stored] == [True] * 4
    assert {s.outcome.entry.content_hash for s in stored} == {content_hash(b) for b in bodies}
    assert len({c.worker.pid for c in engine.channels} - {os.getpid()}) == 2


def test_a_refusal_comes_back_typed(engine_of, sqlite_url):
    engine = engine_of(sqlite_url)
    with pytest.raises(NotAnImage):
        store_all(engine, [b"<html>not an image</html>" * 10])


def test_two_near_copies_at_once_in_different_workers_are_stored_once(engine_of, db_url, tmp_path):
    """The decision (near search, then store) is one step across the crawl's workers."""
    engine = engine_of(db_url, IMGCACHE_ON_SIMILAR="skip")
    bodies = []
    for img in ORIGINALS:
        w, h = img.size
        bodies += [encode(img), encode(img.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.LANCZOS))]
    stored = store_all(engine, bodies)  # each pair sent together: least-loaded workers take one each
    for pair in zip(stored[::2], stored[1::2], strict=True):
        # one is new; the other is recorded against it (skipped, or, when the smaller copy was
        # decided first, stored as the larger original: issue 19 item 11), never two new images
        (first,) = [s for s in pair if s.outcome.duplicate is None]
        (other,) = [s for s in pair if s is not first]
        assert first.outcome.created and other.outcome.duplicate == "similar"
        assert other.outcome.duplicate_of == first.outcome.entry.content_hash


def test_a_worker_killed_mid_crawl_loses_no_image_and_is_replaced(engine_of, db_url):
    engine = engine_of(db_url)
    bodies = [encode(img) for img in distinct_images(24)]
    victim = engine.channels[0].worker.pid

    async def kill_while_busy() -> list[Stored]:
        calls = [
            asyncio.ensure_future(engine.call("store_download", Download(fresh_url(), "t"), body=b)) for b in bodies
        ]
        await asyncio.sleep(0)  # the requests are on their way
        os.kill(victim, signal.SIGKILL)
        return list(await asyncio.gather(*calls))

    stored = asyncio.run(kill_while_busy())
    assert {s.outcome.entry.content_hash for s in stored} == {content_hash(b) for b in bodies}
    assert all(s.outcome.created or s.outcome.duplicate == "exact" for s in stored)
    deadline = time.monotonic() + 60  # a replacement starts in ~0.3 s; the bound is for a busy machine
    while len(engine.channels) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = {c.worker.pid for c in engine.channels}
    assert victim not in pids and len(pids) == 2  # replaced


def test_closing_the_engine_is_no_death_and_every_worker_exits_on_its_own(sqlite_url, tmp_path):
    """Hanging up wakes each channel's reader with EOF. That EOF is ours, not a worker's death:
    nothing is replaced, no thread raises (a reader and the closer both closing one socket
    raised EBADF in a crawl's log), and each worker exits by itself (none is killed)."""
    raised: list[Any] = []
    previous = threading.excepthook
    threading.excepthook = raised.append
    try:
        for _ in range(4):
            owned = open_engine(settings(sqlite_url, tmp_path), {}, None)  # type: ignore[arg-type]
            engine = getattr(owned, "engine", owned)
            assert isinstance(engine, ProcessEngine)
            channels = list(engine.channels)
            release_engine(owned)
            readers = [t for t in threading.enumerate() if t.name.startswith("imgcache-engine-reader-")]
            for reader in readers:
                reader.join(60)
            assert [c.worker.process.returncode for c in channels] == [0, 0], "killed, not exited"
            assert engine.channels == []  # none replaced
    finally:
        threading.excepthook = previous
    assert raised == []
