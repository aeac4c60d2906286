"""SqlStore on SQLite, PostgreSQL and MariaDB: dedupe, URL history, search, similarity, deletion, GC."""

from __future__ import annotations

import functools
import io
import os
import tempfile
import threading
from datetime import datetime, timedelta, timezone

import imagehash
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import func, select, text

from scrapy_imgcache.errors import InvalidImage
from scrapy_imgcache.hashing import ImageLimits, Inspector, content_hash, hamming
from scrapy_imgcache.store.blobs import blob_key
from scrapy_imgcache.store.models import ImageRow, UrlRow
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import (
    distinct_images,
    distinct_jpegs,
    encode,
    fresh_jpegs,
    fresh_url,
    near_duplicates,
    noise_bytes,
    png_header_only,
    run_processes,
    solid,
    tiny_psd,
)

JPEGS = distinct_jpegs(4)
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def counts(store: SqlStore) -> tuple[int, int, int]:
    """(image rows, URL rows, blob files): what a refusal must leave untouched."""
    with store.engine.connect() as conn:
        images = conn.execute(select(func.count()).select_from(ImageRow)).scalar()
        urls = conn.execute(select(func.count()).select_from(UrlRow)).scalar()
    return images, urls, len(list(store.blobs.iter_keys()))


def put(store: SqlStore, data: bytes, url: str, **kw):
    kw.setdefault("client_name", "spider")
    return store.put(data, url=url, **kw)


def test_same_bytes_are_stored_once_and_each_url_recorded(store):
    first = put(store, JPEGS[0], "https://a.example/1.jpg")
    again = put(store, JPEGS[0], "https://a.example/1.jpg")
    elsewhere = put(store, JPEGS[0], "https://b.example/copy.jpg", client_name="other")
    assert (first.created, again.created, elsewhere.created) == (True, False, False)
    assert counts(store) == (1, 2, 1)
    urls = {e.url for e in store.urls(first.entry.content_hash)}
    assert urls == {"https://a.example/1.jpg", "https://b.example/copy.jpg"}
    assert elsewhere.entry.url == "https://b.example/copy.jpg"
    assert elsewhere.entry.client_name == "other"


def test_metadata_comes_from_the_bytes_not_the_name(store):
    data = JPEGS[1]
    entry = put(store, data, "https://a.example/pic.png", filename="pic.png").entry
    assert entry.content_hash == content_hash(data)
    assert (entry.content_type, entry.width, entry.height) == ("image/jpeg", 320, 240)
    assert entry.file_size_bytes == len(data)
    assert entry.original_filename == "pic.png"
    assert entry.perceptual_hash == str(imagehash.phash(Image.open(io.BytesIO(data))))
    assert entry.path == blob_key(entry.content_hash, ".jpg")
    assert store.get_bytes(entry.content_hash) == data
    assert store.get_meta(entry.content_hash) == entry
    assert store.get_bytes("0" * 64) is None and store.get_meta("0" * 64) is None


def test_a_changed_url_keeps_every_version_and_lookup_gives_the_latest(store):
    url = "https://a.example/logo"
    old = put(store, JPEGS[0], url, lookup_time=T0).entry
    new = put(store, JPEGS[1], url, lookup_time=T0 + timedelta(days=1)).entry
    assert store.lookup(url).content_hash == new.content_hash
    assert [e.url for e in store.urls(old.content_hash)] == [url]
    assert [e.url for e in store.urls(new.content_hash)] == [url]
    put(store, JPEGS[0], url, lookup_time=T0 + timedelta(days=2))  # changed back
    assert store.lookup(url).content_hash == old.content_hash
    assert store.lookup(url).lookup_time == T0 + timedelta(days=2)
    assert store.lookup("https://a.example/other") is None
    assert counts(store) == (2, 2, 2)


def test_search_matches_substrings_with_wildcards_taken_literally(store):
    urls = ["https://x.example/a%b.jpg", "https://x.example/a_b.jpg", "https://x.example/axb.jpg"]
    for data, url in zip(JPEGS[: len(urls)], urls, strict=True):
        put(store, data, url)
    assert [e.url for e in store.search("a%b")] == [urls[0]]
    assert [e.url for e in store.search("a_b")] == [urls[1]]
    assert {e.url for e in store.search("x.example/a")} == set(urls)
    assert len(store.search("x.example", limit=2)) == 2
    assert store.search("a%b", bucket="other") == []


