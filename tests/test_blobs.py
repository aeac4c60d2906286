"""Blob stores: atomic local files, fsspec object storage (memory://, and S3 through moto), GC grace."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import pytest

from scrapy_imgcache.blobs import (
    OWNER_KEY,
    FsspecBlobStore,
    LocalBlobStore,
    blob_key,
    claim,
    hash_of_key,
    open_blob_store,
)
from scrapy_imgcache.errors import StoreError
from scrapy_imgcache.hashing import content_hash
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import distinct_jpegs, noise_bytes, run_processes

DATA = noise_bytes(50_000)
KEY = blob_key(content_hash(DATA), ".jpg")
ESCAPES = ["../evil.jpg", "ab/../../evil.jpg", "ab/cd/../../../evil.jpg"]


def all_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_keys_are_content_addressed():
    chash = content_hash(DATA)
    assert f"{chash[:2]}/{chash[2:4]}/{chash}.jpg" == KEY
    assert hash_of_key(KEY) == chash


@pytest.fixture(params=["local", "memory", "s3"])
def blobs(request, tmp_path):
    """The same contract from every backend."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    if request.param == "memory":
        return FsspecBlobStore(f"memory://imgcache-{uuid.uuid4().hex}/blobs")
    return request.getfixturevalue("s3_blobs")


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("s3fs")
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if server is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]' s3fs)")
    port = _free_port()
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("moto_server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_blobs(s3_endpoint):
    options = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
    }
    bucket = f"imgcache-{uuid.uuid4().hex[:12]}"
    import boto3

    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
    return FsspecBlobStore(f"s3://{bucket}/blobs", **options)


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
