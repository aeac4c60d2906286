"""The VisualSnoop collections API, end to end: the published ``visualsnoop==0.2`` client and raw
HTTP against a real ``imgcache-server`` process, over SQLite, PostgreSQL and MariaDB.

Collections are created with the real ``imgcache-server collections create`` command; images
"crawled" into a collection's bucket are stored by this process through its own ``SqlStore``
on the same database and files, as a spider would.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator
from email.utils import formatdate

import httpx
import pytest
import requests
from PIL import Image
from visualsnoop.auth import VisualSnoopHMACAuth
from visualsnoop.models import Collection

from scrapy_imgcache.hashing import Inspector, content_hash, hamming
from tests.helpers import (
    DATABASES,
    distinct_images,
    distinct_jpegs,
    encode,
    near_duplicates,
    noise_bytes,
)

from .vsnoop import (
    MAX_UPLOAD,
    PREFIX,
    SKEW,
    Deployment,
    Keys,
    assert_refused,
    deployed,
    signed_headers,
)


@pytest.fixture(scope="module", params=DATABASES)
def deployment(request, tmp_path_factory) -> Iterator[Deployment]:
    with deployed(request.param, tmp_path_factory.mktemp(f"visualsnoop-{request.param}")) as found:
        yield found


@pytest.fixture
def keys(deployment) -> Keys:
    return deployment.create(user="owner@example.com")


@pytest.fixture
def coll(deployment, keys) -> Collection:
    return deployment.client(keys)


def jpeg(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)


# -- the published client ----------------------------------------------------------------


def test_connecting_reports_id_name_and_user(deployment, coll, keys):
    assert (coll.id, coll.name, coll.user) == (keys.collection_id, keys.name, "owner@example.com")
    # a collection made by the real command works the same
    keys = deployment.create_with_command(user="owner@example.com")
    coll = deployment.client(keys)
    assert (coll.id, coll.name, coll.user) == (keys.collection_id, keys.name, "owner@example.com")


def test_add_with_generated_id_is_cached_in_the_bucket(deployment, coll, keys):
    data = distinct_jpegs(1)[0]
    answer = coll.add_image(jpeg(data))
    assert answer["status"] == 201 and answer["message"] == "Added"
    assert re.fullmatch(r"[0-9a-f]{32}", answer["image_id"]), answer["image_id"]
    assert answer["collection_id"] == keys.collection_id
    assert deployment.cached(keys) == [content_hash(data)]
    entry = deployment.store.get_meta(content_hash(data), keys.bucket)
    assert entry is not None and entry.client_name == "visualsnoop"
    got = coll.get_image(answer["image_id"])
    assert (got["status"], got["message"], got["image_time"]) == (200, "OK", answer["image_time"])


def test_own_id_is_not_overwritten_without_update_existing(deployment, coll, keys):
    first, second, third = distinct_jpegs(3)
    added = coll.add_image(jpeg(first), image_id="myid12")
    assert (added["status"], added["message"], added["image_id"]) == (201, "Added", "myid12")

    refused = coll.add_image(jpeg(second), image_id="myid12")
    assert refused["status"] == 409 and "update_existing" in refused["message"]
    assert coll.get_image("myid12")["image_time"] == added["image_time"]
    assert deployment.cached(keys) == [content_hash(first)]

    updated = coll.add_image(jpeg(third), image_id="myid12", update_existing=True)
    assert (updated["status"], updated["message"]) == (200, "Updated")
    assert updated["image_time"] > added["image_time"]
    # the replaced bytes left the bucket; the new ones are cached
    assert deployment.cached(keys) == [content_hash(third)]

    fresh = coll.add_image(jpeg(second), image_id="new-via-put", update_existing=True)
    assert (fresh["status"], fresh["message"]) == (201, "Added")


def test_delete_and_unknown_ids(deployment, coll, keys):
    data = distinct_jpegs(1)[0]
    coll.add_image(jpeg(data), image_id="gone")
    deleted = coll.delete_image("gone")
    assert (deleted["status"], deleted["message"], deleted["image_id"]) == (200, "Deleted", "gone")
    assert deployment.cached(keys) == []
    # (deleting "gone" again inside the same second would be a byte-identical signed DELETE:
    # refused as a replay, see test_replayed_post_is_refused_but_repeated_reads_are_not)
    unknown = (
        coll.get_image("gone"),
        coll.search_images_by_id("gone"),
        coll.get_image("never"),
        coll.delete_image("never"),
    )
    for answer in unknown:
        assert answer["status"] == 404 and answer["message"]


def test_get_images_pages_newest_first_to_the_end(coll):
    added = [coll.add_image(jpeg(data), image_id=f"p{i}")["image_id"] for i, data in enumerate(distinct_jpegs(5))]
    everything = coll.get_images()
    assert [i["id"] for i in everything["images"]] == added[::-1]
    assert everything["next_image_id"] is None

    seen: list[str] = []
    start = None
    pages = 0
    while True:
        page = coll.get_images(start=start, count=2)
        assert page["status"] == 200 and page["message"] == "OK"
        assert len(page["images"]) <= 2
        seen += [i["id"] for i in page["images"]]
        pages += 1
        start = page["next_image_id"]
        if start is None:
            break
        assert start == added[::-1][len(seen)]
    assert seen == added[::-1] and pages == 3


def test_search_by_id_ranks_near_duplicates_and_leaves_the_image_out(coll):
    original, *others = distinct_images(4)
    variants = near_duplicates(original)
    coll.add_image(jpeg(encode(original)), image_id="original")
    for name in ("resized", "recompressed", "cropped"):
        coll.add_image(jpeg(variants[name]), image_id=name)
    for i, img in enumerate(others):
        coll.add_image(jpeg(encode(img)), image_id=f"other{i}")

    answer = coll.search_images_by_id("original")
    assert (answer["status"], answer["message"], answer["image_id"]) == (200, "OK", "original")
    ids = [r["id"] for r in answer["results"]]
    assert sorted(ids) == ["cropped", "recompressed", "resized"]
    assert [r["rank"] for r in answer["results"]] == [0, 1, 2]
    # nearest first, by the pHash distance computed here, independently of the server
    inspector = Inspector()
    base = inspector.inspect(encode(original)).perceptual_hash
    distances = [hamming(base, inspector.inspect(variants[i]).perceptual_hash) for i in ids]
    assert distances == sorted(distances)


def test_search_by_upload_finds_without_storing(deployment, coll, keys):
    original = distinct_images(1)[0]
    coll.add_image(jpeg(encode(original)), image_id="original")
    before = deployment.cached(keys)
    probe = near_duplicates(original)["brightened"]
    answer = coll.search_images(jpeg(probe))
    assert (answer["status"], answer["message"]) == (200, "OK")
    assert [(r["id"], r["rank"]) for r in answer["results"]] == [("original", 0)]
    assert deployment.cached(keys) == before and content_hash(probe) not in before


def test_crawled_images_appear_under_their_content_hash(deployment, coll, keys):
    crawled, added = distinct_jpegs(2)
    deployment.store.put(crawled, url="https://example.com/a.jpg", client_name="spider", bucket=keys.bucket)
    coll.add_image(jpeg(added), image_id="mine")
    chash = content_hash(crawled)
    listed = [i["id"] for i in coll.get_images()["images"]]
    assert listed == ["mine", chash]
    assert coll.get_image(chash)["status"] == 200
    assert coll.search_images_by_id(chash)["results"] == []
    # the same bytes added under an id are listed once, under that id
    coll.add_image(jpeg(crawled), image_id="named")
    assert sorted(i["id"] for i in coll.get_images()["images"]) == ["mine", "named"]
    assert coll.delete_image("named")["status"] == 200
    assert deployment.store.get_meta(chash, keys.bucket) is None


def test_paging_interleaves_crawled_and_added_images(deployment, coll, keys):
    photos = distinct_jpegs(5)
    expected: list[str] = []
    for i, data in enumerate(photos):
        if i % 2:
            expected.append(coll.add_image(jpeg(data), image_id=f"added{i}")["image_id"])
        else:
            deployment.store.put(data, url=f"https://example.com/{i}.jpg", client_name="spider", bucket=keys.bucket)
            expected.append(content_hash(data))
    expected.reverse()
    assert [i["id"] for i in coll.get_images()["images"]] == expected
    for count in (1, 2, 3):
        seen: list[str] = []
        start = None
        while True:
            page = coll.get_images(start=start, count=count)
            seen += [i["id"] for i in page["images"]]
            start = page["next_image_id"]
            if start is None:
                break
        assert seen == expected, count


def test_a_key_pair_reaches_only_its_own_collection(deployment, coll, keys):
    other = deployment.client(deployment.create())
    coll.add_image(jpeg(distinct_jpegs(1)[0]), image_id="private")
    assert other.get_image("private")["status"] == 404
    assert other.search_images_by_id("private")["status"] == 404
    assert other.delete_image("private")["status"] == 404
    assert other.get_images()["images"] == []
    assert coll.get_image("private")["status"] == 200


# -- authentication, raw ------------------------------------------------------------------


def test_the_signature_helper_matches_the_client(deployment, keys):
    """The raw tests below sign with the server's function; it must agree with the client."""
    prepared = requests.Request("GET", deployment.endpoint + "/image/a%20b").prepare()
    prepared.headers["Date"] = formatdate(usegmt=True)
    VisualSnoopHMACAuth(keys.public_key, keys.secret_key)(prepared)
    ours = signed_headers(keys, "GET", PREFIX + "/image/a%20b", prepared.headers["Date"])
    assert prepared.headers["Authorization"] == ours["Authorization"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz", "Date": formatdate(usegmt=True)}, id="not-vshmac"),
        pytest.param({"Authorization": "VSHMAC nocolon", "Date": formatdate(usegmt=True)}, id="malformed"),
        pytest.param({"Authorization": "VSHMAC 0123456789abcdef0123:AAAA", "Date": "yesterday"}, id="bad-date"),
        pytest.param({"Authorization": "VSHMAC 0123456789abcdef0123:AAAAAAAAAAAAAAAAAAAAAAAAAAA="}, id="no-date"),
        pytest.param(
            {"Authorization": "VSHMAC ünïcode:AAAA".encode(), "Date": formatdate(usegmt=True)}, id="non-ascii"
        ),
        pytest.param(
            {
                "Authorization": "VSHMAC 0123456789abcdef0123:AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                "Date": formatdate(usegmt=True),
            },
            id="unknown-key",
        ),
    ],
)
def test_refused_credentials(deployment, keys, headers):
    response = httpx.get(deployment.endpoint + "/collection", headers=headers)
    assert_refused(response)


