"""The schema is created on first use, versioned with Alembic, and created once under concurrency."""

from __future__ import annotations

from sqlalchemy import inspect, text

from scrapy_imgcache.schema import HEAD, VERSION_TABLE, current_revision, ensure_schema, make_engine
from scrapy_imgcache.store import SqlStore

from .procs import run_processes

TABLES = {"imgcache_images", "imgcache_urls", VERSION_TABLE}


def versions(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())
    finally:
        engine.dispose()


def test_first_use_creates_the_versioned_schema(db_url, tmp_path):
    engine = make_engine(db_url)
    try:
        assert current_revision(engine) is None
        assert not TABLES & set(inspect(engine).get_table_names())
        SqlStore(db_url, str(tmp_path / "files")).close()
        assert TABLES <= set(inspect(engine).get_table_names())
        assert current_revision(engine) == HEAD
        ensure_schema(engine)  # again: nothing to do, nothing breaks
    finally:
        engine.dispose()
    assert versions(db_url) == [HEAD]


def test_concurrent_first_use_creates_the_schema_once(db_url, tmp_path):
    run_processes(db_url, str(tmp_path / "files"), [[("open",)] for _ in range(4)])
    assert versions(db_url) == [HEAD]
