"""Fixtures: one real server process per database and test module, driven over a socket."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from scrapy_imgcache.server.process import LiveServer
from tests.forked import imgcache_server
from tests.helpers import DATABASES, database_url


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
