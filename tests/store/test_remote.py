"""RemoteStore against a real imgcache-server process, and against services that are down or stuck."""

from __future__ import annotations

import http.server
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone

import httpx
import pytest
from PIL import ImageOps

from scrapy_imgcache.config import ImgCacheConfig
from scrapy_imgcache.errors import EmptyImage, NotAnImage, StoreError, TooManyPixels
from scrapy_imgcache.hashing import Inspector, content_hash, hamming
from scrapy_imgcache.server.process import LiveServer, free_port
from scrapy_imgcache.store import open_store
from scrapy_imgcache.store.base import NearQuery
from scrapy_imgcache.store.remote import RemoteStore
from scrapy_imgcache.store.sql import SqlStore
from tests.forked import imgcache_server
from tests.helpers import (
    bomb_png,
    distinct_images,
    encode,
    fresh_jpegs,
    fresh_url,
    near_duplicates,
    noise_bytes,
    photo,
)

WRITE_KEY = "w" * 32
READ_KEY = "r" * 32


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("remote")
    with imgcache_server(f"sqlite:///{workdir / 'cache.sqlite3'}", workdir) as server:
        yield server


@pytest.fixture
def remote(live) -> Iterator[RemoteStore]:
    store = RemoteStore(live.url, timeout=10, retries=1)
    yield store
    store.close()


@pytest.fixture
def bucket() -> str:
    return f"r-{uuid.uuid4().hex[:10]}"