def test_similar_finds_near_duplicates_nearest_first(store):
    original = distinct_images(1)[0]
    stored = put(store, encode(original), "https://a.example/orig.jpg").entry
    copies = {
        name: put(store, data, f"https://b.example/{name}").entry for name, data in near_duplicates(original).items()
    }
    far = put(store, JPEGS[3], "https://c.example/far.jpg").entry
    assert hamming(far.perceptual_hash, stored.perceptual_hash) > 10  # a different photo
    found = store.similar(stored.perceptual_hash, 10)
    distances = [e.hamming_distance for e in found]
    assert found[0].content_hash == stored.content_hash and distances[0] == 0
    assert distances == sorted(distances)
    assert {e.content_hash for e in copies.values()} <= {e.content_hash for e in found}
    assert far.content_hash not in {e.content_hash for e in found}
    for e in found:
        assert e.hamming_distance == hamming(e.perceptual_hash, stored.perceptual_hash) <= 10
    exact = [e.content_hash for e in store.similar(stored.perceptual_hash, 0)]
    assert exact == [e.content_hash for e in found if e.hamming_distance == 0]
    assert len(store.similar(stored.perceptual_hash, 10, limit=2)) == 2


def test_flat_images_never_match(store):
    flats = [put(store, solid(c), f"https://a.example/{i}.png").entry for i, c in enumerate([(0, 0, 0), (9, 9, 9)])]
    assert all(e.flat for e in flats)
    put(store, JPEGS[0], "https://a.example/photo.jpg")
    for e in flats:
        found = {f.content_hash for f in store.similar(e.perceptual_hash, 32)}
        assert not found & {f.content_hash for f in flats}


def test_other_algorithms_and_buckets_are_never_compared(store, tmp_path):
    photo_entry = put(store, JPEGS[0], "https://a.example/p.jpg").entry
    dstore = SqlStore(store.url, store.blobs, inspector=Inspector(algorithm="dhash"))
    try:
        dhashed = dstore.put(JPEGS[1], url="https://a.example/d.jpg", client_name="s").entry
        assert dhashed.hash_algorithm == "dhash"
        assert dhashed.content_hash not in {e.content_hash for e in store.similar(dhashed.perceptual_hash, 32)}
        assert [e.content_hash for e in store.similar(dhashed.perceptual_hash, 0, algorithm="dhash")] == [
            dhashed.content_hash
        ]
    finally:
        dstore.close()
    assert store.similar(photo_entry.perceptual_hash, 32, bucket="b") == []
    in_b = put(store, JPEGS[2], "https://a.example/b.jpg", bucket="b").entry
    assert [e.content_hash for e in store.similar(in_b.perceptual_hash, 0, bucket="b")] == [in_b.content_hash]
    assert in_b.content_hash not in {e.content_hash for e in store.similar(in_b.perceptual_hash, 32)}
    assert store.get_meta(in_b.content_hash) is None and store.lookup("https://a.example/b.jpg") is None


def test_delete_removes_bytes_and_urls_but_not_another_buckets_blob(store):
    a = put(store, JPEGS[0], "https://a.example/1.jpg").entry
    put(store, JPEGS[0], "https://a.example/2.jpg")
    put(store, JPEGS[0], "https://b.example/1.jpg", bucket="b")
    put(store, JPEGS[1], "https://a.example/keep.jpg")
    assert store.delete(a.content_hash)
    assert store.get_bytes(a.content_hash) is None and store.urls(a.content_hash) == []
    assert store.lookup("https://a.example/1.jpg") is None and store.lookup("https://a.example/2.jpg") is None
    assert store.similar(a.perceptual_hash, 0) == []
    assert store.get_bytes(a.content_hash, bucket="b") == JPEGS[0]  # the shared blob survives
    assert not store.delete(a.content_hash)
    assert store.delete(a.content_hash, bucket="b")
    assert not store.blobs.exists(a.path)
    assert counts(store) == (1, 1, 1)


def test_of_concurrent_deletes_of_one_image_exactly_one_returns_true(store):
    """delete() says whether this call removed the image: the REST service answers 204 or 404
    by it, and on PostgreSQL and MariaDB every racing call used to say it had."""
    threads = 6
    for data in fresh_jpegs(20):
        chash = put(store, data, fresh_url()).entry.content_hash
        barrier, answers = threading.Barrier(threads), []

        def delete(chash: str = chash, barrier: threading.Barrier = barrier, answers: list[bool] = answers) -> None:
            barrier.wait(timeout=60)
            answers.append(store.delete(chash))

        workers = [threading.Thread(target=delete) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)
        assert sorted(answers) == [False] * (threads - 1) + [True]
        assert store.get_meta(chash) is None and not store.blobs.exists(blob_key(chash, ".jpg"))


