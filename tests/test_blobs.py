"""Blob stores: atomic local files, fsspec object storage (memory://, and S3 through moto), GC grace."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from scrapy_imgcache.errors import StoreError
from scrapy_imgcache.hashing import content_hash
from scrapy_imgcache.store.blobs import (
    OWNER_KEY,
    FsspecBlobStore,
    LocalBlobStore,
    blob_key,
    claim,
    hash_of_key,
    open_blob_store,
    storage_options,
)
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import FtpServer, distinct_jpegs, noise_bytes, run_processes, start_ftp_server

DATA = noise_bytes(50_000)
KEY = blob_key(content_hash(DATA), ".jpg")
ESCAPES = ["../evil.jpg", "ab/../../evil.jpg", "ab/cd/../../../evil.jpg"]


def all_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_keys_are_content_addressed():
    chash = content_hash(DATA)
    assert f"{chash[:2]}/{chash[2:4]}/{chash}.jpg" == KEY
    assert hash_of_key(KEY) == chash


@pytest.fixture(params=["local", "memory", "s3", "ftp"])
def blobs(request, tmp_path):
    """The same contract from every backend."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    if request.param == "memory":
        return FsspecBlobStore(f"memory://imgcache-{uuid.uuid4().hex}/blobs")
    if request.param == "ftp":
        return ftp_blobs(request.getfixturevalue("ftp_server"))
    return request.getfixturevalue("s3_blobs")


def ftp_blobs(server: FtpServer, active: bool = False) -> FsspecBlobStore:
    """FTP blobs as Scrapy's settings configure them (FTP_USER, FTP_PASSWORD, FEED_STORAGE_FTP_ACTIVE)."""
    url = server.url("cache/blobs")
    settings = {"FTP_USER": "user", "FTP_PASSWORD": "secret", "FEED_STORAGE_FTP_ACTIVE": active}
    return FsspecBlobStore(url, **storage_options(url, settings))


def test_put_get_exists_delete(blobs):
    assert blobs.get(KEY) is None and not blobs.exists(KEY)
    blobs.put(KEY, DATA)
    blobs.put(KEY, DATA)  # already there: success, not an error
    assert blobs.exists(KEY) and blobs.get(KEY) == DATA
    assert [(k, size) for k, _mtime, size in blobs.iter_keys()] == [(KEY, len(DATA))]
    assert blobs.delete(KEY) and not blobs.delete(KEY)
    assert blobs.get(KEY) is None and list(blobs.iter_keys()) == []


@pytest.mark.parametrize("key", ESCAPES)
def test_keys_escaping_the_store_are_refused(blobs, key):
    for call in (lambda: blobs.put(key, DATA), lambda: blobs.get(key), lambda: blobs.delete(key)):
        with pytest.raises(ValueError, match="escapes"):
            call()


def test_local_absolute_and_root_keys_are_refused(tmp_path):
    blobs = LocalBlobStore(tmp_path / "blobs")
    for key in ("/etc/passwd", ".", ""):
        with pytest.raises(ValueError, match="escapes"):
            blobs.put(key, DATA)


def test_local_writes_leave_no_temporary_files(tmp_path):
    blobs = LocalBlobStore(tmp_path)
    for data in distinct_jpegs(3):
        blobs.put(blob_key(content_hash(data), ".jpg"), data)
    with pytest.raises(TypeError):  # a write that fails half-way cleans up after itself
        blobs.put(KEY, "not bytes")  # type: ignore[arg-type]
    assert len(all_files(tmp_path)) == 3
    assert not [f for f in all_files(tmp_path) if ".tmp-" in f]
    assert not blobs.exists(KEY)


def test_two_processes_writing_one_key_leave_one_intact_file(tmp_path):
    data = noise_bytes(4_000_000, seed=3)
    key = blob_key(content_hash(data), ".png")
    run_processes(None, "", [[("blob", str(tmp_path), key, data, 20)] for _ in range(2)])
    assert all_files(tmp_path) == [key]
    assert (tmp_path / key).read_bytes() == data


