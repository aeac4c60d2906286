"""Shared fixtures: real databases (SQLite files, the local PostgreSQL and MariaDB servers) and
the test web site.

Each server test gets a schema (PostgreSQL) or database (MariaDB) of its own, dropped
afterwards. A server that cannot be reached is a skip on a developer's machine and a
failure under ``CI=true``, where both servers must be running.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import (
    FtpServer,
    S3Bucket,
    Site,
    free_port,
    mysql_database,
    postgres_database,
    start_ftp_server,
    wait_for_port,
)


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


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (no AWS anywhere)."""
    import os
    import shutil
    import subprocess
    import sys

    pytest.importorskip("s3fs")
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    if server is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]' s3fs)")
    port = free_port()
    proc = subprocess.Popen(
        [server, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port(port, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> S3Bucket:
    """A new bucket on the test S3 server."""
    import uuid

    bucket = S3Bucket(s3_endpoint, f"imgcache-{uuid.uuid4().hex[:12]}")
    bucket.client().create_bucket(Bucket=bucket.name)
    return bucket


@pytest.fixture
def ftp_server(tmp_path) -> Iterator[FtpServer]:
    root = tmp_path / "ftp-root"
    root.mkdir()
    server = start_ftp_server(root)
    yield server
    server.stop()
