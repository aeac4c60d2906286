"""The published client (dwilson-imgcache-client 0.3.0, unmodified) against a real server.

Every call of its README and code, in the default bucket and in a named one, over SQLite,
PostgreSQL and MariaDB: status codes, the entry schema, nearest-first similarity, deletes that
take bytes and URL records with them, and serve_url answering the image to a browser.
"""

from __future__ import annotations

import io
import uuid
from datetime import datetime, timezone

import httpx
import imagehash
import pytest
from PIL import Image

from scrapy_imgcache.hashing import content_hash
from tests.helpers import distinct_images, fresh_jpegs, fresh_url, near_duplicates

ENTRY_FIELDS = {
    "url": str,
    "content_hash": str,
    "content_type": str,
    "file_size_bytes": int,
    "original_filename": (str, type(None)),
    "width": (int, type(None)),
    "height": (int, type(None)),
    "perceptual_hash": (str, type(None)),
    "client_name": str,
    "lookup_time": str,
    "created_at": str,
    "bucket": str,
}


@pytest.fixture(params=["", "named"])
def bucket(request) -> str:
    return "" if request.param == "" else f"b-{uuid.uuid4().hex[:10]}"


def check_entry(entry: dict, data: bytes, url: str, bucket: str, client_name: str = "spider") -> None:
    for name, kind in ENTRY_FIELDS.items():
        assert name in entry, name
        assert isinstance(entry[name], kind), (name, entry[name])
    img = Image.open(io.BytesIO(data))
    assert entry["url"] == url
    assert entry["content_hash"] == content_hash(data)
    assert entry["content_type"] == "image/jpeg"
    assert entry["file_size_bytes"] == len(data)
    assert (entry["width"], entry["height"]) == img.size
    assert entry["perceptual_hash"] == str(imagehash.phash(img))
    assert entry["client_name"] == client_name
    assert entry["bucket"] == bucket
    datetime.fromisoformat(entry["lookup_time"])
    datetime.fromisoformat(entry["created_at"])


def test_health(client):
    assert client.health() == {"status": "ok"}


def test_store_new_then_identical(client, statuses, bucket):
    (data,) = fresh_jpegs(1)
    first, second = fresh_url("a"), fresh_url("b")
    when = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    entry = client.store(first, data, "spider", bucket, lookup_time=when, filename="photo.jpg")
    assert statuses[-1] == 201
    check_entry(entry, data, first, bucket)
    assert entry["original_filename"] == "photo.jpg"
    assert datetime.fromisoformat(entry["lookup_time"]) == when

    again = client.store(second, data, "other-spider", bucket)
    assert statuses[-1] == 200
    assert again["content_hash"] == entry["content_hash"]
    assert again["url"] == second and again["client_name"] == "other-spider"
    # the new URL is recorded too
    assert client.lookup(second, bucket=bucket)["content_hash"] == entry["content_hash"]
    assert client.lookup(first, bucket=bucket)["url"] == first


def test_filename_defaults_to_the_clients_placeholder(client, bucket):
    (data,) = fresh_jpegs(1)
    entry = client.store(fresh_url(), data, "spider", bucket)
    assert entry["original_filename"] == "image"  # the client sends "image" when given none


def test_get_bytes_and_meta(client, bucket):
    (data,) = fresh_jpegs(1)
    url = fresh_url()
    entry = client.store(url, data, "spider", bucket)
    assert client.get_bytes(entry["content_hash"], bucket) == data
    meta = client.get_meta(entry["content_hash"], bucket)
    check_entry(meta, data, url, bucket)


def test_missing_is_404_and_none(client, statuses, bucket):
    missing = content_hash(b"never stored " + uuid.uuid4().bytes)
    assert client.get_meta(missing, bucket) is None
    assert statuses[-1] == 404
    assert client.lookup(fresh_url(), bucket=bucket or None) is None
    assert statuses[-1] == 404
    with pytest.raises(httpx.HTTPStatusError) as err:
        client.get_bytes(missing, bucket)
    assert err.value.response.status_code == 404
    with pytest.raises(httpx.HTTPStatusError) as err:
        client.delete(missing, bucket)
    assert err.value.response.status_code == 404
    assert client.search(f"nothing-{uuid.uuid4().hex}", bucket=bucket or None) == []
    assert statuses[-1] == 200


def test_lookup_gives_the_most_recent_entry(client, bucket):
    old, new = fresh_jpegs(2)
    url = fresh_url()
    client.store(url, old, "spider", bucket, lookup_time=datetime(2023, 1, 1, tzinfo=timezone.utc))
    client.store(url, new, "spider", bucket, lookup_time=datetime(2024, 1, 1, tzinfo=timezone.utc))
    assert client.lookup(url, bucket=bucket or None)["content_hash"] == content_hash(new)


