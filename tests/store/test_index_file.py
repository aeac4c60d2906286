"""The mapped index file (issue 22): answers equal a linear scan's, in every process, fresh,
and a damaged, foreign or stale file is never used."""

from __future__ import annotations

import json
import multiprocessing
import os
import secrets
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import insert

from scrapy_imgcache.store import indexfile
from scrapy_imgcache.store.index import linear_scan, to_signed
from scrapy_imgcache.store.models import ImageRow, UrlRow
from scrapy_imgcache.store.shared import file_name
from scrapy_imgcache.store.sql import SqlStore

U64 = st.integers(0, (1 << 64) - 1)
EDGES = [0, (1 << 64) - 1, 1 << 63, (1 << 63) - 1, 0xFFFF, 0xFFFF << 48]


@st.composite
def clustered(draw):
    """Hashes in near-duplicate families (so radius queries find something), edge values, loners."""
    out = []
    for centre in draw(st.lists(U64 | st.sampled_from(EDGES), min_size=1, max_size=5)):
        for flips in draw(st.lists(st.lists(st.integers(0, 63), max_size=14), max_size=10)):
            value = centre
            for bit in flips:
                value ^= 1 << bit
            out.append(value)
    return out + draw(st.lists(U64, max_size=10))


def scan_answer(group, value, d):
    ids, dists = group.query(value, d)
    order = np.lexsort((ids, dists))
    return [(int(i), int(x)) for i, x in zip(ids[order], dists[order], strict=True)]


@settings(max_examples=25, deadline=None)
@given(clustered(), st.lists(st.tuples(U64 | st.sampled_from(EDGES), st.integers(0, 64)), min_size=1, max_size=8))
def test_file_answers_what_a_linear_scan_answers(tmp_path_factory, values, probes):
    """Both layouts (four 16-bit chunks, three wide ones), every distance up to 64: probed,
    scanned past the probing radius, and at the exact edges of each chunk's radius."""
    folder = tmp_path_factory.mktemp("idx")
    ids = np.arange(1, len(values) + 1, dtype=np.int64) * 8 + 1
    hashes = np.array(values, dtype=np.uint64)
    for widths in ((16, 16, 16, 16), (22, 21, 21)):
        path = str(folder / f"{len(widths)}.idx")
        indexfile.write(path, "me", 7, [], {("", "phash"): (ids, hashes)}, widths=widths)
        group = indexfile.open_file(path, "me").groups["", "phash"]
        assert group.widths == widths
        for value, _ in probes:
            for d in {0, 1, 2, 3, 4, 5, 8, 9, 11, 12, 15, 16, 17, *[d for _, d in probes]}:
                assert scan_answer(group, value, d) == linear_scan(ids, hashes, value, d), (widths, d)


def write_sample(path, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 1 << 63, n, dtype=np.int64).view(np.uint64)
    ids = np.arange(1, n + 1, dtype=np.int64)
    indexfile.write(path, "me", n, [n - 2], {("", "phash"): (ids, hashes), ("b", "dhash"): (ids[:10], hashes[:10])})
    return ids, hashes


def test_file_round_trip_keeps_its_marker_and_groups(tmp_path):
    path = str(tmp_path / "x.idx")
    ids, hashes = write_sample(path)
    found = indexfile.open_file(path, "me")
    assert (found.high, found.gaps, set(found.groups)) == (3000, [2998], {("", "phash"), ("b", "dhash")})
    got_ids, got_hashes = found.groups["", "phash"].entries()
    assert sorted(zip(got_ids.tolist(), got_hashes.tolist(), strict=False)) == sorted(
        zip(ids.tolist(), hashes.tolist(), strict=False)
    )
    assert indexfile.open_file(path, "another cache") is None
    assert not [n for n in os.listdir(tmp_path) if n != "x.idx"]  # no temporary file left


