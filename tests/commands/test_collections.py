"""``scrapy imgcache-collections`` and ``imgcache-server collections`` as a user runs them.

Both front ends share one implementation; each test that is about behaviour runs through
both, as subprocesses, over the project's SQLite file. The keys they print are checked
against the database and, in the last test, against a live server with the real client.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Callable

import pytest
from sqlalchemy import select

from scrapy_imgcache.errors import ConfigError
from scrapy_imgcache.server.process import SERVER_BIN
from scrapy_imgcache.store.schema import make_engine
from scrapy_imgcache.visualsnoop.keys import SecretBox
from scrapy_imgcache.visualsnoop.models import CollectionRow
from scrapy_imgcache.visualsnoop.registry import Registry
from tests.forked import imgcache_server, run_scrapy
from tests.helpers import distinct_jpegs

from .conftest import Project

Run = Callable[..., subprocess.CompletedProcess[str]]
SERVER_KEY = "a-long-random-server-key-for-tests-0123456789"


def runner(project: Project, front_end: str, env: dict[str, str] | None = None) -> Run:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SCRAPY_SETTINGS_MODULE", "IMGCACHE_SECRETS"))}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        if front_end == "scrapy":
            return run_scrapy(["imgcache-collections", *args], cwd=project.root, env={**base, **(env or {})})
        command = [SERVER_BIN, "collections", *args, "--db", project.db_url]
        return subprocess.run(
            command, cwd=project.root, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120
        )

    return run


def registry(project: Project, server_key: str | None = None) -> Registry:
    return Registry(make_engine(project.db_url), SecretBox(server_key))


@pytest.fixture(params=["scrapy", "server"])
def run(request, project: Project) -> Run:
    return runner(project, request.param)


def test_create_list_rotate_delete(project: Project, run: Run):
    created = run("create", "demo", "--user", "me@example.com", "--json")
    assert created.returncode == 0, created.stderr
    keys = json.loads(created.stdout)
    assert re.fullmatch(r"[0-9a-f]{20}", keys["public_key"]) and len(keys["secret_key"]) == 40
    assert (keys["name"], keys["bucket"], keys["user"], keys["secret_storage"]) == (
        "demo",
        "demo",
        "me@example.com",
        "plain",
    )
    assert "stored in the database as is" in created.stderr
    found = registry(project).by_public_key(keys["public_key"])
    assert found is not None and found[1] == keys["secret_key"] and found[0].user == "me@example.com"

    again = run("create", "demo")
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = run("create", "Bad name")
    assert bad.returncode == 2 and "--bucket" in bad.stderr
    text = run("create", "Bad name", "--bucket", "other")
    assert text.returncode == 0, text.stderr
    assert re.search(r"public key: [0-9a-f]{20}", text.stdout) and re.search(r"secret key: \S{40}", text.stdout)

    listed = run("list")
    assert listed.returncode == 0 and "demo" in listed.stdout and "Bad name" in listed.stdout
    assert keys["secret_key"] not in listed.stdout
    lines = [json.loads(line) for line in run("list", "--json").stdout.splitlines()]
    assert [c["name"] for c in lines] == ["Bad name", "demo"] and all("secret_key" not in c for c in lines)

    rotated = run("rotate-key", "demo", "--json")
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)
    assert new["collection_id"] == keys["collection_id"]
    assert new["public_key"] != keys["public_key"] and new["secret_key"] != keys["secret_key"]
    assert registry(project).by_public_key(keys["public_key"]) is None
    assert registry(project).by_public_key(new["public_key"])[1] == new["secret_key"]  # type: ignore[index]
    assert run("rotate-key", "nope").returncode == 1

    deleted = run("delete", "demo")
    assert deleted.returncode == 0 and "stay cached" in deleted.stdout
    assert [json.loads(line)["name"] for line in run("list", "--json").stdout.splitlines()] == ["Bad name"]
    assert run("delete", "demo").returncode == 1


@pytest.mark.parametrize("how", ["env", "file"])
def test_secrets_are_stored_encrypted_with_a_server_key(project: Project, tmp_path, how):
    if how == "env":
        env = {"IMGCACHE_SECRETS_KEY": SERVER_KEY}
    else:
        (tmp_path / "server.key").write_text(SERVER_KEY + "\n")
        env = {"IMGCACHE_SECRETS_KEY_FILE": str(tmp_path / "server.key")}
    created = runner(project, "scrapy", env)("create", "sealed", "--json")
    assert created.returncode == 0, created.stderr
    keys = json.loads(created.stdout)
    assert keys["secret_storage"] == "encrypted" and "stored encrypted" in created.stderr

    engine = make_engine(project.db_url)
    with engine.connect() as conn:
        stored = conn.execute(select(CollectionRow.secret).where(CollectionRow.name == "sealed")).scalar_one()
    assert stored.startswith("fernet:") and keys["secret_key"] not in stored
    assert keys["secret_key"] not in (project.root / "cache.sqlite3").read_bytes().decode("latin-1")

    assert registry(project, SERVER_KEY).by_public_key(keys["public_key"])[1] == keys["secret_key"]  # type: ignore[index]
    with pytest.raises(ConfigError, match="IMGCACHE_SECRETS_KEY is not set"):
        registry(project).by_public_key(keys["public_key"])
    with pytest.raises(ConfigError, match="cannot be decrypted"):
        registry(project, "another-server-key-of-enough-length").by_public_key(keys["public_key"])


def test_keys_printed_by_the_scrapy_command_open_the_collection_on_the_server(project: Project):
    base64.encodestring = base64.encodebytes  # type: ignore[attr-defined]  # the client's wart
    from visualsnoop.exceptions import VisualSnoopError
    from visualsnoop.models import Collection

    run = runner(project, "scrapy")
    keys = json.loads(run("create", "shop", "--bucket", "shop-images", "--user", "team", "--json").stdout)
    crawled = distinct_jpegs(1)[0]
    with project.opened() as store:
        chash = store.put(
            crawled, url="https://shop.example/1.jpg", client_name="spider", bucket="shop-images"
        ).entry.content_hash
    with imgcache_server(project.db_url, project.root) as server:
        endpoint = server.url + "/api/v1"
        coll = Collection(keys["public_key"], keys["secret_key"], endpoint=endpoint)
        assert (coll.id, coll.name, coll.user) == (keys["collection_id"], "shop", "team")
        assert [i["id"] for i in coll.get_images()["images"]] == [chash]

        new = json.loads(run("rotate-key", "shop", "--json").stdout)
        with pytest.raises(VisualSnoopError, match="unknown public key"):
            Collection(keys["public_key"], keys["secret_key"], endpoint=endpoint)
        assert Collection(new["public_key"], new["secret_key"], endpoint=endpoint).get_image(chash)["status"] == 200