def test_search_by_substring(client, bucket):
    token = uuid.uuid4().hex
    images = fresh_jpegs(3)
    urls = [f"https://shop.example/{token}/products/{i}.jpg" for i in range(3)]
    for url, data in zip(urls, images, strict=True):
        client.store(url, data, "spider", bucket)
    client.store(f"https://shop.example/{token}/other/x.jpg", fresh_jpegs(1)[0], "spider", bucket)
    found = client.search(url_contains=f"{token}/products", bucket=bucket or None)
    assert sorted(e["url"] for e in found) == sorted(urls)
    assert {e["content_hash"] for e in found} == {content_hash(d) for d in images}
    # a LIKE wildcard in the substring is literal
    assert client.search(url_contains=f"{token}/%", bucket=bucket or None) == []


def test_omitted_bucket_means_the_default_bucket(client):
    (data,) = fresh_jpegs(1)
    url = fresh_url()
    named = f"b-{uuid.uuid4().hex[:10]}"
    entry = client.store(url, data, "spider", named)
    assert client.lookup(url) is None
    assert client.search(url) == []
    assert entry["content_hash"] not in {e["content_hash"] for e in client.similar(entry["perceptual_hash"], 0)}
    assert client.lookup(url, bucket=named)["bucket"] == named
    assert client.get_meta(entry["content_hash"]) is None


def test_buckets_are_independent(client, statuses, live):
    (data,) = fresh_jpegs(1)
    a, b = (f"b-{uuid.uuid4().hex[:10]}" for _ in range(2))
    client.store(fresh_url(), data, "spider", a)
    assert statuses[-1] == 201
    client.store(fresh_url(), data, "spider", b)
    assert statuses[-1] == 201  # same bytes, another bucket: a new entry
    client.delete(content_hash(data), a)
    assert client.get_meta(content_hash(data), a) is None
    assert client.get_bytes(content_hash(data), b) == data  # bytes kept for the other bucket


def test_similar_nearest_first(client, bucket):
    original = distinct_images(1, size=(320, 240))[0]
    variants = near_duplicates(original)
    unrelated = fresh_jpegs(1)[0]
    token = uuid.uuid4().hex
    stored = {}
    for name, data in {"original": variants["png"], **variants}.items():
        stored[name] = client.store(f"https://e.example/{token}/{name}", data, "spider", bucket)
    other = client.store(f"https://e.example/{token}/unrelated", unrelated, "spider", bucket)
    probe = stored["original"]["perceptual_hash"]
    hits = client.similar(perceptual_hash=probe, max_hamming_distance=10, bucket=bucket or None)
    distances = [h["hamming_distance"] for h in hits]
    assert distances == sorted(distances) and distances[0] == 0
    hashes = {h["content_hash"] for h in hits}
    assert {e["content_hash"] for e in stored.values()} <= hashes
    assert other["content_hash"] not in hashes
    for hit in hits:
        assert set(ENTRY_FIELDS) <= set(hit)
        assert bin(int(hit["perceptual_hash"], 16) ^ int(probe, 16)).count("1") == hit["hamming_distance"]
    exact = client.similar(perceptual_hash=probe, max_hamming_distance=0, bucket=bucket or None)
    assert exact and all(h["hamming_distance"] == 0 for h in exact)


def test_delete_removes_bytes_and_every_url(client, statuses, live, bucket):
    (data,) = fresh_jpegs(1)
    token = uuid.uuid4().hex
    urls = [f"https://d.example/{token}/{i}.jpg" for i in range(3)]
    for url in urls:
        entry = client.store(url, data, f"spider{url[-5]}", bucket)
    blobs = list(live.files.rglob(f"{entry['content_hash']}*"))
    assert len(blobs) == 1
    assert client.delete(entry["content_hash"], bucket) is None
    assert statuses[-1] == 204
    assert client.get_meta(entry["content_hash"], bucket) is None
    for url in urls:
        assert client.lookup(url, bucket=bucket or None) is None
    assert client.search(token, bucket=bucket or None) == []
    assert not blobs[0].exists()
    # storing it again is new again
    client.store(urls[0], data, "spider", bucket)
    assert statuses[-1] == 201


def test_serve_url_answers_the_image(client, bucket):
    (data,) = fresh_jpegs(1)
    entry = client.store(fresh_url(), data, "spider", bucket)
    url = client.serve_url(entry["content_hash"], bucket)
    assert url.startswith(client._base + "/serve/")
    resp = httpx.get(url)
    assert resp.status_code == 200
    assert resp.content == data
    assert resp.headers["content-type"] == "image/jpeg"
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in resp.headers["content-security-policy"]
    assert "immutable" in resp.headers["cache-control"]
    etag = resp.headers["etag"]
    assert etag == f'"{entry["content_hash"]}"'
    again = httpx.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    assert httpx.get(url, headers={"If-None-Match": '"0000"'}).status_code == 200
    raw = httpx.get(client._base + f"/images/{entry['content_hash']}", params={"bucket": bucket})
    assert raw.headers["etag"] == etag and raw.headers["x-content-type-options"] == "nosniff"
    if bucket:  # the image is not served from the default bucket
        assert httpx.get(client.serve_url(entry["content_hash"])).status_code == 404