def test_open_blob_store_picks_the_backend(tmp_path):
    assert isinstance(open_blob_store(str(tmp_path / "a")), LocalBlobStore)
    local = open_blob_store(f"file://{tmp_path / 'b'}")
    assert isinstance(local, LocalBlobStore) and local.root == (tmp_path / "b").resolve()
    remote = open_blob_store(f"memory://imgcache-{uuid.uuid4().hex}/x")
    assert isinstance(remote, FsspecBlobStore)
    assert remote.describe(KEY).startswith("memory://") and remote.describe(KEY).endswith(KEY)


def test_orphan_blobs_never_lists_young_blobs(blobs, sqlite_url):
    """A blob written just before its row commits must survive a concurrent GC."""
    store = SqlStore(sqlite_url, blobs)
    try:
        kept = store.put(distinct_jpegs(1)[0], url="https://a.example/1.jpg", client_name="s").entry
        blobs.put(KEY, DATA)  # no row: an orphan, but a young one
        assert store.orphan_blobs(grace_seconds=3600) == []
        time.sleep(0.01)
        assert store.orphan_blobs(grace_seconds=0) == [(KEY, len(DATA))]
        assert kept.path not in {k for k, _ in store.orphan_blobs(grace_seconds=0)}
    finally:
        store.close()


# -- a real S3 API: moto's server on the loopback ------------------------------------------


@pytest.fixture
def s3_blobs(s3_bucket):
    return FsspecBlobStore(f"s3://{s3_bucket.name}/blobs", **s3_bucket.options)


def test_a_blob_store_serves_the_one_cache_that_claimed_it(blobs):
    claim(blobs, "cache-one", "sqlite:///one.sqlite3")
    claim(blobs, "cache-one", "sqlite:///one.sqlite3")  # its owner, again: fine
    with pytest.raises(StoreError, match=r"belong to another cache \(database sqlite:///one.sqlite3\)"):
        claim(blobs, "cache-two", "sqlite:///two.sqlite3")
    assert blobs.read_marker(OWNER_KEY) is not None


def test_of_two_caches_claiming_a_new_folder_at_once_exactly_one_wins(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def attempt(n: int) -> bool:
        try:
            claim(LocalBlobStore(tmp_path / "files"), f"cache-{n}", f"db-{n}")
        except StoreError:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        assert sum(pool.map(attempt, range(8))) == 1


def test_ftp_folders_are_made_and_active_mode_is_honoured(ftp_server):
    """ftp:// stores once failed on their first write: no folder was ever made."""
    for active in (False, True):
        blobs = ftp_blobs(ftp_server, active)
        key = f"ab/cd/{active}/x.jpg"
        blobs.put(key, DATA)
        assert (ftp_server.root / "cache/blobs" / key).read_bytes() == DATA
        assert blobs.fs.ftp.passiveserver is not active
        blobs.probe()


def test_an_ftp_store_outlives_the_server_dropping_an_idle_connection(tmp_path):
    """A dropped control connection once failed the next read with a bare EOFError."""
    (tmp_path / "ftp").mkdir()
    server = start_ftp_server(tmp_path / "ftp", idle_timeout=0.5)
    try:
        blobs = ftp_blobs(server)
        blobs.put(KEY, DATA)
        time.sleep(1.5)  # the server hangs up on the quiet client
        assert blobs.get(KEY) == DATA
    finally:
        server.stop()


def test_threads_sharing_an_ftp_store_take_turns_on_its_one_connection(ftp_server):
    from concurrent.futures import ThreadPoolExecutor

    blobs = ftp_blobs(ftp_server)
    items = {f"t/{n:02d}.jpg": DATA + bytes([n]) for n in range(24)}

    def roundtrip(key: str) -> bytes | None:
        blobs.put(key, items[key])
        return blobs.get(key)

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(roundtrip, items)) == list(items.values())


def test_credentials_in_an_ftp_url_win_over_the_settings(ftp_server):
    url = ftp_server.url("cache", credentials=True)
    blobs = FsspecBlobStore(url, **storage_options(url, {"FTP_USER": "nobody", "FTP_PASSWORD": "wrong"}))
    blobs.put(KEY, DATA)
    assert blobs.get(KEY) == DATA