def test_wrong_secret_wrong_path_and_stale_dates_are_refused(deployment, keys):
    url = deployment.endpoint + "/collection"
    other = deployment.create()
    assert httpx.get(url, headers=signed_headers(keys, "GET", PREFIX + "/collection")).status_code == 200
    wrong_secret = signed_headers(
        Keys(**{**keys.__dict__, "secret_key": other.secret_key}), "GET", PREFIX + "/collection"
    )
    assert_refused(httpx.get(url, headers=wrong_secret))
    assert_refused(httpx.get(url, headers=signed_headers(keys, "GET", "/collection")))  # mount prefix left out
    assert_refused(httpx.get(url, headers=signed_headers(keys, "POST", PREFIX + "/collection")))
    for offset in (-(SKEW + 30), SKEW + 30):
        stale = formatdate(time.time() + offset, usegmt=True)
        body = assert_refused(httpx.get(url, headers=signed_headers(keys, "GET", PREFIX + "/collection", stale)))
        assert "clock" in body["message"]


def test_percent_encoded_path_is_signed_as_sent(deployment, coll, keys):
    coll.add_image(jpeg(distinct_jpegs(1)[0]), image_id="a b/ü")
    raw = PREFIX + "/image/a%20b/%C3%BC"
    ok = httpx.get(deployment.server.url + raw, headers=signed_headers(keys, "GET", raw))
    assert ok.status_code == 200 and ok.json()["image_id"] == "a b/ü"
    decoded = signed_headers(keys, "GET", PREFIX + "/image/a b/ü")
    assert_refused(httpx.get(deployment.server.url + raw, headers=decoded))


