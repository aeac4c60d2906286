"""The database going away under a running server: 503 JSON, and the service recovers."""

from __future__ import annotations

import uuid

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.conftest import POSTGRES_URL, _unreachable

from .conftest import fresh_jpegs, fresh_url
from .live import imgcache_server

pytestmark = pytest.mark.postgres


def test_database_down_is_503_then_recovers(tmp_path):
    name = f"imgcache_down_{uuid.uuid4().hex[:10]}"
    try:
        admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # noqa: BLE001 - any connection failure
        _unreachable("PostgreSQL", exc)
    db_url = POSTGRES_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        with imgcache_server(db_url, tmp_path) as server:
            (data,) = fresh_jpegs(1)
            chash = httpx.post(
                f"{server.url}/images", data={"url": fresh_url(), "client_name": "s"}, files={"file": ("a.jpg", data)}
            ).json()["content_hash"]
            with admin.connect() as conn:
                conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false"))
                conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            resp = httpx.get(f"{server.url}/images/meta/{chash}", timeout=30)
            assert resp.status_code == 503
            assert resp.json()["error"] == "store_unavailable"
            assert httpx.get(f"{server.url}/health").status_code == 200
            with admin.connect() as conn:
                conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
            assert httpx.get(f"{server.url}/images/meta/{chash}", timeout=30).status_code == 200
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true"))
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f"DROP DATABASE {name}"))
        admin.dispose()
