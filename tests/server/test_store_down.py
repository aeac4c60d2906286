"""The database going away under a running server: 503 JSON, and the service recovers."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import text

from tests.forked import imgcache_server
from tests.helpers import POSTGRES_URL, fresh_jpegs, fresh_url, scratch

pytestmark = pytest.mark.postgres


def test_database_down_is_503_then_recovers(tmp_path):
    name = f"imgcache_down_{uuid.uuid4().hex[:10]}"
    terminate = f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    drop = [f"ALTER DATABASE {name} ALLOW_CONNECTIONS true", terminate, f"DROP DATABASE {name}"]
    with scratch(POSTGRES_URL, "PostgreSQL", f"CREATE DATABASE {name}", drop, isolation_level="AUTOCOMMIT") as admin:
        db_url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
        with imgcache_server(db_url, tmp_path) as server:
            (data,) = fresh_jpegs(1)
            chash = httpx.post(
                f"{server.url}/images", data={"url": fresh_url(), "client_name": "s"}, files={"file": ("a.jpg", data)}
            ).json()["content_hash"]
            with admin.connect() as conn:
                conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                conn.execute(text(terminate))
            resp = httpx.get(f"{server.url}/images/meta/{chash}", timeout=30)
            assert resp.status_code == 503
            assert resp.json()["error"] == "store_unavailable"
            assert httpx.get(f"{server.url}/health").status_code == 200
            with admin.connect() as conn:
                conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
            assert httpx.get(f"{server.url}/images/meta/{chash}", timeout=30).status_code == 200
