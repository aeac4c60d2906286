"""The web page's HTTP contract, in-process: keys and sessions, CSRF, no open redirect, the
headers every page carries, thumbnails made once off the event loop, refusals as pages."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from scrapy_imgcache.server.app import create_app
from scrapy_imgcache.server.auth import ApiKeys
from scrapy_imgcache.server.web.session import COOKIE
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import fresh_jpegs, fresh_url

READ_KEY, WRITE_KEY = "a-read-key-of-16-chars", "a-write-key-of-16-chars"
ORIGIN = "http://testserver"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    s = SqlStore(f"sqlite:///{tmp_path / 'cache.sqlite3'}", str(tmp_path / "files"))
    yield s
    s.close()


@pytest.fixture
def images(store: SqlStore) -> list[str]:
    return [store.put(d, url=fresh_url(), client_name="spider").entry.content_hash for d in fresh_jpegs(3)]


def client_for(store: SqlStore, keys: ApiKeys | None = None) -> TestClient:
    return TestClient(create_app(store, keys=keys), base_url=ORIGIN, follow_redirects=False)


@pytest.fixture
def keyed(store: SqlStore) -> TestClient:
    return client_for(store, ApiKeys.from_keys([READ_KEY], [WRITE_KEY]))


def login(client: TestClient, key: str) -> None:
    answer = client.post("/web/login", data={"key": key}, headers={"Origin": ORIGIN})
    assert answer.status_code == 303, answer.text


def csrf_of(client: TestClient, path: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert match
    return match.group(1)


def test_pages_carry_a_strict_csp_and_are_private_with_keys(keyed: TestClient, store: SqlStore, images):
    login(keyed, READ_KEY)
    for path in ("/web/", "/web/browse", f"/web/image/{images[0]}", "/web/search", "/web/nope/../login"):
        page = keyed.get(path)
        csp = page.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "unsafe" not in csp and "frame-ancestors 'none'" in csp
        assert page.headers["cache-control"] == "private, no-store", path
        assert page.headers["x-content-type-options"] == "nosniff"
    open_page = client_for(store).get("/web/browse")
    assert open_page.status_code == 200 and open_page.headers["cache-control"] == "no-cache"


def test_the_root_leads_to_the_web_page(keyed: TestClient):
    assert keyed.get("/").headers["location"] == "/web/"


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/web/", "/web/\\\\evil.example", "/web@evil.example/", "javascript:x", ""],
)
def test_logging_in_never_leads_to_another_site(keyed: TestClient, target: str):
    answer = keyed.post("/web/login", data={"key": READ_KEY, "next": target}, headers={"Origin": ORIGIN})
    assert answer.status_code == 303 and answer.headers["location"] == "/web/"
    kept = keyed.post("/web/login", data={"key": READ_KEY, "next": "/web/browse?bucket=x"}, headers={"Origin": ORIGIN})
    assert kept.headers["location"] == "/web/browse?bucket=x"


def test_the_session_cookie_holds_no_key_and_is_locked_down(keyed: TestClient):
    answer = keyed.post("/web/login", data={"key": WRITE_KEY}, headers={"Origin": ORIGIN})
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert WRITE_KEY not in cookie


def test_a_wrong_key_a_forged_cookie_or_another_sites_login_get_401(keyed: TestClient):
    assert keyed.post("/web/login", data={"key": "x" * 20}, headers={"Origin": ORIGIN}).status_code == 401
    foreign = keyed.post("/web/login", data={"key": READ_KEY}, headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 401 and COOKIE not in foreign.headers.get("set-cookie", "")
    login(keyed, READ_KEY)
    value = keyed.cookies[COOKIE]
    payload, signature = value.split(".")
    keyed.cookies.set(COOKIE, payload.replace("e", "f", 1) + "." + signature)
    assert keyed.get("/web/").status_code == 401
    keyed.cookies.set(COOKIE, value)
    assert keyed.get("/web/").status_code == 200


def test_deleting_needs_a_write_key_its_token_and_this_site(keyed: TestClient, store: SqlStore, images):
    target = images[0]
    login(keyed, READ_KEY)
    token = csrf_of(keyed, "/web/")
    refused = keyed.post(f"/web/image/{target}/delete", data={"csrf": token}, headers={"Origin": ORIGIN})
    assert refused.status_code == 403
    login(keyed, WRITE_KEY)
    token = csrf_of(keyed, f"/web/image/{target}")
    for form, origin in (({}, ORIGIN), ({"csrf": "forged"}, ORIGIN), ({"csrf": token}, "http://evil.example")):
        assert keyed.post(f"/web/image/{target}/delete", data=form, headers={"Origin": origin}).status_code == 403
    assert store.get_meta(target) is not None
    done = keyed.post(f"/web/image/{target}/delete", data={"csrf": token}, headers={"Origin": ORIGIN})
    assert done.status_code == 303 and done.headers["location"].startswith("/web/browse")
    assert store.get_meta(target) is None


def test_thumbnails_are_made_once_in_a_worker_thread(store: SqlStore, images):
    client = client_for(store)
    app = client.app
    loop_threads: list[int] = []

    @app.get("/_loop_thread")
    async def loop_thread() -> dict[str, int]:
        loop_threads.append(threading.get_ident())
        return {}

    thumbs = app.state.web.thumbs
    # one portal (event loop thread) for both requests: a thread's ident is reused once it ends,
    # so comparing idents across two portals could match a pool thread against a dead loop
    with client:
        client.get("/_loop_thread")
        first = client.get(f"/web/thumb/{images[0]}")
        assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
        assert thumbs.made == 1 and thumbs.last_maker not in loop_threads
    again = client.get(f"/web/thumb/{images[0]}")
    assert again.content == first.content and thumbs.made == 1, "the second view decodes nothing"
    kept = [k for k, _, _ in store.blobs.iter_keys() if k.startswith("thumbs/web/")]
    assert kept == [f"thumbs/web/{images[0][:2]}/{images[0]}.jpg"]
    assert client.get(f"/web/thumb/{'0' * 64}").status_code == 404
    assert store.delete(images[0])
    store.collect_garbage(grace_seconds=0)  # the thumbnail goes with the last image of its bytes
    assert [k for k, _, _ in store.blobs.iter_keys() if k.startswith("thumbs/web/")] == []


def test_a_bad_upload_or_parameter_is_a_page_not_json(store: SqlStore, images):
    client = client_for(store)
    token = csrf_of(client, "/web/search")
    refused = client.post(
        "/web/search", data={"csrf": token}, files={"file": ("notes.txt", b"just text")}, headers={"Origin": ORIGIN}
    )
    assert refused.status_code == 415 and "text/html" in refused.headers["content-type"]
    assert "notes.txt" in refused.text
    assert client.get("/web/browse?bucket=no%20spaces").status_code == 400
    assert client.get("/web/browse?before=garbage").status_code == 400
    for bad in ("distance=%C2%B2", "distance=99", "min_size=%D9%A3"):  # "²", "٣": digits, but not ASCII ones
        answer = client.get(f"/web/groups?{bad}")
        assert answer.status_code == 400 and "text/html" in answer.headers["content-type"], bad
    assert client.get(f"/web/image/{'f' * 64}").status_code == 404
    assert "text/html" in client.get("/web/image/not-a-hash").headers["content-type"]


def test_api_docs_are_served_from_the_package(store: SqlStore):
    client = client_for(store)
    for path in ("/docs", "/redoc"):
        page = client.get(path).text
        sources = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert sources and all(s.startswith(("/docs/static/", "/openapi.json")) for s in sources), sources
        for source in sources:
            assert client.get(source).status_code == 200, source
    assert client.get("/openapi.json").status_code == 200
