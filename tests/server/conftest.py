"""Fixtures: one real server process per database and test module, driven over a socket."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import _mysql_url, _postgres_url
from tests.photos import distinct_images, encode

from .live import LiveServer, imgcache_server

_unique = itertools.count()
_POOL = distinct_images(120, size=(160, 120))


def fresh_jpegs(n: int) -> list[bytes]:
    """Photos no other test of the session uses, so tests can share the default bucket."""
    return [encode(_POOL[next(_unique) % len(_POOL)]) for _ in range(n)]


def fresh_url(name: str = "img") -> str:
    return f"https://example.com/{uuid.uuid4().hex}/{name}.jpg"


#: one real database of each kind, for module-scoped server fixtures
DATABASES = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
    pytest.param("mysql", marks=pytest.mark.mysql),
]


@contextmanager
def database_url(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh database of ``kind`` (a SQLite file, a PostgreSQL schema, a MariaDB database)."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'cache.sqlite3'}"
        return
    urls = _postgres_url() if kind == "postgresql" else _mysql_url()
    try:
        yield next(urls)
    finally:
        urls.close()  # drops the schema or database


@pytest.fixture(scope="module", params=DATABASES)
def live(request, tmp_path_factory) -> Iterator[LiveServer]:
    """``imgcache-server`` over SQLite, PostgreSQL or MariaDB, shared by the tests of one module."""
    workdir = tmp_path_factory.mktemp(f"server-{request.param}")
    with database_url(request.param, workdir) as db, imgcache_server(db, workdir) as server:
        yield server


@pytest.fixture
def statuses(live) -> list[int]:
    return []


@pytest.fixture
def client(live, statuses):
    """The published client, unmodified; a response hook records the status codes it saw."""
    from imgcache_client import ImgCacheClient

    with ImgCacheClient(live.url, timeout=30.0) as c:
        c._client.event_hooks["response"].append(lambda r: statuses.append(r.status_code))
        yield c


@pytest.fixture
def http(live) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30.0) as c:
        yield c
