"""Shared fixtures: real databases (SQLite files, the local PostgreSQL and MariaDB servers) and
the test web site.

Each server test gets a schema (PostgreSQL) or database (MariaDB) of its own, dropped
afterwards. A server that cannot be reached is a skip on a developer's machine and a
failure under ``CI=true``, where both servers must be running.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import Site, mysql_database, postgres_database


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'cache.sqlite3'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from postgres_database()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    yield from mysql_database()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ]
)
def db_url(request, tmp_path) -> Iterator[str]:
    """The same test against every supported database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'cache.sqlite3'}"
    elif request.param == "postgresql":
        yield from postgres_database()
    else:
        yield from mysql_database()


@pytest.fixture
def store(db_url, tmp_path):
    from scrapy_imgcache.store.sql import SqlStore

    s = SqlStore(db_url, str(tmp_path / "files"))
    yield s
    s.close()


@pytest.fixture
def site() -> Iterator[Site]:
    """The test web site on 127.0.0.1, counting what it serves."""
    s = Site().start()
    yield s
    s.stop()