def test_put_get_lookup_delete_round_trip(remote, bucket, live):
    (data,) = fresh_jpegs(1)
    url, other = fresh_url(), fresh_url()
    when = datetime(2024, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    first = remote.put(data, url=url, client_name="s1", bucket=bucket, lookup_time=when, filename="a.jpg", etag='"v1"')
    assert first.created
    entry = first.entry
    assert entry.content_hash == content_hash(data) and entry.bucket == bucket
    assert entry.lookup_time == when and entry.original_filename == "a.jpg" and entry.etag == '"v1"'
    assert entry.width == 160 and entry.content_type == "image/jpeg"
    again = remote.put(data, url=other, client_name="s2", bucket=bucket)
    assert not again.created and again.entry.url == other
    assert remote.get_bytes(entry.content_hash, bucket) == data
    assert remote.get_meta(entry.content_hash, bucket).perceptual_hash == entry.perceptual_hash
    assert remote.lookup(url, bucket).etag == '"v1"'
    assert {e.url for e in remote.search(url.split("/")[3], bucket)} == {url}
    assert {e.url for e in remote.urls(entry.content_hash, bucket)} == {url, other}
    assert remote.delete(entry.content_hash, bucket) is True
    assert remote.delete(entry.content_hash, bucket) is False
    assert remote.get_meta(entry.content_hash, bucket) is None
    assert remote.get_bytes(entry.content_hash, bucket) is None
    assert remote.lookup(url, bucket) is None and remote.lookup(other, bucket) is None
    assert remote.urls(entry.content_hash, bucket) == []


def test_malformed_hashes_name_nothing(remote):
    assert remote.get_meta("../../etc/passwd") is None
    assert remote.get_bytes("ABC") is None
    assert remote.delete("x" * 64) is False
    assert remote.urls("") == []


def sent(remote: RemoteStore) -> list[httpx.Request]:
    """Every request ``remote`` sends from now on."""
    requests: list[httpx.Request] = []
    remote._http.event_hooks["request"].append(requests.append)
    return requests


def test_record_url_records_a_sighting_in_one_small_request(remote, bucket):
    """It once downloaded the image and uploaded it again: two downloads and an upload."""
    (data,) = fresh_jpegs(1)
    entry = remote.put(data, url=fresh_url(), client_name="s1", bucket=bucket, filename="orig.jpg").entry
    new_url = fresh_url("seen-again")
    requests = sent(remote)
    recorded = remote.record_url(
        entry.content_hash,
        url=new_url,
        client_name="s2",
        bucket=bucket,
        etag='"e"',
        duplicate="exact",
        saved_bytes=len(data),
    )
    assert [(r.method, r.url.path) for r in requests] == [("POST", f"/images/urls/{entry.content_hash}")]
    assert len(requests[0].read()) < 1000  # the form, not the image
    assert recorded is not None
    assert recorded.url == new_url and recorded.content_hash == entry.content_hash and recorded.etag == '"e"'
    assert remote.lookup(new_url, bucket).content_hash == entry.content_hash
    assert len(remote.urls(entry.content_hash, bucket)) == 2
    usage = {u.bucket: u for u in remote.usage()}[bucket]
    assert (usage.images, usage.urls, usage.exact_duplicates, usage.exact_bytes_saved) == (1, 2, 1, len(data))
    assert remote.record_url("0" * 64, url=fresh_url(), client_name="s", bucket=bucket) is None


def test_a_cache_hit_is_one_request(remote, bucket):
    """The hit path: entry and bytes in one answer; the sighting of another client recorded there."""
    (data,) = fresh_jpegs(1)
    url = fresh_url()
    remote.put(data, url=url, client_name="spider-a", bucket=bucket)
    requests = sent(remote)
    answer = remote.answer(
        url, bucket=bucket, client_name="spider-b", fresh_since=datetime(2000, 1, 1, tzinfo=timezone.utc)
    )
    assert len(requests) == 1
    assert answer is not None and answer.body == data and answer.entry.content_hash == content_hash(data)
    assert sorted(e.client_name for e in remote.urls(content_hash(data), bucket)) == ["spider-a", "spider-b"]
    stale = remote.answer(url, bucket=bucket, client_name="spider-b", fresh_since=datetime.now(timezone.utc))
    assert stale is not None and stale.body is None and stale.entry.url == url
    assert remote.answer(fresh_url(), bucket=bucket, client_name="s", fresh_since=stale.entry.lookup_time) is None


def test_listing_bytes_present_and_garbage_collection_over_http(remote, bucket, live):
    photos = fresh_jpegs(3)
    entries = [remote.put(p, url=fresh_url(), client_name="s", bucket=bucket).entry for p in photos]
    assert [e.content_hash for e in remote.images(bucket)] == [e.content_hash for e in entries]
    assert all(remote.has_bytes(e) for e in entries)
    (live.files / entries[1].path).unlink()  # damage: a row without its bytes
    assert not remote.has_bytes(entries[1])
    report = remote.collect_garbage(grace_seconds=3600, dry_run=True)
    assert [e.content_hash for e in report.missing] == [entries[1].content_hash] and report.dry_run
    assert remote.get_meta(entries[1].content_hash, bucket) is not None
    report = remote.collect_garbage(grace_seconds=3600)
    assert [e.content_hash for e in report.missing] == [entries[1].content_hash] and not report.dry_run
    assert remote.get_meta(entries[1].content_hash, bucket) is None


def test_similar_nearest_first(remote, bucket):
    original = distinct_images(1, size=(320, 240))[0]
    stored = [
        remote.put(d, url=fresh_url(n), client_name="s", bucket=bucket).entry
        for n, d in near_duplicates(original).items()
    ]
    base = remote.put(encode(original, "PNG"), url=fresh_url(), client_name="s", bucket=bucket).entry
    hits = remote.similar(base.perceptual_hash, 10, bucket)
    assert [h.hamming_distance for h in hits] == sorted(h.hamming_distance for h in hits)
    assert hits[0].hamming_distance == 0
    assert {e.content_hash for e in stored} <= {h.content_hash for h in hits}
    assert len(remote.similar(base.perceptual_hash, 10, bucket, limit=2)) == 2


def test_near_duplicates_are_found_and_verified_without_sending_the_image(remote, bucket, live):
    img = photo("chelsea").convert("RGB")
    original = remote.put(encode(img), url=fresh_url(), client_name="s", bucket=bucket).entry
    mirror = encode(ImageOps.mirror(img))
    info = Inspector().inspect(mirror)
    (hit,) = remote.near(NearQuery.of(info), 8, bucket)
    assert (hit.content_hash, hit.match) == (original.content_hash, "mirrored")
    # the pHashes' distance, and the found hash's on its own (issue 19 item 6)
    assert hit.hamming_distance == hamming(info.perceptual_hash, original.perceptual_hash) > 8 >= hit.match_distance
    (itself,) = remote.near(NearQuery.of(Inspector().inspect(encode(img))), 8, bucket)
    assert (itself.content_hash, itself.match) == (original.content_hash, "identical")  # issue 19 item 16
    stored = remote.put(
        mirror, url=fresh_url(), client_name="s", bucket=bucket,
        similar_to=hit.content_hash, similar_distance=hit.hamming_distance, similar_match=hit.match,
    ).entry  # fmt: skip
    assert stored.similar_match == "mirrored"
    near = remote.near_cached(original.content_hash, 8, bucket)
    assert near is not None and [(e.content_hash, e.match) for e in near] == [(stored.content_hash, "mirrored")]
    assert remote.near_cached("0" * 64, 8, bucket) is None
    other = Inspector().inspect(encode(photo("rocket").convert("RGB")))
    assert remote.near(NearQuery.of(other), 8, bucket) == []
    query = {**NearQuery.of(info).to_json(), "bucket": bucket}
    for bad in (
        {"signature": "***"}, {"query_hashes": [["c80", "not hex"]]}, {"perceptual_hash": "12"}, {"content_hash": "x"},
    ):  # fmt: skip
        resp = httpx.post(f"{live.url}/images/near", json={**query, **bad})
        assert resp.status_code == 422, (bad, resp.text)


@pytest.mark.parametrize(
    ("data", "error"),
    [(b"", EmptyImage), (noise_bytes(), NotAnImage), (bomb_png(), TooManyPixels)],
    ids=["empty", "noise", "bomb"],
)
def test_refused_images_raise_the_local_typed_errors(remote, bucket, data, error):
    with pytest.raises(error):
        remote.put(data, url=fresh_url(), client_name="s", bucket=bucket)
    assert remote.search("example.com", bucket) == []


def test_bad_bucket_is_refused_before_sending(remote):
    with pytest.raises(ValueError, match="bucket"):
        remote.put(b"x", url=fresh_url(), client_name="s", bucket="no/slash")


def test_api_keys(tmp_path):
    db = f"sqlite:///{tmp_path / 'c.sqlite3'}"
    with imgcache_server(db, tmp_path, "--write-key", WRITE_KEY, "--read-key", READ_KEY) as server:
        (data,) = fresh_jpegs(1)
        writer = RemoteStore(server.url, api_key=WRITE_KEY)
        reader = RemoteStore(server.url, api_key=READ_KEY)
        anonymous = RemoteStore(server.url)
        try:
            writer.check_access(write=True)
            reader.check_access(write=False)
            with pytest.raises(StoreError, match="may read but not store images"):
                reader.check_access(write=True)
            with pytest.raises(StoreError, match=r"refused GET /auth/whoami: 401.*IMGCACHE_API_KEY"):
                anonymous.check_access(write=False)
            entry = writer.put(data, url=fresh_url(), client_name="s").entry
            assert reader.get_bytes(entry.content_hash) == data
            with pytest.raises(StoreError, match=r"403.*IMGCACHE_API_KEY"):
                reader.put(data, url=fresh_url(), client_name="s")
            with pytest.raises(StoreError, match="401"):
                anonymous.get_meta(entry.content_hash)
        finally:
            for s in (writer, reader, anonymous):
                s.close()


def test_service_down_is_a_quick_store_error():
    store = RemoteStore(f"http://127.0.0.1:{free_port()}", timeout=2, retries=2, backoff=0.05)
    start = time.monotonic()
    with pytest.raises(StoreError, match=r"cannot connect.*after 3 attempt"):
        store.get_meta("0" * 64)
    # refused connections fail at once: a bound far above it, that no load on the machine reaches
    assert time.monotonic() - start < 30
    assert store.health() is False


def test_stuck_service_times_out():
    """A service that accepts the connection and never answers: a StoreError, not a hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        store = RemoteStore(f"http://127.0.0.1:{port}", timeout=0.5, retries=1, backoff=0.05)
        start = time.monotonic()
        with pytest.raises(StoreError, match=r"timed out.*after 2 attempt"):
            store.put(b"x", url=fresh_url(), client_name="s")
        assert time.monotonic() - start < 30  # 2 x 0.5 s, then an error; without timeouts, for ever
    finally:
        listener.close()


class _Flaky(http.server.BaseHTTPRequestHandler):
    """Answers 503 to the first ``failures`` requests, then a 404 (an image that is not there)."""

    failures = 0
    seen = 0

    def do_GET(self) -> None:
        type(self).seen += 1
        status = 503 if type(self).seen <= type(self).failures else 404
        body = b'{"error": "x", "detail": "flaky"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_service_that_is_not_an_imgcache_service_is_refused_at_open():
    """Anything that answers HTTP is not a cache: /health must say so."""
    handler = type("Flaky", (_Flaky,), {"failures": 0, "seen": 0})  # a 404 for everything
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(StoreError, match=f"{url} is not an imgcache service: GET /health answered 404"):
            open_store(ImgCacheConfig.from_settings({"IMGCACHE_URL": url}))
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("failures", "retries", "succeeds"), [(2, 2, True), (3, 2, False)])
def test_5xx_is_retried_a_bounded_number_of_times(failures, retries, succeeds):
    handler = type("Flaky", (_Flaky,), {"failures": failures, "seen": 0})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        store = RemoteStore(f"http://127.0.0.1:{server.server_port}", retries=retries, backoff=0.01)
        if succeeds:
            assert store.get_meta("0" * 64) is None
        else:
            with pytest.raises(StoreError, match="answered 503: flaky"):
                store.get_meta("0" * 64)
        assert handler.seen == min(failures + 1, retries + 1)
    finally:
        server.shutdown()
        server.server_close()


def test_settings_open_a_remote_store(live):
    config = ImgCacheConfig.from_settings(
        {"IMGCACHE_URL": live.url, "IMGCACHE_API_KEY": WRITE_KEY, "IMGCACHE_TIMEOUT": 3, "IMGCACHE_RETRIES": 4}
    )
    store = open_store(config)
    try:
        assert isinstance(store, RemoteStore)
        assert store.retries == 4 and store._http.timeout.read == 3
        assert store._http.headers["X-API-Key"] == WRITE_KEY
        assert store.health() is True
    finally:
        store.close()


def test_remote_and_local_views_agree(live, tmp_path, bucket):
    """What RemoteStore returns is what the service's own database holds."""
    (data,) = fresh_jpegs(1)
    remote = RemoteStore(live.url)
    try:
        entry = remote.put(data, url=fresh_url(), client_name="s", bucket=bucket).entry
    finally:
        remote.close()
    db = next(live.files.parent.glob("cache.sqlite3"))
    local = SqlStore(f"sqlite:///{db}", str(live.files))
    try:
        mine = local.get_meta(entry.content_hash, bucket)
        assert mine is not None
        assert mine.to_json() == {**entry.to_json()}
    finally:
        local.close()


def test_input_the_service_refuses_is_a_store_error(remote, bucket):
    (data,) = fresh_jpegs(1)
    with pytest.raises(StoreError, match=r"answered 422: body\.url: String should have at most 8192"):
        remote.put(data, url="https://e.example/" + "a" * 9000, client_name="s", bucket=bucket)
    with pytest.raises(StoreError, match="answered 422"):
        remote.lookup("a\x00b", bucket)
    assert remote.search("e.example", bucket) == []


def test_every_typed_refusal_the_server_can_name_maps_to_its_local_class():
    """``ImageTooSmall`` once lived outside errors.py, so a refusal of that reason came back untyped."""
    import inspect

    from scrapy_imgcache import errors
    from scrapy_imgcache.store.remote import INVALID_BY_REASON

    refusals = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.InvalidImage)]
    concrete = [c for c in refusals if c is not errors.InvalidImage]
    assert errors.ImageTooSmall in concrete
    assert {c.reason: c for c in concrete}.items() <= INVALID_BY_REASON.items()