def test_a_blob_removed_while_a_row_for_it_commits_is_put_back(store):
    """delete() and gc's orphan removal race a concurrent put of the same bytes: the row
    that committed meanwhile must not be left without its file."""
    kept = put(store, JPEGS[0], "https://b.example/1.jpg", bucket="b").entry  # the concurrent put's row
    assert not store.remove_blob(kept.path)
    assert store.blobs.get(kept.path) == JPEGS[0]
    assert store.delete(kept.content_hash, bucket="b")
    assert not store.blobs.exists(kept.path)  # with no row left, it goes
    assert not store.remove_blob(kept.path)  # and removing what is gone is a no-op


def test_usage_counts_annotated_near_duplicates_for_their_client(store):
    original = put(store, JPEGS[0], "https://a.example/1.jpg", client_name="shop").entry
    put(
        store,
        JPEGS[1],
        "https://b.example/1.jpg",
        client_name="blog",
        similar_to=original.content_hash,
        similar_distance=2,
    )
    (usage,) = store.usage()
    assert usage.similar_duplicates == 1
    assert usage.clients["blog"].similar_duplicates == 1 and usage.clients["shop"].similar_duplicates == 0


def test_usage_counts_images_urls_and_savings(store):
    put(store, JPEGS[0], "https://a.example/1.jpg", client_name="one")
    put(store, JPEGS[0], "https://a.example/dup.jpg", client_name="two")
    put(store, JPEGS[1], "https://a.example/2.jpg", client_name="one")
    put(store, JPEGS[2], "https://b.example/3.jpg", bucket="b", client_name="one")
    usage = {u.bucket: u for u in store.usage()}
    assert sorted(usage) == ["", "b"]
    main = usage[""]
    assert (main.images, main.bytes, main.urls) == (2, len(JPEGS[0]) + len(JPEGS[1]), 3)
    assert (main.exact_duplicates, main.exact_bytes_saved) == (1, len(JPEGS[0]))
    assert main.clients["one"].images == 2 and main.clients["two"].exact_duplicates == 1
    assert (usage["b"].images, usage["b"].urls) == (1, 1)


def test_record_url_notes_a_url_for_known_bytes_only(store):
    entry = put(store, JPEGS[0], "https://a.example/1.jpg").entry
    noted = store.record_url(entry.content_hash, url="https://a.example/304", client_name="s", duplicate="exact")
    assert noted is not None and noted.url == "https://a.example/304"
    assert store.record_url("f" * 64, url="https://a.example/x", client_name="s") is None
    assert counts(store) == (1, 2, 1)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(noise_bytes(), id="noise"),
        pytest.param(_half(JPEGS[0]), id="truncated-jpeg"),
        pytest.param(_half(encode(distinct_images(1)[0], "PNG")), id="truncated-png"),
        pytest.param(png_header_only(100_000, 100_000), id="bomb"),
        pytest.param(png_header_only(6000, 6000), id="too-many-pixels"),
        pytest.param(tiny_psd(), id="psd"),
        pytest.param(JPEGS[0] + b"\0" * 1_000_000, id="too-many-bytes"),
    ],
)
def test_invalid_input_stores_nothing(db_url, tmp_path, data):
    store = SqlStore(db_url, str(tmp_path / "files"), inspector=Inspector(ImageLimits(max_bytes=1_000_000)))
    try:
        with pytest.raises(InvalidImage):
            put(store, data, "https://a.example/bad")
        assert counts(store) == (0, 0, 0)
        assert store.lookup("https://a.example/bad") is None
    finally:
        store.close()


def test_bad_arguments_are_refused(store):
    info = Inspector().inspect(JPEGS[1])
    with pytest.raises(ValueError, match="does not describe"):
        put(store, JPEGS[0], "https://a.example/x", info=info)
    with pytest.raises(ValueError, match="bucket"):
        put(store, JPEGS[0], "https://a.example/x", bucket="no spaces")
    with pytest.raises(ValueError, match="perceptual hash"):
        store.similar("xyz")
    with pytest.raises(ValueError, match="distance"):
        store.similar("0" * 16, 33)
    assert counts(store) == (0, 0, 0)