def test_replayed_post_is_refused_but_repeated_reads_are_not(deployment, coll, keys):
    session = requests.Session()
    auth = VisualSnoopHMACAuth(keys.public_key, keys.secret_key)
    data = distinct_jpegs(1)[0]
    post = requests.Request("POST", deployment.endpoint + "/image/replayed", data=data, auth=auth).prepare()
    assert session.send(post).status_code == 201
    body = assert_refused(session.send(post))
    assert "replay" in body["message"]

    delete = requests.Request("DELETE", deployment.endpoint + "/image/replayed", auth=auth).prepare()
    assert session.send(delete).status_code == 200
    assert_refused(session.send(delete))
    assert deployment.cached(keys) == []

    coll.add_image(jpeg(data), image_id="read-me")
    for path in ("/image/read-me", "/images", "/search/read-me"):
        get = requests.Request("GET", deployment.endpoint + path, auth=auth).prepare()
        assert [session.send(get).status_code for _ in range(3)] == [200, 200, 200]
    search = requests.Request("POST", deployment.endpoint + "/search", data=data, auth=auth).prepare()
    answers = [session.send(search).json() for _ in range(3)]
    assert [a["status"] for a in answers] == [200, 200, 200]
    assert answers[0]["results"][0]["id"] == "read-me"


