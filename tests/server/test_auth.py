"""API keys against a real server: 401 without a valid key, read keys cannot write."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from scrapy_imgcache.server.auth import ApiKeys
from scrapy_imgcache.server.process import LiveServer
from tests.forked import imgcache_server
from tests.helpers import fresh_jpegs, fresh_url

READ_KEY = "r" * 20 + "-read"
WRITE_KEY = "w" * 20 + "-write"
ENV_WRITE_KEY = "e" * 24


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("keyed")
    db = f"sqlite:///{workdir / 'cache.sqlite3'}"
    env = {"IMGCACHE_SERVER_WRITE_KEYS": f"{ENV_WRITE_KEY}, "}
    with imgcache_server(db, workdir, "--read-key", READ_KEY, "--write-key", WRITE_KEY, env=env) as server:
        yield server


def call(server: LiveServer, method: str, path: str, key: str | None = None, **kw) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kw)


def store(server: LiveServer, key: str | None, data: bytes) -> httpx.Response:
    form = {"url": fresh_url(), "client_name": "spider"}
    return call(server, "POST", "/images", key, data=form, files={"file": ("a.jpg", data)})


def test_write_keys_store_and_delete(keyed):
    for key in (WRITE_KEY, ENV_WRITE_KEY):
        (data,) = fresh_jpegs(1)
        resp = store(keyed, key, data)
        assert resp.status_code == 201
        chash = resp.json()["content_hash"]
        assert call(keyed, "GET", f"/images/meta/{chash}", key).status_code == 200
        assert call(keyed, "DELETE", f"/images/{chash}", key).status_code == 204


@pytest.mark.parametrize("key", [None, "", "not-a-configured-key-at-all", WRITE_KEY[:-1], WRITE_KEY + "x"])
def test_missing_or_wrong_key_is_401(keyed, key):
    (data,) = fresh_jpegs(1)
    chash = store(keyed, WRITE_KEY, data).json()["content_hash"]
    for method, path in [
        ("GET", f"/images/meta/{chash}"),
        ("GET", f"/images/{chash}"),
        ("GET", f"/serve/{chash}"),
        ("GET", "/images/search?url_contains=example"),
        ("GET", "/images/lookup?url=https://example.com/x"),
        ("GET", "/images/similar?perceptual_hash=0123456789abcdef"),
        ("GET", "/usage"),
        ("GET", "/metrics"),
        ("DELETE", f"/images/{chash}"),
    ]:
        resp = call(keyed, method, path, key)
        assert resp.status_code == 401, (method, path)
        assert resp.json()["error"] == "unauthorized"
        assert resp.headers["www-authenticate"] == "X-API-Key"
    resp = store(keyed, key, fresh_jpegs(1)[0])
    assert resp.status_code == 401
    # still there: the refused DELETE did nothing
    assert call(keyed, "GET", f"/images/meta/{chash}", WRITE_KEY).status_code == 200


def test_read_key_reads_but_cannot_write(keyed):
    (data,) = fresh_jpegs(1)
    chash = store(keyed, WRITE_KEY, data).json()["content_hash"]
    assert call(keyed, "GET", f"/images/{chash}", READ_KEY).content == data
    assert call(keyed, "GET", "/metrics", READ_KEY).status_code == 200
    refused = store(keyed, READ_KEY, fresh_jpegs(1)[0])
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert call(keyed, "DELETE", f"/images/{chash}", READ_KEY).status_code == 403
    assert call(keyed, "GET", f"/images/meta/{chash}", READ_KEY).status_code == 200


def test_whoami_says_what_a_key_may_do(keyed, tmp_path):
    assert call(keyed, "GET", "/auth/whoami", WRITE_KEY).json() == {"scope": "write", "keys_required": True}
    assert call(keyed, "GET", "/auth/whoami", ENV_WRITE_KEY).json()["scope"] == "write"
    assert call(keyed, "GET", "/auth/whoami", READ_KEY).json() == {"scope": "read", "keys_required": True}
    for key in (None, "not-a-configured-key-at-all"):
        refused = call(keyed, "GET", "/auth/whoami", key)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    with imgcache_server(f"sqlite:///{tmp_path / 'open.sqlite3'}", tmp_path) as open_server:
        for key in (None, READ_KEY):  # no keys: anyone may write, whatever they send
            assert call(open_server, "GET", "/auth/whoami", key).json() == {"scope": "write", "keys_required": False}


def test_health_and_schema_stay_open(keyed):
    assert call(keyed, "GET", "/health").json() == {"status": "ok"}
    schema = call(keyed, "GET", "/openapi.json").json()
    assert "APIKeyHeader" in schema["components"]["securitySchemes"]


def test_the_published_client_without_a_key_is_refused(keyed):
    from imgcache_client import ImgCacheClient

    with ImgCacheClient(keyed.url) as client:
        with pytest.raises(httpx.HTTPStatusError) as err:
            client.store(fresh_url(), fresh_jpegs(1)[0], "spider")
        assert err.value.response.status_code == 401
        assert client.health() == {"status": "ok"}


def test_public_serve(tmp_path):
    db = f"sqlite:///{tmp_path / 'cache.sqlite3'}"
    with imgcache_server(db, tmp_path, "--write-key", WRITE_KEY, "--public-serve") as server:
        (data,) = fresh_jpegs(1)
        chash = store(server, WRITE_KEY, data).json()["content_hash"]
        assert call(server, "GET", f"/serve/{chash}").content == data
        assert call(server, "GET", f"/images/{chash}").status_code == 401


def test_keys_scopes_in_process():
    keys = ApiKeys.from_env(["a" * 16], ["b" * 16], environ={"IMGCACHE_SERVER_READ_KEYS": "c" * 16 + ",,"})
    assert keys.scope_of("a" * 16) == "read" and keys.scope_of("c" * 16) == "read"
    assert keys.scope_of("b" * 16) == "write"
    assert keys.scope_of("a" * 15) is None and keys.scope_of(None) is None
    assert keys.allows("b" * 16, "read") and not keys.allows("a" * 16, "write")
    assert not ApiKeys.from_env(environ={}).enabled
    with pytest.raises(ValueError, match="16 characters"):
        ApiKeys.from_keys(["short"])