#: schemes an image may not be recorded at: a page that links to its URLs would run them
NOT_IMAGE_URLS = [
    "javascript:alert(1)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(1)",
    "\tjavascript:alert(1)",
    "vbscript:msgbox(1)",
    "about:blank",
    "no-scheme/a.jpg",
    "",
    "https://a.example/a\x00.jpg",
    "https://a.example/line\nbreak.jpg",
    "https://a.example/trailing-newline.jpg\n",
]
IMAGE_URLS = [
    "https://a.example/1.jpg",
    "HTTP://A.EXAMPLE/2.JPG",
    "file:///srv/photos/3.jpg",
    "data:image/png;base64,iVBORw0KGgo=",
    "ftp://ftp.example/4.jpg",
    "s3://bucket/5.jpg",
    "visualsnoop://0123456789abcdef/image/a b/ü",
]


def test_urls_of_other_schemes_are_refused(store):
    """Only the schemes images come from are recorded (and so ever shown or linked to)."""
    for url in NOT_IMAGE_URLS:
        with pytest.raises(ValueError, match="URL"):
            put(store, JPEGS[0], url)
    assert counts(store) == (0, 0, 0)
    stored = put(store, JPEGS[0], IMAGE_URLS[0]).entry
    for url in NOT_IMAGE_URLS:
        with pytest.raises(ValueError, match="URL"):
            store.record_url(stored.content_hash, url=url, client_name="spider")
    assert [e.url for e in store.urls(stored.content_hash)] == [IMAGE_URLS[0]]
    for url in IMAGE_URLS[1:]:
        put(store, JPEGS[1], url)
        assert store.record_url(stored.content_hash, url=url, client_name="spider") is not None
    assert {e.url for e in store.urls(stored.content_hash)} == set(IMAGE_URLS)


def test_orphan_blobs_respect_the_grace_period(store):
    kept = put(store, JPEGS[0], "https://a.example/1.jpg").entry
    old_orphan = blob_key(content_hash(b"old"), ".jpg")
    young_orphan = blob_key(content_hash(b"young"), ".jpg")
    store.blobs.put(old_orphan, b"old")
    store.blobs.put(young_orphan, b"young")
    hour_ago = datetime.now().timestamp() - 3600
    for key in (old_orphan, kept.path):
        os.utime(store.blobs.describe(key), (hour_ago, hour_ago))
    assert store.orphan_blobs(grace_seconds=600) == [(old_orphan, 3)]
    assert sorted(store.orphan_blobs(grace_seconds=0)) == sorted([(old_orphan, 3), (young_orphan, 5)])


def test_missing_blobs_and_expired_images(store):
    gone = put(store, JPEGS[0], "https://a.example/1.jpg", lookup_time=T0).entry
    fresh = put(store, JPEGS[1], "https://a.example/2.jpg", lookup_time=T0 + timedelta(days=30)).entry
    os.unlink(store.blobs.describe(gone.path))
    assert [e.content_hash for e in store.missing_blobs()] == [gone.content_hash]
    assert [e.content_hash for e in store.expired(T0 + timedelta(days=1))] == [gone.content_hash]
    assert fresh.content_hash not in {e.content_hash for e in store.expired(T0 + timedelta(days=1))}


def test_many_processes_share_one_store(db_url, tmp_path):
    """Overlapping images from 4 processes at once: one row and one blob per content, every URL."""
    files = str(tmp_path / "files")
    images = distinct_jpegs(6)
    per_process = [
        [("put", images[(j + i) % len(images)], f"https://p{i}.example/{j}") for j in range(len(images))]
        for i in range(4)
    ]
    run_processes(db_url, files, per_process)
    store = SqlStore(db_url, files)
    try:
        assert counts(store) == (6, 24, 6)
        for data in images:
            assert store.get_bytes(content_hash(data)) == data
            assert len(store.urls(content_hash(data))) == 4
    finally:
        store.close()