@pytest.mark.parametrize("kind", ["s3", "ftp"])
def test_a_failing_backend_is_a_store_error(kind, request, tmp_path):
    """IMGCACHE_ON_STORE_ERROR could not see S3 or FTP failures: they were the backend's own types."""
    if kind == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        blobs = FsspecBlobStore(f"s3://{bucket.name}-missing/blobs", **bucket.options)
    else:
        server = request.getfixturevalue("ftp_server")
        blobs = ftp_blobs(server)
        blobs.put(KEY, DATA)
        server.stop()
    with pytest.raises(StoreError, match=r"cannot (write|look for) (s3|ftp)://"):
        blobs.put(blob_key("f" * 64, ".jpg"), DATA)
    with pytest.raises(StoreError):
        blobs.probe()


def test_group_sync_waits_for_a_flush_begun_after_each_write_and_shares_flushes(tmp_path, monkeypatch):
    """Durable writes return only once a flush that started after them has finished; writers
    waiting together share one flush instead of an fsync each."""
    from concurrent.futures import ThreadPoolExecutor

    from scrapy_imgcache.store.blobs import local as blobs_module

    flushes: list[tuple[float, float]] = []
    real = blobs_module._syncfs

    def timed(folder: str) -> None:
        start = time.perf_counter()
        real(folder)
        time.sleep(0.002)  # a slow disk, so writers pile up behind a flush
        flushes.append((start, time.perf_counter()))

    monkeypatch.setattr(blobs_module, "_syncfs", timed)
    sync = blobs_module.GroupSync(str(tmp_path))

    def writer(n: int) -> tuple[float, float]:
        wrote = time.perf_counter()
        sync.wait()
        return wrote, time.perf_counter()

    with ThreadPoolExecutor(8) as pool:
        waits = list(pool.map(writer, range(64)))
    for wrote, returned in waits:
        assert any(wrote <= start and end <= returned for start, end in flushes)
    assert len(flushes) < 40  # shared: far fewer flushes than writes


def test_durable_local_writes_are_whole_and_leave_no_temporary_files(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    blobs = LocalBlobStore(tmp_path / "blobs")
    payloads = {blob_key(content_hash(d), ".bin"): d for d in (os.urandom(5000 + n) for n in range(40))}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: blobs.put(*kv), payloads.items()))
    assert {k: blobs.get(k) for k in payloads} == payloads
    assert not list((tmp_path / "blobs").rglob(".tmp-*"))


def _placed_copy(root) -> tuple[LocalBlobStore, LocalBlobStore, str]:
    """A blob in a cache folder under ``root`` and its copy_from into a view beside it."""
    data = noise_bytes(20_000, seed=19)
    blobs, view = LocalBlobStore(root / "files"), LocalBlobStore(root / "images", durable=False)
    key = blob_key(content_hash(data), ".jpg")
    blobs.put(key, data)
    if not view.copy_from(blobs, key, "full/a.jpg"):
        view.replace("full/a.jpg", data)
    placed = view.path("full/a.jpg")
    with open(placed, "r+b") as fh:  # the user edits their file in place
        fh.write(b"edited")
    assert blobs.get(key) == data and os.stat(placed).st_nlink == 1
    assert not [n for n in os.listdir(os.path.dirname(placed)) if n.startswith(".tmp-")]
    return blobs, view, key


def test_copy_from_never_links_and_asks_a_file_system_without_clones_once(tmp_path):
    _blobs, view, _key = _placed_copy(tmp_path)  # ext4 or tmpfs here: no reflinks
    assert view._clones is False


@pytest.fixture
def xfs(tmp_path):
    """An XFS file system with reflinks on a loop device (root and mkfs.xfs needed; else skipped)."""
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        pytest.skip("needs root and mkfs.xfs (xfsprogs)")
    image, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(320 * 1024 * 1024)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True)
    if subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a loop device here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_copy_from_clones_where_the_file_system_offers_it(xfs):
    blobs, view, key = _placed_copy(xfs)
    assert view._clones is True  # a clone was made: sharing the blocks until one side is written
    assert view.copy_from(blobs, key, "full/b.jpg") and view.get("full/b.jpg") == blobs.get(key)
