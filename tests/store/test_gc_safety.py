"""The files folder is the cache's alone and gc never hurts a live cache: writes in flight
survive gc at grace 0, caches nested one in another are refused, and opening a cache writes
nothing to its folder (a full or read-only disk can still be read and collected)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scrapy_imgcache.errors import StoreError
from scrapy_imgcache.hashing import content_hash
from scrapy_imgcache.store import open_store
from scrapy_imgcache.store.blobs import OWNER_KEY, blob_key
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import blob_files, distinct_images, encode, noise_bytes

PHOTOS = [encode(img) for img in distinct_images(48, size=(64, 48))]


def test_gc_at_grace_zero_beside_writers_loses_nothing(db_url, tmp_path):
    """gc at grace 0 deleted the temporary files of writes in flight (13 writes failed) and rows
    whose blob it had just taken as an orphan (a crawl reported 429 images stored, the database
    kept 423). Now every image a writer reports stored keeps its row and its bytes."""
    files = str(tmp_path / "files")
    writer, collector = SqlStore(db_url, files), SqlStore(db_url, files)
    stored, errors, runs = [], [], []
    stop = threading.Event()

    def write(k: int) -> None:
        for n in range(k, len(PHOTOS), 3):
            try:
                stored.append(writer.put(PHOTOS[n], url=f"https://w.example/{k}/{n}.jpg", client_name="w").entry)
            except Exception as exc:  # noqa: BLE001 - every failure is the test's
                errors.append(exc)

    def collect() -> None:
        while not stop.is_set():
            try:
                collector.collect_garbage(grace_seconds=0)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            runs.append(1)

    gc = threading.Thread(target=collect)
    gc.start()
    while not runs:  # the collector is at work before the first write
        time.sleep(0.001)
    writers = [threading.Thread(target=write, args=(k,)) for k in range(3)]
    try:
        for t in writers:
            t.start()
        for t in writers:
            t.join(timeout=300)
    finally:
        stop.set()
        gc.join(timeout=300)
    try:
        assert errors == []
        assert len(stored) == len(PHOTOS) and len(runs) > 1
        for entry in stored:
            assert writer.get_meta(entry.content_hash) is not None, entry.url
            assert writer.get_bytes(entry.content_hash) == PHOTOS[int(entry.url.rsplit("/", 1)[1][:-4])]
        assert not list((tmp_path / "files").rglob(".tmp-*"))
    finally:
        writer.close()
        collector.close()


def test_a_temporary_file_a_writer_holds_is_not_collected(tmp_path):
    from scrapy_imgcache.store.blobs.local import LocalBlobStore, new_temp

    blobs = LocalBlobStore(tmp_path / "files")
    fd, tmp = new_temp(str(blobs.root))
    try:
        key = os.path.relpath(tmp, blobs.root)
        assert blobs.remove_if(key, lambda: True) is False and os.path.exists(tmp)
    finally:
        os.close(fd)
    assert blobs.remove_if(key, lambda: True) is True and not os.path.exists(tmp)


# -- nested files folders ----------------------------------------------------------------------


def _url(request, kind: str, tmp_path: Path, name: str) -> str:
    if kind == "postgresql":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / f'{name}.sqlite3'}"


def _fill(store: SqlStore, photos: list[bytes], tag: str) -> None:
    for n, photo in enumerate(photos):
        store.put(photo, url=f"https://{tag}.example/{n}.jpg", client_name=tag)


@pytest.mark.parametrize("outer", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_files_folder_inside_another_caches_is_refused(request, tmp_path, outer):
    """Cache A at shared/a, cache B at shared: B's gc removed all of A's blobs."""
    shared = tmp_path / "shared"
    b = SqlStore(_url(request, outer, tmp_path, "b"), str(shared))
    _fill(b, PHOTOS[:3], "b")
    with pytest.raises(StoreError, match=r"inside the folder of another cache, .*shared \(database"):
        SqlStore(f"sqlite:///{tmp_path / 'a.sqlite3'}", str(shared / "a"))
    with pytest.raises(StoreError, match="inside the folder of another cache"):
        SqlStore(f"sqlite:///{tmp_path / 'a.sqlite3'}", str(shared / "deeper" / "a"))
    assert not (shared / "a" / OWNER_KEY).exists()
    b.close()


@pytest.mark.parametrize("inner", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_files_folder_above_another_caches_is_refused_when_first_claimed(request, tmp_path, inner):
    shared = tmp_path / "shared"
    a = SqlStore(_url(request, inner, tmp_path, "a"), str(shared / "x" / "a"))
    _fill(a, PHOTOS[:3], "a")
    with pytest.raises(StoreError, match=r"above the folder of another cache, .*shared/x/a \(database"):
        SqlStore(f"sqlite:///{tmp_path / 'b.sqlite3'}", str(shared))
    assert not (shared / OWNER_KEY).exists()
    assert len(blob_files(shared / "x" / "a")) == 3
    a.close()


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_gc_never_goes_into_another_caches_folder(request, tmp_path, kind):
    """Two caches nested before they were refused (claimed by an earlier version): the outer one's
    gc leaves the inner one's files alone, and the inner one cannot be opened at all."""
    shared = tmp_path / "shared"
    a = SqlStore(_url(request, kind, tmp_path, "a"), str(shared / "a"))
    _fill(a, PHOTOS[:5], "a")
    a.close()
    b_url = f"sqlite:///{tmp_path / 'b.sqlite3'}"
    b = SqlStore(b_url, str(tmp_path / "elsewhere"))  # B's database, and its id
    b.close()
    marker = (tmp_path / "elsewhere" / OWNER_KEY).read_bytes()
    (shared / OWNER_KEY).write_bytes(marker)  # B claimed `shared` as an earlier version did
    b = SqlStore(b_url, str(shared))
    _fill(b, PHOTOS[5:7], "b")
    orphan = shared / blob_key(content_hash(b"orphan"), ".jpg")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    report = b.collect_garbage(grace_seconds=0)
    assert report.orphans == 1 and not orphan.exists()  # B's own garbage goes
    assert len(blob_files(shared / "a")) == 5  # A's blobs stay
    assert {e.content_hash for e in b.images()} == {content_hash(p) for p in PHOTOS[5:7]}
    b.close()
    with pytest.raises(StoreError, match="inside the folder of another cache"):
        SqlStore(_url(request, kind, tmp_path, "a"), str(shared / "a"))