def _signed(keys: Keys, method: str, url: str, body: bytes | None = None, age: float = 0) -> requests.PreparedRequest:
    """A request signed by the published client's auth, with its ``Date`` ``age`` seconds ago."""
    auth = VisualSnoopHMACAuth(keys.public_key, keys.secret_key)
    headers = {"Date": formatdate(time.time() - age, usegmt=True)}
    return requests.Request(method, url, data=body, headers=headers, auth=auth).prepare()


def _replayed(request: requests.PreparedRequest, url: str, body: bytes | None = None) -> requests.PreparedRequest:
    """What an eavesdropper sends: the captured signed headers, another URL or body."""
    auth_headers = {k: request.headers[k] for k in ("Date", "Authorization")}
    return requests.Request(request.method, url, data=body, headers=auth_headers).prepare()


def test_a_replay_with_a_query_string_or_another_body_is_refused(deployment, coll, keys):
    """A signature covers the method, the path and the Date: it opens one state-changing request."""
    session = requests.Session()
    url = deployment.endpoint + "/image/victim"
    first, second, evil = distinct_jpegs(3)
    assert session.send(_signed(keys, "POST", url, first, age=20)).status_code == 201
    delete = _signed(keys, "DELETE", url, age=15)
    assert session.send(delete).status_code == 200
    assert session.send(_signed(keys, "POST", url, second, age=10)).status_code == 201  # added again

    for tail in ("?x=1", "?", "?image_id=victim&x=2"):
        body = assert_refused(session.send(_replayed(delete, url + tail)))
        assert "replay" in body["message"]
    assert coll.get_image("victim")["status"] == 200

    put = _signed(keys, "PUT", url, first, age=5)
    assert session.send(put).status_code == 200
    for tail, body_bytes in (("", evil), ("?x=1", evil), ("?x=1", first)):
        refused = assert_refused(session.send(_replayed(put, url + tail, body_bytes)))
        assert "replay" in refused["message"]
    assert deployment.cached(keys) == [content_hash(first)]  # the attacker's image was not stored


def test_adding_several_images_in_one_second_keeps_working(deployment, coll, keys):
    """The client signs every ``add_image(image)`` alike within a second (same method, path and
    Date): each adds an image under a new id, so they are told apart by their bodies, and only a
    byte-identical copy of one is a replay."""
    session = requests.Session()
    url = deployment.endpoint + "/image"
    photos = distinct_jpegs(3)
    date = formatdate(usegmt=True)
    sent = [_signed(keys, "POST", url, photo) for photo in photos]
    for request in sent:
        request.headers["Date"] = date
        VisualSnoopHMACAuth(keys.public_key, keys.secret_key)(request)  # signed again with that Date
    assert len({r.headers["Authorization"] for r in sent}) == 1
    answers = [session.send(r) for r in sent]
    assert [a.status_code for a in answers] == [201, 201, 201]
    assert len({a.json()["image_id"] for a in answers}) == 3
    assert "replay" in assert_refused(session.send(sent[0]))["message"]
    assert "replay" in assert_refused(session.send(_replayed(sent[0], url + "?x=1", photos[0])))["message"]
    assert sorted(deployment.cached(keys)) == sorted(content_hash(p) for p in photos)


def test_unknown_calls_answer_json(deployment, keys):
    response = httpx.patch(deployment.endpoint + "/image/x", headers=signed_headers(keys, "PATCH", PREFIX + "/image/x"))
    assert_refused(response, 404)
    assert_refused(httpx.get(deployment.endpoint + "/nothing-here"), 404)


# -- bad input: refused with a JSON 4xx, nothing stored --------------------------------------


def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (6000, 6000)).save(buf, "PNG")  # 36 Mpx, a few KB: over the 25 Mpx limit
    return buf.getvalue()


