"""Bad input against a real server: a clear JSON 4xx, never a 500, and nothing stored."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scrapy_imgcache.server.process import LiveServer
from tests.forked import imgcache_server
from tests.helpers import blob_files, bomb_png, fresh_jpegs, fresh_url, noise_bytes
from tests.store.test_sql import IMAGE_URLS, NOT_IMAGE_URLS

LIMIT = 200_000
GOOD_HASH = "a" * 64


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Iterator[LiveServer]:
    """A server with a small upload cap and a private, watched temporary directory."""
    workdir = tmp_path_factory.mktemp("guarded")
    tmp = workdir / "tmp"
    tmp.mkdir()
    db = f"sqlite:///{workdir / 'cache.sqlite3'}"
    with imgcache_server(db, workdir, "--max-upload-bytes", str(LIMIT), env={"TMPDIR": str(tmp)}) as server:
        yield server


@pytest.fixture
def http(guarded) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=guarded.url, timeout=30.0) as c:
        yield c


def nothing_stored(http: httpx.Client, guarded: LiveServer) -> None:
    assert http.get("/usage").json() == []
    assert blob_files(guarded.files) == []
    tmp = guarded.files.parent / "tmp"
    assert list(tmp.iterdir()) == []
    # nor held open (anonymous spool files never show in the folder)
    fds = Path(f"/proc/{guarded.process.pid}/fd")
    assert not [p for p in fds.iterdir() if str(tmp) in _target(p)]


def _target(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:
        return ""


def upload(http: httpx.Client, data: bytes, **fields: str) -> httpx.Response:
    form = {"url": fresh_url(), "client_name": "spider", **fields}
    return http.post("/images", data=form, files={"file": ("x.jpg", data)})


def assert_error(resp: httpx.Response, status: int | tuple[int, ...], reason: str | None = None) -> dict:
    assert resp.status_code in ((status,) if isinstance(status, int) else status), resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["error"] and body["detail"]
    if reason:
        assert body["error"] == reason
    return body


@pytest.mark.parametrize(
    ("data", "status", "reason"),
    [
        (b"", 422, "empty"),
        (noise_bytes(4096), 415, "not_an_image"),
        (b"%PDF-1.4\n" + noise_bytes(2000), 415, None),
        (fresh_jpegs(1)[0][:1500], 422, "truncated"),
        (bomb_png(), 413, "too_many_pixels"),
    ],
    ids=["empty", "noise", "pdf", "truncated-jpeg", "decompression-bomb"],
)
def test_refused_images(http, guarded, data, status, reason):
    assert_error(upload(http, data), status, reason)
    nothing_stored(http, guarded)


def test_upload_over_the_cap_declared(http, guarded):
    data = os.urandom(LIMIT + 100_000)
    assert_error(upload(http, data), 413, "too_many_bytes")
    nothing_stored(http, guarded)


def test_upload_over_the_cap_streamed_without_length(http, guarded):
    """A chunked body (no Content-Length) is counted as it streams and cut off at the cap."""
    chunks = [b"x" * 65536] * 64  # 4 MiB, far over the cap

    def body() -> Iterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
        yield from chunks

    resp = http.post("/images", content=body(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_error(resp, 413, "too_many_bytes")
    nothing_stored(http, guarded)


def test_image_over_the_cap_inside_the_form_slack(http, guarded):
    """Bytes under the body cap but over the image cap: refused by size, not by parsing."""
    data = fresh_jpegs(1)[0]
    data += b"\0" * (LIMIT + 1 - len(data))
    assert_error(upload(http, data), 413, "too_many_bytes")
    nothing_stored(http, guarded)


@pytest.mark.parametrize(
    "fields",
    [
        {"url": "no-scheme/a.jpg"},
        {"url": "javascript:alert(document.domain)"},
        {"url": "JaVaScRiPt:alert(1)"},
        {"url": " javascript:alert(1)"},
        {"url": "vbscript:msgbox(1)"},
        {"url": "https://e.example/a\x00.jpg"},
        {"url": "https://e.example/" + "a" * 9000},
        {"url": ""},
        {"client_name": ""},
        {"client_name": "bad\x00name"},
        {"client_name": "x" * 256},
        {"bucket": "../etc"},
        {"bucket": "a" * 65},
        {"bucket": "sp ace"},
        {"lookup_time": "yesterday"},
        {"lookup_time": "0001-01-01T00:00:00+14:00"},
        {"lookup_time": "9999-12-31T23:59:59-14:00"},
        {"similar_to": "ABC"},
        {"similar_distance": "-1"},
    ],
    ids=lambda f: repr(f)[:40],
)
def test_bad_form_fields(http, guarded, fields):
    body = assert_error(upload(http, fresh_jpegs(1)[0], **fields), 422, "invalid_request")
    assert body["detail"]
    nothing_stored(http, guarded)


@pytest.mark.parametrize("url", ["javascript:alert(1)", "vbscript:msgbox(1)", "https://e.example/a.jpg\n"])
def test_a_url_record_of_another_scheme_is_refused(http, guarded, url):
    """POST /images/urls/{hash} (RemoteStore's record_url) takes the same URLs as an upload."""
    stored = upload(http, fresh_jpegs(1)[0])
    assert stored.status_code == 201, stored.text
    chash = stored.json()["content_hash"]
    refused = http.post(f"/images/urls/{chash}", data={"url": url, "client_name": "spider"})
    assert_error(refused, 422, "invalid_request")
    assert [e["url"] for e in http.get(f"/images/urls/{chash}").json()] == [stored.json()["url"]]
    assert http.delete(f"/images/{chash}").status_code == 204
    nothing_stored(http, guarded)


def test_the_service_takes_the_urls_the_store_takes(http, guarded):
    """One allowlist: what SqlStore records (tests/store/test_sql.py's lists), the forms take
    (ftp, s3 and visualsnoop URLs were once refused here, so a crawl through a RemoteStore
    failed on images a crawl on the database cached), and what it refuses they refuse."""
    data = fresh_jpegs(1)[0]
    for url in NOT_IMAGE_URLS:
        assert_error(upload(http, data, url=url), 422, "invalid_request")
    nothing_stored(http, guarded)
    first = upload(http, data, url=IMAGE_URLS[0])
    assert first.status_code == 201, first.text
    chash = first.json()["content_hash"]
    for url in IMAGE_URLS[1:]:
        recorded = http.post(f"/images/urls/{chash}", data={"url": url, "client_name": "spider"})
        assert recorded.status_code in (200, 201), (url, recorded.text)
    for url in NOT_IMAGE_URLS:
        assert_error(http.post(f"/images/urls/{chash}", data={"url": url, "client_name": "spider"}), 422)
    assert {e["url"] for e in http.get(f"/images/urls/{chash}").json()} == set(IMAGE_URLS)
    assert http.delete(f"/images/{chash}").status_code == 204
    nothing_stored(http, guarded)


def test_missing_file_part(http, guarded):
    resp = http.post("/images", data={"url": fresh_url(), "client_name": "s"})
    assert_error(resp, 422, "invalid_request")
    resp = http.post("/images", content=b"not a form", headers={"Content-Type": "application/octet-stream"})
    assert_error(resp, 422)
    nothing_stored(http, guarded)


@pytest.mark.parametrize(
    "path",
    [
        "/images/" + "A" * 64,
        "/images/" + "a" * 63,
        "/images/" + "a" * 65,
        "/images/" + "g" * 64,
        "/images/meta/" + "a" * 63,
        "/serve/" + "a" * 63 + "%00",
        "/images/urls/xyz",
        f"/images/{GOOD_HASH}?bucket=no/slash",
        f"/serve/{GOOD_HASH}?bucket=" + "b" * 65,
        "/images/similar?perceptual_hash=" + "F" * 16,
        "/images/similar?perceptual_hash=" + "f" * 15,
        "/images/similar?perceptual_hash=" + "f" * 16 + "&max_hamming_distance=-1",
        "/images/similar?perceptual_hash=" + "f" * 16 + "&max_hamming_distance=33",
        "/images/similar?perceptual_hash=" + "f" * 16 + "&max_hamming_distance=99999999999999999999",
        "/images/similar?perceptual_hash=" + "f" * 16 + "&max_hamming_distance=four",
        "/images/similar?perceptual_hash=" + "f" * 16 + "&limit=0",
        "/images/similar?perceptual_hash=" + "f" * 16 + "&limit=100000",
        "/images/similar?perceptual_hash=" + "f" * 16 + "&algorithm=md5",
        "/images/search?url_contains=",
        "/images/search?url_contains=a%00b",
        "/images/search?url_contains=a&limit=-5",
        "/images/lookup",
        "/images/lookup?url=a%00b",
    ],
)
def test_bad_paths_and_queries(http, guarded, path):
    assert_error(http.get(path), 422, "invalid_request")


def test_bad_hash_on_delete(http, guarded):
    assert_error(http.delete("/images/" + "Z" * 64), 422, "invalid_request")


def test_unknown_route_and_method_are_json(http):
    assert_error(http.get("/nothing/here"), 404, "not_found")
    assert_error(http.put("/images", content=b"x"), 405, "method_not_allowed")


def test_malformed_multipart_is_400(http, guarded):
    resp = http.post("/images", content=b"garbage", headers={"Content-Type": "multipart/form-data; boundary=zz"})
    assert_error(resp, (400, 422))
    nothing_stored(http, guarded)


def test_valid_image_after_the_refusals_is_stored(http, guarded):
    """The refusals above left the server healthy and the store usable."""
    data = fresh_jpegs(1)[0]
    resp = upload(http, data)
    assert resp.status_code == 201
    assert http.get(f"/images/{resp.json()['content_hash']}").content == data
    assert list((guarded.files.parent / "tmp").iterdir()) == []