# -- opening writes nothing ------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` (itself too), with its modification time and size."""
    found = {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}
    found["."] = (folder.stat().st_mtime_ns, 0)
    return found


def test_opening_a_claimed_cache_writes_nothing_to_its_folder(tmp_path):
    """Every open wrote a temporary owner marker and a probe file, so with a full or read-only
    folder nothing could start, the commands one needs then included."""
    from scrapy.settings import Settings

    from scrapy_imgcache.config import ImgCacheConfig

    settings = Settings(
        {"IMGCACHE_URL": f"sqlite:///{tmp_path / 'c.sqlite3'}", "IMGCACHE_FILES_STORE": str(tmp_path / "files")}
    )
    config = ImgCacheConfig.from_settings(settings)
    first = open_store(config)
    _fill(first, PHOTOS[:3], "c")
    first.close()
    before = _snapshot(tmp_path / "files")
    time.sleep(0.01)  # (a write now would show in the folders' modification times)
    for create in (True, False):
        store = open_store(config, create=create)
        assert len(list(store.images())) == 3 and store.usage()
        store.collect_garbage(grace_seconds=3600, dry_run=True)
        store.close()
    assert _snapshot(tmp_path / "files") == before


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A real 2 MB file system (tmpfs), which needs root; skipped elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill_disk(folder: Path) -> list[Path]:
    """Orphan-shaped files, two hours old, until not one more byte fits."""
    made: list[Path] = []
    for size in (64 * 1024, 4096, 1):
        for n in range(10_000):
            data = noise_bytes(size, seed=len(made)) if size > 1 else bytes([n % 256]) + str(n).encode()
            path = folder / blob_key(content_hash(data), ".jpg")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                path.unlink(missing_ok=True)
                break
            made.append(path)
            os.utime(path, (time.time() - 7200, time.time() - 7200))
    return made


def test_a_full_disk_is_opened_and_collected(small_disk, tmp_path):
    db = f"sqlite:///{tmp_path / 'c.sqlite3'}"  # the database on another disk, as it may well be
    store = SqlStore(db, str(small_disk))
    _fill(store, PHOTOS[:4], "c")
    store.close()
    junk = _fill_disk(small_disk)
    assert os.statvfs(small_disk).f_bavail == 0
    store = SqlStore(db, str(small_disk))  # refused with "No space left on device" before
    try:
        assert len(list(store.images())) == 4
        report = store.collect_garbage(grace_seconds=3600)
        assert report.orphans == len(junk) and not any(p.exists() for p in junk)
        assert os.statvfs(small_disk).f_bavail > 200
        assert all(store.get_bytes(content_hash(p)) == p for p in PHOTOS[:4])
    finally:
        store.close()


def test_a_read_only_disk_is_opened_read_and_collected_in_a_dry_run(small_disk, tmp_path):
    db = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    store = SqlStore(db, str(small_disk))
    _fill(store, PHOTOS[:4], "c")
    store.close()
    orphan = small_disk / blob_key(content_hash(b"orphan"), ".jpg")
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    store = SqlStore(db, str(small_disk))
    try:
        assert all(store.get_bytes(content_hash(p)) == p for p in PHOTOS[:4])
        report = store.collect_garbage(grace_seconds=3600, dry_run=True)
        assert report.orphans == 1 and report.orphan_bytes == 6
        with pytest.raises(StoreError, match="Read-only file system"):
            store.collect_garbage(grace_seconds=3600)
        assert orphan.exists()
    finally:
        store.close()


def test_the_owner_marker_is_written_once(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 'c.sqlite3'}", str(tmp_path / "files"))
    marker = tmp_path / "files" / OWNER_KEY
    assert json.loads(marker.read_bytes())["cache_id"] == store.cache_id
    store.close()
    assert [p.name for p in (tmp_path / "files").iterdir()] == [OWNER_KEY]  # no probe or temporary file