def test_similar_sees_other_processes_changes_after_building_its_index(store, tmp_path):
    mine = put(store, JPEGS[0], "https://a.example/mine.jpg").entry
    theirs_data = JPEGS[1]
    theirs = Inspector().inspect(theirs_data)
    assert [e.content_hash for e in store.similar(mine.perceptual_hash, 0)] == [mine.content_hash]  # index built
    assert store.similar(theirs.perceptual_hash, 0) == []
    run_processes(store.url, str(tmp_path / "files"), [[("put", theirs_data, "https://b.example/theirs.jpg")]])
    assert [e.content_hash for e in store.similar(theirs.perceptual_hash, 0)] == [theirs.content_hash]
    run_processes(store.url, str(tmp_path / "files"), [[("delete", mine.content_hash)]])
    assert store.similar(mine.perceptual_hash, 0) == []


# -- the store against a model: a dict of what should be there ----------------------------------

POOL = [*JPEGS, *list(near_duplicates(distinct_images(4)[0]).values())[:2], solid((40, 40, 40))]
URLS = ["https://a.example/x", "https://a.example/y", "https://b.example/x"]
BUCKETS = ["", "b"]
item, url_, bucket_ = st.integers(0, len(POOL) - 1), st.sampled_from(URLS), st.sampled_from(BUCKETS)
STORE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), item, url_, bucket_),
        st.tuples(st.just("delete"), item, bucket_),
        st.tuples(st.just("lookup"), url_, bucket_),
        st.tuples(st.just("similar"), item, st.sampled_from([0, 4, 10, 32]), bucket_),
    ),
    max_size=20,
)


@functools.cache
def pool_infos() -> list:
    return [Inspector().inspect(data) for data in POOL]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STORE_OPS)
def test_store_behaves_like_a_dict_model(ops):
    """Random put/delete/lookup/similar sequences on real photos agree with a plain model."""
    infos = pool_infos()
    images: dict[tuple[str, str], int] = {}  # (bucket, content hash) -> pool index
    seen: dict[tuple[str, str], dict[str, int]] = {}  # (bucket, url) -> content hash -> step
    with tempfile.TemporaryDirectory() as tmp:
        store = SqlStore(f"sqlite:///{tmp}/model.sqlite3", f"{tmp}/files")
        try:
            for step, (op, *args) in enumerate(ops):
                if op == "put":
                    i, url, bucket = args
                    chash = infos[i].content_hash
                    result = store.put(
                        POOL[i],
                        url=url,
                        client_name="m",
                        bucket=bucket,
                        info=infos[i],
                        lookup_time=T0 + timedelta(seconds=step),
                    )
                    assert result.created == ((bucket, chash) not in images)
                    images[bucket, chash] = i
                    seen.setdefault((bucket, url), {})[chash] = step
                elif op == "delete":
                    i, bucket = args
                    chash = infos[i].content_hash
                    assert store.delete(chash, bucket) == ((bucket, chash) in images)
                    images.pop((bucket, chash), None)
                    for (b, _url), versions in seen.items():
                        if b == bucket:  # the image's URL records go with it
                            versions.pop(chash, None)
                    assert store.blobs.exists(blob_key(chash, infos[i].extension)) == any(
                        ch == chash for _, ch in images
                    )
                elif op == "lookup":
                    url, bucket = args
                    versions = {ch: s for ch, s in seen.get((bucket, url), {}).items() if (bucket, ch) in images}
                    found = store.lookup(url, bucket)
                    assert (found and found.content_hash) == (max(versions, key=versions.get) if versions else None)
                else:
                    i, distance, bucket = args
                    query = infos[i].perceptual_hash
                    expected = sorted(
                        (hamming(query, infos[j].perceptual_hash), ch)
                        for (b, ch), j in images.items()
                        if b == bucket and not infos[j].flat and hamming(query, infos[j].perceptual_hash) <= distance
                    )
                    found = store.similar(query, distance, bucket)
                    assert sorted((e.hamming_distance, e.content_hash) for e in found) == expected
                    assert [e.hamming_distance for e in found] == sorted(e.hamming_distance for e in found)
        finally:
            store.close()


def test_similar_survives_a_dropped_postgres_connection(postgres_url, tmp_path):
    """similar()'s connections skip the ping for speed, so a connection the server killed is retried."""
    store = SqlStore(postgres_url, str(tmp_path / "files"))
    try:
        entry = put(store, JPEGS[0], "https://a.example/1.jpg").entry
        with store._reader.connect() as conn:  # the connection similar() will be handed next
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        with store.engine.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
        assert [e.content_hash for e in store.similar(entry.perceptual_hash, 0)] == [entry.content_hash]
    finally:
        store.close()