@pytest.mark.parametrize(
    "damage",
    ["truncated", "longer", "empty", "first table", "last byte", "header byte", "magic", "zeroed block", "offsets"],
)
def test_a_damaged_file_never_answers(tmp_path, damage):
    """Refused at open, or every query either answers what a scan does or raises: the
    queries for every stored hash read every block, so the damage is met."""
    path = str(tmp_path / "x.idx")
    ids, hashes = write_sample(path)
    group = indexfile.open_file(path, "me").groups["", "phash"]
    data = bytearray(Path(path).read_bytes())
    body = indexfile.HEADER_ROOM
    tables = body + group_meta(data)["tables"]
    if damage == "truncated":
        data = data[:-16]
    elif damage == "longer":
        data += b"\0" * 8
    elif damage == "empty":
        data = bytearray()
    elif damage == "first table":
        data[tables + 5000 * 16 + 3] ^= 0x10
    elif damage == "last byte":
        data[tables + 4 * 3000 * 16 - 1] ^= 0x01
    elif damage == "header byte":
        data[60] ^= 0x01
    elif damage == "magic":
        data[0] ^= 0x01
    elif damage == "zeroed block":
        data[tables + 2 * 3000 * 16 : tables + 2 * 3000 * 16 + 4096] = b"\0" * 4096
    else:
        data[body + 100] ^= 0x04
    Path(path).write_bytes(bytes(data))
    opened = indexfile.open_file(path, "me")
    if opened is None:
        return
    group, raised = opened.groups["", "phash"], 0
    for value in hashes.tolist():
        try:
            assert scan_answer(group, value, 0) == linear_scan(ids, hashes, value, 0)
        except indexfile.DamagedIndex:
            raised += 1
    assert raised


def group_meta(data):
    length = int.from_bytes(data[8:16], "little")
    return json.loads(bytes(data[32 : 32 + length]))["groups"][0]


# -- through the store, on every database ---------------------------------------------------


def add_rows(store: SqlStore, values, bucket=""):
    """Image rows (and a URL each) with the given pHashes, straight into the tables; returns
    their content hashes, in order."""
    now = datetime(2026, 1, 1)
    chashes = [secrets.token_hex(32) for _ in values]
    images = [
        {
            "bucket": bucket,
            "content_hash": c,
            "content_type": "image/jpeg",
            "file_size": 10,
            "perceptual_hash": f"{v:016x}",
            "phash_int": to_signed(v),
            "hash_algorithm": "phash",
            "flat": False,
            "blob_key": f"{c[:2]}/{c}.jpg",
            "client_name": "t",
            "lookup_time": now,
            "created_at": now,
        }
        for c, v in zip(chashes, values, strict=True)
    ]
    with store.engine.begin() as conn:
        conn.execute(insert(ImageRow), images)
        ids = dict(
            conn.execute(ImageRow.__table__.select().with_only_columns(ImageRow.content_hash, ImageRow.id)).all()
        )
        urls = [
            {
                "image_id": ids[c],
                "bucket": bucket,
                "url": f"https://e.example/{c}",
                "url_hash": c,
                "client_name": "t",
                "lookup_time": now,
                "created_at": now,
                "saved_bytes": 0,
            }
            for c in chashes
        ]
        conn.execute(insert(UrlRow), urls)
    return chashes


def answers(store, value, d):
    return [(e.content_hash, e.hamming_distance) for e in store.similar(f"{value:016x}", d, limit=10_000)]


def expected(chashes, values, value, d):
    hashes = np.array(values, dtype=np.uint64)
    return [(chashes[i], dist) for i, dist in linear_scan(np.arange(len(values)), hashes, value, d)]


def open_store(url, tmp_path, **kw):
    return SqlStore(url, str(tmp_path / "files"), index_dir=str(tmp_path / "index"), index_fold_min=1, **kw)


