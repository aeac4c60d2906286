"""Shared fixtures: real databases (SQLite files, the local PostgreSQL and MariaDB servers).

Each server test gets a schema (PostgreSQL) or database (MariaDB) of its own, dropped
afterwards. A server that cannot be reached is a skip on a developer's machine and a
failure under ``CI=true``, where both servers must be running.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

POSTGRES_URL = os.environ.get("IMGCACHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("IMGCACHE_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _unreachable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {exc}"
    if IN_CI:
        pytest.fail(message + " (CI=true: the database servers must be running)")
    pytest.skip(message)


@contextlib.contextmanager
def scratch(admin_url: str, what: str, create: str, drop: list[str], **engine_options: Any) -> Iterator[Engine]:
    """Run ``create`` (a schema or database of the test's own), yield the admin engine, then ``drop``."""
    try:
        admin = create_engine(admin_url, **engine_options)
        with admin.connect() as conn:
            conn.execute(text(create))
            conn.commit()
    except Exception as exc:  # noqa: BLE001 - any connection failure
        _unreachable(what, exc)
    try:
        yield admin
    finally:
        with admin.connect() as conn:
            for statement in drop:
                conn.execute(text(statement))
            conn.commit()
        admin.dispose()


def _postgres_url() -> Iterator[str]:
    name = f"imgcache_t{uuid.uuid4().hex[:12]}"
    sep = "&" if "?" in POSTGRES_URL else "?"
    with scratch(
        POSTGRES_URL, "PostgreSQL", f"CREATE SCHEMA {name}", [f"DROP SCHEMA {name} CASCADE"],
        isolation_level="AUTOCOMMIT",
    ):
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{name}"


def _mysql_url() -> Iterator[str]:
    name = f"imgcache_t{uuid.uuid4().hex[:12]}"
    base = MYSQL_URL.rsplit("/", 1)[0]
    with scratch(MYSQL_URL, "MariaDB/MySQL", f"CREATE DATABASE {name} CHARACTER SET utf8mb4", [f"DROP DATABASE {name}"]):
        yield f"{base}/{name}?charset=utf8mb4"


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'cache.sqlite3'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    yield from _postgres_url()


@pytest.fixture
def mysql_url() -> Iterator[str]:
    yield from _mysql_url()


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
        yield from _postgres_url()
    else:
        yield from _mysql_url()


@pytest.fixture
def store(db_url, tmp_path):
    from scrapy_imgcache.store import SqlStore

    s = SqlStore(db_url, str(tmp_path / "files"))
    yield s
    s.close()