@pytest.mark.parametrize(
    "path, body, status",
    [
        pytest.param("/image/" + "x" * 101, "photo", 400, id="id-too-long"),
        pytest.param("/image/", "photo", 400, id="id-empty"),
        pytest.param("/image", b"", 400, id="empty-body"),
        pytest.param("/image/fine", noise_bytes(), 415, id="not-an-image"),
        pytest.param("/image/fine", b"%PDF-1.4\n" + noise_bytes(), 415, id="pdf"),
        pytest.param("/image/fine", "bomb", 413, id="bomb"),
        pytest.param("/image/fine", "truncated", 422, id="truncated"),
        pytest.param("/image/fine", b"\0" * (MAX_UPLOAD + 1), 413, id="oversized"),
        pytest.param("/image/fine", b"\0" * (MAX_UPLOAD + 200_000), 413, id="oversized-past-form-slack"),
        pytest.param("/search", noise_bytes(), 415, id="search-not-an-image"),
        pytest.param("/search", b"", 400, id="search-empty"),
    ],
)
def test_bad_uploads_store_nothing(deployment, coll, keys, path, body, status):
    photo = distinct_jpegs(1)[0]
    data = {"photo": photo, "bomb": _bomb(), "truncated": photo[: len(photo) // 3]}.get(body, body)  # type: ignore[call-overload]
    blobs = deployment.blobs()
    response = requests.post(
        deployment.endpoint + path, data=data, auth=VisualSnoopHMACAuth(keys.public_key, keys.secret_key)
    )
    assert_refused(response, status)
    assert deployment.cached(keys) == []
    assert coll.get_images()["images"] == []
    assert deployment.blobs() == blobs


def test_oversized_stream_without_length_is_cut_off(deployment, coll, keys):
    def chunks() -> Iterator[bytes]:
        for _ in range(MAX_UPLOAD // 65536 + 2):
            yield b"\xff" * 65536

    response = requests.post(
        deployment.endpoint + "/image/streamed",
        data=chunks(),
        auth=VisualSnoopHMACAuth(keys.public_key, keys.secret_key),
    )
    assert_refused(response, 413)
    assert deployment.cached(keys) == []


def test_id_of_100_characters_is_fine_and_bad_listing_parameters_are_refused(deployment, coll, keys):
    long_id = "i" * 100
    assert coll.add_image(jpeg(distinct_jpegs(1)[0]), image_id=long_id)["status"] == 201
    assert coll.get_image(long_id)["image_id"] == long_id
    assert coll.get_image("i" * 101)["status"] == 400
    auth = VisualSnoopHMACAuth(keys.public_key, keys.secret_key)
    for params, status in (
        ({"count": "abc"}, 400),
        ({"count": "0"}, 400),
        ({"count": "100000"}, 400),
        ({"start": "nope"}, 404),
    ):
        assert_refused(requests.get(deployment.endpoint + "/images", params=params, auth=auth), status)


# -- image ids: the same rules on every database ---------------------------------------------


@pytest.mark.parametrize("bad", ["a\x00b", "\x00", "line\nbreak", "tab\there", "esc\x1b[0m", "del\x7f", "c1\x85"])
def test_control_characters_in_an_id_are_refused_with_422(deployment, coll, keys, bad):
    """Sent by the published client as it sends them (percent-encoded in the path)."""
    photo = distinct_jpegs(1)[0]
    answers = [
        coll.add_image(jpeg(photo), image_id=bad),
        coll.add_image(jpeg(photo), image_id=bad, update_existing=True),
        coll.get_image(bad),
        coll.search_images_by_id(bad),
        coll.delete_image(bad),
        coll.get_images(start=bad),
    ]
    for answer in answers:
        assert answer["status"] == 422, answer
        assert isinstance(answer["message"], str) and "control character" in answer["message"]
    assert deployment.cached(keys) == []
    assert coll.get_images()["images"] == []


def test_unicode_spaces_and_slashes_in_ids_work(deployment, coll, keys):
    ids = ["naïve café", "a/b/c", "日本語の写真", "📷 camera", "  padded", "x" * 99 + "é"]
    photos = distinct_jpegs(len(ids))
    for image_id, photo in zip(ids, photos, strict=True):
        added = coll.add_image(jpeg(photo), image_id=image_id)
        assert (added["status"], added["image_id"]) == (201, image_id), added
        assert coll.get_image(image_id)["image_id"] == image_id
        updated = coll.add_image(jpeg(photo), image_id=image_id, update_existing=True)
        assert updated["status"] == 200, updated
    assert sorted(i["id"] for i in coll.get_images()["images"]) == sorted(ids)
    for image_id in ids:
        assert coll.delete_image(image_id)["status"] == 200
    assert deployment.cached(keys) == []
