"""``scrapy imgcache-gc``: orphan blobs, rows without bytes, old entries; a dry run touches nothing."""

from __future__ import annotations

import os
import time
from datetime import timedelta

from scrapy_imgcache.config import ImgCacheConfig
from scrapy_imgcache.hashing import content_hash
from scrapy_imgcache.store.base import utcnow
from scrapy_imgcache.store.blobs import OWNER_KEY, blob_key
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import distinct_images, encode, noise_bytes

from .conftest import Filled, Project, assert_one_line_error


def _blob(filled: Filled, data: bytes, age: float):
    path = filled.project.files / blob_key(content_hash(data), ".jpg")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_dry_run_then_real_run(filled: Filled):
    old_orphan = _blob(filled, noise_bytes(5000, seed=1), age=2 * 3600)  # past the 1 h grace
    young_orphan = _blob(filled, noise_bytes(3000, seed=2), age=60)  # a write in flight, maybe
    damaged = filled.others[1]
    with filled.project.opened() as store:
        (filled.project.files / store.get_meta(damaged).path).unlink()

    dry = filled.project.run("imgcache-gc", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert lines[0] == "1 row(s) whose bytes are missing:" and damaged in lines[1]  # reported first
    assert "Would remove 1 row(s) whose bytes are missing." in lines
    assert "Would remove 1 blob(s) no row references, older than 3600 s (4.9 KiB)." in lines
    assert lines[-1] == "Would free 4.9 KiB (5000 bytes)."
    assert old_orphan.exists() and young_orphan.exists()
    with filled.project.opened() as store:
        assert store.get_meta(damaged) is not None

    real = filled.project.run("imgcache-gc")
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines()[0] == "1 row(s) whose bytes are missing:"
    assert "Removed 1 row(s) whose bytes are missing." in real.stdout
    assert "Removed 1 blob(s) no row references" in real.stdout
    assert real.stdout.splitlines()[-1] == "Freed 4.9 KiB (5000 bytes)."
    assert not old_orphan.exists() and young_orphan.exists()
    with filled.project.opened() as store:
        assert store.get_meta(damaged) is None
        left = {e.content_hash for e in store.images("")}
        assert left == {filled.original, *filled.near.values(), filled.twice, filled.others[0]}
        assert all(store.get_bytes(h) is not None for h in left)

    again = filled.project.run("imgcache-gc")
    assert "Removed 0 row(s)" in again.stdout and again.stdout.splitlines()[-1] == "Freed 0 B (0 bytes)."


def test_older_than_removes_images_not_seen_since(filled: Filled):
    stale = encode(distinct_images(6)[5])
    with filled.project.opened() as store:
        entry = store.put(
            stale, url="https://gone.example/x.jpg", client_name="spider_a", lookup_time=utcnow() - timedelta(days=100)
        ).entry
    blob = filled.project.files / entry.path

    dry = filled.project.run("imgcache-gc", "--dry-run", "--older-than", "30")
    assert dry.returncode == 0, dry.stderr
    assert "Would remove 1 image(s) not seen since" in dry.stdout and blob.exists()

    real = filled.project.run("imgcache-gc", "--older-than", "30")
    assert real.returncode == 0, real.stderr
    assert "Removed 1 image(s) not seen since" in real.stdout
    assert real.stdout.splitlines()[-1].endswith(f"({len(stale)} bytes).")
    assert not blob.exists()
    with filled.project.opened() as store:
        assert store.get_meta(entry.content_hash) is None
        assert store.get_meta(filled.original) is not None  # seen just now: kept

    assert_one_line_error(filled.project.run("imgcache-gc", "--older-than", "-1"), 2, "--older-than")


def _settings(project: Project, lines: str) -> None:
    (project.root / "imgproj" / "settings.py").write_text(f'BOT_NAME = "imgproj"\n{lines}')


def test_two_sqlite_caches_in_one_folder_never_delete_each_others_files(project: Project):
    """Two caches once shared the default imgcache-files folder, and gc on one deleted the other's blobs."""
    folder = project.root / "caches"
    folder.mkdir()
    a, b = distinct_images(2)
    stores = {}
    for name, img in (("one", a), ("two", b)):
        store = SqlStore(
            f"sqlite:///{folder / name}.sqlite3",
            ImgCacheConfig.from_settings({"IMGCACHE_URL": f"sqlite:///{folder / name}.sqlite3"}).files_store,
        )
        stores[name] = store.put(encode(img), url=f"https://x.example/{name}.jpg", client_name="t").entry
        h = stores[name].content_hash
        store.blobs.put(f"thumbs/small/{h[:2]}/{h}.jpg", encode(img.resize((50, 38))))  # as the pipeline keeps one
        store.close()
    for name in ("one", "two"):  # each cache has a folder of its own
        assert (folder / f"{name}-files" / stores[name].path).exists()
    old = time.time() - 7200
    for path in folder.rglob("*"):
        os.utime(path, (old, old))

    _settings(project, f"IMGCACHE_URL = {f'sqlite:///{folder}/one.sqlite3'!r}\nIMGCACHE_GC_GRACE = 0\n")
    done = project.run("imgcache-gc")
    assert done.returncode == 0, done.stderr
    assert "Removed 0 blob(s) no row references" in done.stdout
    for name in ("one", "two"):
        files = [p for p in (folder / f"{name}-files").rglob("*") if p.is_file() and p.name != OWNER_KEY]
        assert len(files) == 2, files  # the image and its thumbnail, both still there


def test_a_second_cache_cannot_use_a_folder_another_cache_owns(project: Project):
    shared = project.root / "shared-files"
    SqlStore(f"sqlite:///{project.root / 'one.sqlite3'}", str(shared)).close()
    SqlStore(f"sqlite:///{project.root / 'two.sqlite3'}", str(project.root / "two-files")).close()
    _settings(
        project, f"IMGCACHE_URL = {f'sqlite:///{project.root}/two.sqlite3'!r}\nIMGCACHE_FILES_STORE = {str(shared)!r}\n"
    )
    for command in ("imgcache-gc", "imgcache-stats"):
        proc = project.run(command, "--dry-run") if command == "imgcache-gc" else project.run(command)
        assert_one_line_error(proc, 3, "belong to another cache", "one.sqlite3", "IMGCACHE_FILES_STORE")
    SqlStore(f"sqlite:///{project.root / 'one.sqlite3'}", str(shared)).close()  # its owner still opens it


def test_gc_removes_the_temporary_files_of_interrupted_writes_after_the_grace(filled: Filled):
    folder = filled.project.files / "ab" / "cd"
    folder.mkdir(parents=True, exist_ok=True)
    stale, fresh = folder / ".tmp-killed", folder / ".tmp-writing"
    stale.write_bytes(b"x" * 700)
    fresh.write_bytes(b"y" * 300)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))

    proc = filled.project.run("imgcache-gc")
    assert proc.returncode == 0, proc.stderr
    assert "Removed 1 blob(s) no row references" in proc.stdout
    assert not stale.exists() and fresh.exists()
