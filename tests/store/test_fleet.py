"""A fleet (issue 22 item 2): crawl processes on two "hosts" (each its own index folder)
sharing one database server and one S3 bucket (moto); exact and near dedupe hold across them."""

from __future__ import annotations

import multiprocessing
import os
import traceback
from typing import Any

import pytest

from scrapy_imgcache.hashing import content_hash
from tests.helpers import distinct_images, encode, near_duplicates

pytestmark = pytest.mark.postgres

HOSTS = ("host-a", "host-b")
PER_PROCESS = 2  # originals each process stores first


def _crawl_process(
    url: str, files: str, options: dict[str, Any], index_dir: str, mine: list[bytes], copies: list[tuple[str, bytes]],
    barrier: Any, results: Any,
) -> None:  # fmt: skip
    """Store ``mine``; once every process has, ingest ``copies`` (exact and near copies of
    images other processes stored) as a crawl would, and report each outcome."""
    try:
        from scrapy_imgcache.config import ImgCacheConfig
        from scrapy_imgcache.ingest import Ingestor
        from scrapy_imgcache.store.sql import SqlStore

        store = SqlStore(url, files, storage_options=options, index_dir=index_dir, index_fold_min=1)
        ingestor = Ingestor(store, ImgCacheConfig(hash_processes=0))
        for i, data in enumerate(mine):
            outcome = ingestor.ingest(data, url=f"https://{os.getpid()}.example/{i}", client_name="fleet")
            assert outcome.created and outcome.duplicate is None
        barrier.wait(timeout=120)
        found = []
        for kind, data in copies:
            outcome = ingestor.ingest(data, url=f"https://{os.getpid()}.example/{kind}", client_name="fleet")
            found.append((kind, outcome.duplicate, outcome.duplicate_of, outcome.entry.content_hash))
        results.put((index_dir, found, store._index.written, store._index.mapped, None))
        store.close()
    except BaseException:  # noqa: BLE001 - every failure goes back to the test
        results.put((index_dir, [], 0, 0, traceback.format_exc()))
        barrier.abort()


@pytest.mark.parametrize("db_url", ["postgresql", pytest.param("mysql", marks=pytest.mark.mysql)], indirect=True)
def test_a_fleet_on_two_hosts_dedupes_exact_and_near_copies(db_url, s3_bucket, tmp_path):
    """Four processes, two a host, one database server and one S3 bucket. Each stores two
    originals, then ingests an exact copy and a near copy (resized) of an original another
    process stored on the other host: every copy is found, exact as exact, near as similar to
    its original; each image's bytes are in the bucket once; each host's processes share its
    index file (one written there, the others mapped it)."""
    from scrapy_imgcache.store.sql import SqlStore

    files = f"s3://{s3_bucket.name}/cache"
    images = distinct_images(4 * PER_PROCESS)
    originals = [encode(img) for img in images]
    resized = [near_duplicates(img)["resized"] for img in images]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = []
    for p in range(4):
        other = (p + 1) % 4  # the next process: always on the other host
        theirs = range(other * PER_PROCESS, (other + 1) * PER_PROCESS)
        copies = [(f"exact-{i}", originals[i]) for i in theirs] + [(f"near-{i}", resized[i]) for i in theirs]
        mine = originals[p * PER_PROCESS : (p + 1) * PER_PROCESS]
        index_dir = str(tmp_path / HOSTS[p % 2])
        args = (db_url, files, s3_bucket.options, index_dir, mine, copies, barrier, results)
        procs.append(ctx.Process(target=_crawl_process, args=args))
    for proc in procs:
        proc.start()
    got = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert [error for *_, error in got if error] == []
    store = SqlStore(db_url, files, storage_options=s3_bucket.options, create=False)
    hash_of = {i: content_hash(data) for i, data in enumerate(originals)}
    for _, found, _, _, _ in got:
        for kind, duplicate, duplicate_of, chash in found:
            i = int(kind.split("-")[1])
            if kind.startswith("exact"):
                assert (duplicate, chash) == ("exact", hash_of[i])
            else:
                assert (duplicate, duplicate_of) == ("similar", hash_of[i])
    (usage,) = [u for u in store.usage() if u.bucket == ""]
    # the originals and their near copies (annotate: kept), each once, bytes in the bucket once
    assert (usage.images, usage.similar_duplicates) == (16, 8)
    assert len([key for key, _, _ in store.blobs.iter_keys() if "/" in key]) == 16
    for host in HOSTS:
        mine = [(w, m) for d, _, w, m, _ in got if d.endswith(host)]
        assert sum(w for w, _ in mine) >= 1 and all(w + m >= 1 for w, m in mine)
        assert any(name.endswith(".idx") for name in os.listdir(tmp_path / host))
    store.close()