def test_an_in_memory_sqlite_store_works_in_one_thread(tmp_path):
    """``sqlite://`` is one connection's database: reads and writes must share it."""
    store = SqlStore("sqlite://", str(tmp_path / "blobs"))
    try:
        stored = put(store, JPEGS[0], "https://a.example/x.jpg").entry
        assert store.lookup("https://a.example/x.jpg") == stored
        assert store.get_bytes(stored.content_hash) == JPEGS[0]
        assert [e.content_hash for e in store.similar(stored.perceptual_hash, 0)] == [stored.content_hash]
        assert not put(store, JPEGS[0], "https://b.example/x.jpg").created
    finally:
        store.close()


def test_a_failed_write_keeps_its_own_error_and_leaves_the_store_usable(store):
    """Even when the database has already ended the transaction (the ROLLBACK then fails)."""

    class Boom(Exception):
        pass

    def fail_after_sqlite_rolled_back() -> None:
        with store._write() as conn:
            conn.exec_driver_sql("ROLLBACK")  # what SQLite does itself after some errors
            raise Boom()

    with pytest.raises(Boom):
        fail_after_sqlite_rolled_back()
    assert put(store, JPEGS[0], "https://a.example/after.jpg").created


def test_storing_and_deleting_one_image_at_once_never_fails(db_url, tmp_path):
    """Uploads and deletes of the same image raced into AssertionError (SQLite) and foreign-key
    errors (PostgreSQL). Either outcome is fine, an error is not; rows never lose their bytes."""
    photo = distinct_jpegs(1)[0]
    chash = content_hash(photo)
    store = SqlStore(db_url, str(tmp_path / "files"))
    errors: list[BaseException] = []
    stop = threading.Event()

    def putting(n: int) -> None:
        try:
            for i in range(60):
                result = store.put(photo, url=f"https://race.example/{n}/{i}.jpg", client_name=f"c{n}")
                assert result.entry.content_hash == chash
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def deleting() -> None:
        try:
            while not stop.is_set():
                store.delete(chash)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    try:
        threads = [threading.Thread(target=putting, args=(n,)) for n in range(3)]
        killer = threading.Thread(target=deleting)
        killer.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        killer.join()
        assert errors == []
        store.put(photo, url="https://race.example/last.jpg", client_name="c")
        assert store.get_bytes(chash) == photo  # the row that stands has its bytes
        assert store.record_url("0" * 64, url="https://race.example/x.jpg", client_name="c") is None
    finally:
        store.close()


@pytest.mark.parametrize(
    "kind", [pytest.param("postgresql", marks=pytest.mark.postgres), pytest.param("mysql", marks=pytest.mark.mysql)]
)
def test_a_database_that_goes_away_is_a_store_error_and_the_store_recovers(tmp_path, kind, request):
    """A reset connection and a refused one came out as the driver's own errors, which no caller
    handled (the crawl's images vanished as tracebacks); reads, writes and the pools recover."""
    from sqlalchemy.engine import make_url

    from scrapy_imgcache.errors import StoreError
    from tests.helpers import TcpProxy

    url = make_url(request.getfixturevalue("postgres_url" if kind == "postgresql" else "mysql_url"))
    proxy = TcpProxy(url.port or 0).start()
    store = SqlStore(url.set(port=proxy.port).render_as_string(hide_password=False), str(tmp_path / "files"))
    try:
        first = put(store, JPEGS[0], "https://a.example/1.jpg")
        assert store.lookup("https://a.example/1.jpg") is not None  # a pooled connection of each kind
        proxy.down()
        for call in (
            lambda: store.lookup("https://a.example/1.jpg"),
            lambda: store.get_bytes(first.entry.content_hash),
            lambda: put(store, JPEGS[1], "https://a.example/2.jpg"),
            lambda: store.record_url(first.entry.content_hash, url="https://a.example/3.jpg", client_name="s"),
            store.usage,  # the store's parts (reports.py, gc.py) translate too
            lambda: store.collect_garbage(grace_seconds=3600),
        ):
            with pytest.raises(StoreError, match="the database failed: "):
                call()
        assert proxy.refused > 0
        proxy.up()
        assert store.lookup("https://a.example/1.jpg").content_hash == first.entry.content_hash
        assert put(store, JPEGS[1], "https://a.example/2.jpg").created
        assert store.get_bytes(first.entry.content_hash) == JPEGS[0]
    finally:
        store.close()
        proxy.stop()
