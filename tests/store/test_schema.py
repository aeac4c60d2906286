"""The schema is created on first use, versioned with Alembic, and created once under concurrency."""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from typing import Any

import pytest
from sqlalchemy import event, inspect, make_url, text

from scrapy_imgcache.errors import StoreError
from scrapy_imgcache.hashing import Inspector, content_hash
from scrapy_imgcache.store.base import NearQuery
from scrapy_imgcache.store.schema import (
    HEAD,
    VERSION_TABLE,
    alembic_config,
    current_revision,
    ensure_schema,
    make_engine,
)
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import distinct_jpegs, encode, photo, run_processes

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
        assert set(inspect(engine).get_table_names()) >= TABLES
        assert current_revision(engine) == HEAD
        ensure_schema(engine)  # again: nothing to do, nothing breaks
    finally:
        engine.dispose()
    assert versions(db_url) == [HEAD]


def test_a_cache_from_before_robust_search_is_migrated_and_keeps_working(db_url, tmp_path):
    """Revision 0004 adds signature columns; rows stored before it have none and are still found."""
    from alembic import command

    files = str(tmp_path / "files")
    old_data = encode(photo("coffee").convert("RGB"))
    store = SqlStore(db_url, files)
    old = store.put(
        old_data, url="https://x.example/old.jpg", client_name="t", info=Inspector(robust=False).inspect(old_data)
    )
    store.close()
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), "0003")  # the cache as the previous release left it
        assert "signature" not in {c["name"] for c in inspect(engine).get_columns("imgcache_images")}
        assert current_revision(engine) == "0003"
    finally:
        engine.dispose()
    store = SqlStore(db_url, files)  # migrates on open
    try:
        assert versions(db_url) == [HEAD]
        assert store.get_meta(old.entry.content_hash) == old.entry
        resized = Inspector().inspect(encode(photo("coffee").convert("RGB").resize((300, 200))))
        (hit,) = store.near(NearQuery.of(resized), 8)
        assert (hit.content_hash, hit.match) == (old.entry.content_hash, None)  # by its pHash alone
        new = store.put(encode(photo("rocket").convert("RGB")), url="https://x.example/new.jpg", client_name="t")
        assert store.near_cached(new.entry.content_hash, 8) == []
    finally:
        store.close()


def test_concurrent_first_use_creates_the_schema_once(db_url, tmp_path):
    run_processes(db_url, str(tmp_path / "files"), [[("open",)] for _ in range(4)])
    assert versions(db_url) == [HEAD]


#: run in a child process: create the schema (killed from outside at a random moment)
_CREATE = """
import sys
from scrapy_imgcache.store.schema import ensure_schema, make_engine
ensure_schema(make_engine(sys.argv[1]))
"""


class Killed(BaseException):
    """Stands for kill -9 in this process: nothing of ours may catch it, no clean-up of ours runs;
    the database is left as a killed client leaves it (its open transaction rolled back, DDL
    that MySQL/MariaDB committed on its own kept)."""


def create_schema_stopped_after(url: str, statements: int) -> int:
    """Create the schema, stopping dead after the N-th schema-changing statement; the number of
    such statements when it got through first (0 when it was stopped)."""
    engine = make_engine(url)
    seen = 0

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal seen
        if statement.lstrip().upper().startswith(("CREATE", "ALTER", "INSERT", "UPDATE", "DROP")):
            seen += 1
            if seen == statements:
                raise Killed

    event.listen(engine, "after_cursor_execute", count)
    try:
        ensure_schema(engine)
    except Killed:
        return 0
    finally:
        # a killed process's connections close: the server rolls back and unlocks. The one
        # Killed left checked out lives on in reference cycles (and SQLite's write lock with
        # it) until the collector runs, so run it now
        gc.collect()
        engine.dispose()
    return seen


def test_schema_creation_stopped_after_any_statement_completes_on_the_next_open(db_url, tmp_path):
    """MariaDB's DDL is not transactional: a kill half-way once left 'Table already exists' forever.
    There every cut point is tried, in-process; the test below kills real processes. SQLite and
    PostgreSQL create the schema in one transaction, so a cut anywhere must leave no table of
    ours: checked at the first, middle and last statements (all of them took 20-35 s a database)."""
    total = create_schema_stopped_after(db_url, 10**6)  # not stopped: how many statements it takes
    assert total > 8 and versions(db_url) == [HEAD]
    _drop_everything(db_url)
    transactional = make_url(db_url).get_backend_name() != "mysql"
    photo = distinct_jpegs(1)[0]
    for cut in (1, total // 2, total) if transactional else range(1, total + 1):
        assert create_schema_stopped_after(db_url, cut) == 0
        if transactional:
            assert not _tables_of_ours(db_url), cut
        store = SqlStore(db_url, str(tmp_path / f"files-{cut}"))  # completes what is missing
        try:
            assert store.put(photo, url=f"https://x.example/{cut}.jpg", client_name="t").created
            assert store.get_bytes(store.lookup(f"https://x.example/{cut}.jpg").content_hash) == photo
            assert store.delete(content_hash(photo))
        finally:
            store.close()
        assert versions(db_url) == [HEAD]
        _drop_everything(db_url)


def test_schema_creation_killed_at_random_moments_always_reopens(db_url, tmp_path):
    photo = distinct_jpegs(1)[0]
    for delay in (0.1, 0.4, 0.9):
        child = subprocess.Popen([sys.executable, "-c", _CREATE, db_url], stdout=subprocess.DEVNULL)
        time.sleep(delay)
        child.kill()
        child.wait()
        store = SqlStore(db_url, str(tmp_path / f"files-{delay}"))
        try:
            assert store.put(photo, url="https://x.example/a.jpg", client_name="t").entry.content_hash
        finally:
            store.close()
        _drop_everything(db_url)


def test_an_unreachable_database_and_a_failing_migration_say_which_it_was(tmp_path):
    with pytest.raises(StoreError, match="cannot reach the database"):
        ensure_schema(make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none"))
    db = tmp_path / "cache.sqlite3"
    engine = make_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # a table of that name, not ours, in the way of the first migration
        conn.execute(text("CREATE TABLE imgcache_urls (x INTEGER)"))
        conn.execute(text("CREATE VIEW imgcache_images AS SELECT 1 AS id"))
    with pytest.raises(StoreError, match=r"creating or migrating the cache schema .* failed"):
        ensure_schema(engine)
    engine.dispose()


def _tables_of_ours(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return {name for name in inspect(engine).get_table_names() if name.startswith("imgcache_")}
    finally:
        engine.dispose()


def _drop_everything(url: str) -> None:
    engine = make_engine(url)
    try:
        names = set(inspect(engine).get_table_names())
        with engine.begin() as conn:
            for table in ("imgcache_collection_images", "imgcache_collections", "imgcache_urls", *sorted(names)):
                if table in names:
                    conn.execute(text(f"DROP TABLE {table}"))
                    names.discard(table)
    finally:
        engine.dispose()