def family_values(n, seed=3):
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 1 << 63, max(n // 6, 1), dtype=np.int64).view(np.uint64)
    out = []
    for i in range(n):
        value = int(centres[i % len(centres)])
        for bit in rng.choice(64, int(rng.integers(0, 6)), replace=False):
            value ^= 1 << int(bit)
        out.append(value)
    return out


def test_store_answers_from_the_file_as_a_scan_would(db_url, tmp_path):
    """Rows in the file, rows since (the private tail), a row deleted, a folded tail: every
    answer equal to the scan's, and the file really written and mapped."""
    store = open_store(db_url, tmp_path)
    values = family_values(300)
    chashes = add_rows(store, values[:200])
    assert answers(store, values[0], 8) == expected(chashes, values[:200], values[0], 8)
    assert store._index.written == 1
    assert os.path.exists(tmp_path / "index" / file_name(store.cache_id))
    store._index.fold_min = 1_000_000  # the next rows stay in the tail
    chashes += add_rows(store, values[200:])
    assert store.delete(chashes[1])
    live = [(c, v) for c, v in zip(chashes, values, strict=True) if c != chashes[1]]
    for value in [*values[:40:3], values[0] ^ 65535, 0, (1 << 64) - 1]:
        for d in (0, 4, 8, 10, 13, 20):
            assert answers(store, value, d) == expected([c for c, _ in live], [v for _, v in live], value, d)
    assert store._index.written == 1
    store.close()


def test_a_second_process_maps_the_file_and_sees_new_rows(db_url, tmp_path):
    first = open_store(db_url, tmp_path)
    values = family_values(120)
    chashes = add_rows(first, values[:100])
    assert answers(first, values[5], 6) == expected(chashes, values[:100], values[5], 6)
    second = open_store(db_url, tmp_path)  # as another crawl process of the host
    assert answers(second, values[5], 6) == expected(chashes, values[:100], values[5], 6)
    assert (first._index.written, second._index.written, second._index.mapped) == (1, 0, 1)
    chashes += add_rows(second, values[100:])  # stored by "another process": found at once
    for store in (first, second):
        assert answers(store, values[110], 6) == expected(chashes, values, values[110], 6)
    assert first._index.written + second._index.written == 2  # one of them folded the new rows
    first.close()
    second.close()


def test_a_stale_or_damaged_file_is_rebuilt(db_url, tmp_path):
    store = open_store(db_url, tmp_path)
    values = family_values(150)
    chashes = add_rows(store, values)
    answers(store, 0, 0)
    path = store._index.path
    store.close()
    data = bytearray(Path(path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    again = open_store(db_url, tmp_path)
    for value in values[:20]:
        assert answers(again, value, 8) == expected(chashes, values, value, 8)
    assert again._index.written == 1  # the damaged file was replaced, not read
    again.close()
    assert indexfile.open_file(path, again.cache_id) is not None


def test_an_old_file_is_brought_up_to_date_from_the_database(db_url, tmp_path):
    """A file whose marker is behind the database (copied back from before 60 more rows and a
    delete): mapped as it is, the rows since read into the tail, the deleted one left out."""
    store = open_store(db_url, tmp_path)
    values = family_values(160)
    chashes = add_rows(store, values[:100])
    answers(store, 0, 0)
    old = Path(store._index.path).read_bytes()
    chashes += add_rows(store, values[100:])
    assert store.delete(chashes[7])
    store.close()
    Path(store._index.path).write_bytes(old)
    again = open_store(db_url, tmp_path)
    again._index.fold_min = 1_000_000  # answer from the old file and the tail
    live = [(c, v) for c, v in zip(chashes, values, strict=True) if c != chashes[7]]
    for value in values[::9]:
        got = answers(again, value, 9)
        assert got == expected([c for c, _ in live], [v for _, v in live], value, 9)
    assert (again._index.written, again._index.mapped) == (0, 1)
    assert again._index.base.high < again._index.high  # the tail held the newer rows
    again.close()


def _open_and_query(url, tmp, queue):
    store = SqlStore(url, tmp + "/files", index_dir=tmp + "/index", index_fold_min=1)
    found = len(store.similar("f" * 16, 32, limit=100_000))
    queue.put((store._index.written, store._index.mapped, found))
    store.close()


def test_concurrent_rebuilders_write_one_file(db_url, tmp_path):
    """Four processes opening a cache without a file at once: one reads every row and writes
    it, under the lock; the others map that file."""
    store = open_store(db_url, tmp_path)
    values = family_values(500)
    add_rows(store, values)
    want = len(linear_scan(np.arange(500), np.array(values, dtype=np.uint64), (1 << 64) - 1, 32))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open_and_query, args=(db_url, str(tmp_path), queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    got = [queue.get(timeout=10) for _ in procs]
    assert [p.exitcode for p in procs] == [0] * 4
    assert sorted(w for w, _, _ in got) == [0, 0, 0, 1]
    assert [n for _, _, n in got] == [want] * 4 and want > 0
    store.close()
