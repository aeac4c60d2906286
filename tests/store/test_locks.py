"""``store.locks.database_lock``, the one lock the schema's creation and a collection's changes
take: held across processes on each database, per key, released when its holder dies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest
from sqlalchemy import create_engine

from scrapy_imgcache.errors import StoreError
from scrapy_imgcache.store.locks import database_lock

HOLDER = textwrap.dedent(
    """
    import sys
    from sqlalchemy import create_engine
    from scrapy_imgcache.store.locks import database_lock

    url, kind, key = sys.argv[1:4]
    engine = create_engine(url)
    with database_lock(engine, kind, key, timeout=60):
        print("held", flush=True)
        sys.stdin.readline()  # held until the test says so (or kills this process)
    print("released", flush=True)
    """
)


def hold_in_another_process(url: str, kind: str, key: str) -> subprocess.Popen[str]:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, kind, key], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.fixture
def engine(db_url):
    engine = create_engine(db_url)
    yield engine
    engine.dispose()


def test_a_lock_held_by_another_process_is_refused_until_it_lets_go(engine, db_url):
    key = uuid.uuid4().hex  # (advisory locks are server-wide: other tests' keys are others)
    holder = hold_in_another_process(db_url, "collection", key)
    try:
        with pytest.raises(StoreError, match="busy"), database_lock(engine, "collection", key, timeout=0.2):
            pytest.fail("the lock was given while another process held it")
        ran = []
        if engine.dialect.name == "sqlite":  # one lock file a kind: SQLite writes one at a time anyway
            with pytest.raises(StoreError, match="busy"), database_lock(engine, "collection", "other", timeout=0.2):
                pytest.fail("the kind's lock file was given while another process held it")
            ran.append("other key")
        else:
            with database_lock(engine, "collection", uuid.uuid4().hex, timeout=5):  # another key: not blocked
                ran.append("other key")
        assert ran == ["other key"]
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        with database_lock(engine, "collection", key, timeout=30):
            ran.append("after release")
        assert ran == ["other key", "after release"]
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_that_dies_releases_the_lock(engine, db_url):
    key = uuid.uuid4().hex
    holder = hold_in_another_process(db_url, "schema", key)
    holder.kill()
    holder.wait()
    ran = []
    with database_lock(engine, "schema", key, timeout=60):
        ran.append("taken")
    assert ran == ["taken"]


def test_threads_of_one_process_exclude_each_other(engine):
    """The process's own lock comes first: a second thread is refused, not let in by a
    database lock the same process holds (MySQL's GET_LOCK is re-entrant per connection)."""
    import threading

    key = uuid.uuid4().hex
    refused: list[BaseException] = []

    def second() -> None:
        try:
            with database_lock(engine, "collection", key, timeout=0.2):
                pass
        except StoreError as exc:
            refused.append(exc)

    with database_lock(engine, "collection", key, timeout=5):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
    assert len(refused) == 1 and "busy" in str(refused[0])
