"""A VisualSnoop deployment for tests: a real ``imgcache-server`` process over a database,
collections made with the real ``imgcache-server collections create`` command, and this
process's own ``SqlStore`` on the same database and files (to "crawl" into a bucket as a
spider would, and to look at what is stored)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import httpx
import requests

from scrapy_imgcache.server.process import SERVER_BIN, LiveServer
from scrapy_imgcache.store.sql import SqlStore
from scrapy_imgcache.visualsnoop.api import signature
from scrapy_imgcache.visualsnoop.keys import SecretBox
from scrapy_imgcache.visualsnoop.registry import Registry
from tests.forked import imgcache_server
from tests.helpers import database_url

base64.encodestring = base64.encodebytes  # type: ignore[attr-defined]  # the client's one wart (see the spec)
from visualsnoop.models import Collection  # noqa: E402

SECRETS_KEY = "test-secrets-key-" + "k" * 24
SKEW = 60
MAX_UPLOAD = 1_000_000
PREFIX = "/api/v1"


@dataclass
class Keys:
    collection_id: str
    name: str
    bucket: str
    user: str
    public_key: str
    secret_key: str


def keys_of(created: dict[str, Any]) -> Keys:
    """The keys of a collection as ``collections create --json`` prints it."""
    fields = ("collection_id", "name", "bucket", "user", "public_key", "secret_key")
    return Keys(*(created[f] for f in fields))


@dataclass
class Deployment:
    server: LiveServer
    db: str
    store: SqlStore

    @property
    def endpoint(self) -> str:
        return self.server.url + PREFIX

    def create(self, user: str = "") -> Keys:
        """A fresh collection over a fresh bucket, made in this process by the registry the
        command runs (~2 s less a test than a command's process each time; the command itself
        makes the collection of ``create_with_command`` and tests/commands/test_collections.py)."""
        name = f"c{uuid.uuid4().hex[:12]}"
        collection, secret = Registry(self.store.engine, SecretBox(SECRETS_KEY)).create(name, user=user)
        return keys_of({**collection.to_json(), "secret_key": secret})

    def create_with_command(self, user: str = "") -> Keys:
        """A fresh collection over a fresh bucket, made with the real command."""
        name = f"c{uuid.uuid4().hex[:12]}"
        out = subprocess.run(
            [SERVER_BIN, "collections", "create", name, "--user", user, "--json", "--db", self.db],
            capture_output=True,
            text=True,
            env=server_env(),
            check=True,
        )
        return keys_of(json.loads(out.stdout))

    def client(self, keys: Keys) -> Collection:
        return Collection(keys.public_key, keys.secret_key, endpoint=self.endpoint)

    def cached(self, keys: Keys) -> list[str]:
        """Content hashes cached in the collection's bucket."""
        return sorted(e.content_hash for e in self.store.images(bucket=keys.bucket))

    def blobs(self) -> set[str]:
        return {k for k, _mtime, _size in self.store.blobs.iter_keys()}


def server_env(skew: float = SKEW) -> dict[str, str]:
    return {
        **os.environ,
        "IMGCACHE_SECRETS_KEY": SECRETS_KEY,
        "IMGCACHE_VISUALSNOOP_SKEW": str(skew),
        "IMGCACHE_VISUALSNOOP_DISTANCE": "10",
    }


@contextmanager
def deployed(kind: str, workdir: Path, skew: float = SKEW, max_upload: int = MAX_UPLOAD) -> Iterator[Deployment]:
    """A server over a fresh database of ``kind`` (sqlite, postgresql, mysql), until the block ends."""
    with (
        database_url(kind, workdir) as db,
        imgcache_server(db, workdir, "--max-upload-bytes", str(max_upload), env=server_env(skew)) as server,
    ):
        store = SqlStore(db, str(server.files))
        try:
            yield Deployment(server, db, store)
        finally:
            store.close()


def signed_headers(keys: Keys, method: str, path: str, date: str | None = None) -> dict[str, str]:
    """``Date`` and ``Authorization`` as the client signs them (``path``: the raw request path)."""
    date = date or formatdate(usegmt=True)
    sig = signature(keys.secret_key, method, path.encode(), date).decode()
    return {"Date": date, "Authorization": f"VSHMAC {keys.public_key}:{sig}"}


def assert_refused(response: httpx.Response | requests.Response, status: int = 401) -> dict[str, Any]:
    """A refusal in the VisualSnoop API's shape: JSON ``{"status", "message"}``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["message"]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "VSHMAC"
    return body
