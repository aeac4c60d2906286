"""Named locks every thread and process sharing a cache's database sees.

:func:`database_lock` is the one implementation: the schema's creation (``schema.py``) and a
VisualSnoop collection's changes (``visualsnoop/images.py``) both take it. First a lock of
this process, so that its threads wait without holding a database connection, then one other
processes see: an advisory lock on PostgreSQL, ``GET_LOCK`` on MySQL/MariaDB, an ``flock`` on
a file beside a SQLite database. Each is held by a connection (or an open file), so a process
that dies releases it; a connection whose release failed is closed rather than pooled with
the lock still held.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from ..errors import StoreError

_local_guard = threading.Lock()
_local_locks: dict[tuple[str, str, str], threading.Lock] = {}
#: how often a waiter for a SQLite lock file tries again (flock has no timeout of its own)
_POLL_SECONDS = 0.005


def sqlite_file(url: URL) -> str | None:
    """The file of a SQLite database URL; None for other databases and in-memory ones."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return url.database


@contextlib.contextmanager
def database_lock(engine: Engine, kind: str, key: str, timeout: float) -> Iterator[None]:
    """Hold the lock ``kind``/``key`` for every thread and process using ``engine``'s database.

    ``kind`` names what is locked (``"schema"``, ``"collection"``); ``key`` which one of them
    (the empty string for a single one). On SQLite, where writes are serialised anyway, one
    file serves every key of a kind: ``<database>.<kind>-lock``. :class:`StoreError` after
    ``timeout`` seconds of waiting, whoever holds it.
    """
    deadline = time.monotonic() + timeout
    busy = f"the {kind} lock{f' {key}' if key else ''} of {engine.url!r} has been busy for {timeout:.0f} s; try again"
    with _local_guard:
        local = _local_locks.setdefault((str(engine.url), kind, key), threading.Lock())
    if not local.acquire(timeout=timeout):
        raise StoreError(busy)
    try:
        dialect = engine.dialect.name
        if dialect == "sqlite":
            with _file_lock(sqlite_file(engine.url), kind, deadline, busy):
                yield
        elif dialect in ("postgresql", "mysql", "mariadb"):
            remaining = max(deadline - time.monotonic(), 0.001)
            with _server_lock(engine, f"imgcache:{kind}:{key}", remaining, busy):
                yield
        else:  # pragma: no cover - another database: the process's lock only
            yield
    finally:
        local.release()


@contextlib.contextmanager
def _server_lock(engine: Engine, name: str, timeout: float, busy: str) -> Iterator[None]:
    """PostgreSQL's session advisory lock or MySQL's ``GET_LOCK``, held by one connection."""
    params: dict[str, Any]
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            params = {"key": int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)}
            conn.execute(text(f"SET LOCAL lock_timeout = {max(int(timeout * 1000), 1)}"))
            try:
                conn.execute(text("SELECT pg_advisory_lock(:key)"), params)
            except OperationalError as exc:  # lock_timeout
                raise StoreError(busy) from exc
            release = text("SELECT pg_advisory_unlock(:key)")
        else:
            params = {"name": hashlib.sha256(name.encode()).hexdigest(), "timeout": timeout}  # 64: MySQL's limit
            if conn.execute(text("SELECT GET_LOCK(:name, :timeout)"), params).scalar() != 1:
                raise StoreError(busy)
            release = text("SELECT RELEASE_LOCK(:name)")
        conn.commit()  # (the lock outlives the transaction; an open one would pin a snapshot)
        try:
            yield
        finally:
            try:
                conn.execute(release, params)
                conn.commit()
            except BaseException:
                conn.invalidate()  # a pooled connection must not keep the lock: close it
                raise


@contextlib.contextmanager
def _file_lock(db: str | None, kind: str, deadline: float, busy: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``<db>.<kind>-lock``; an in-memory database lives in one
    process, whose lock is enough."""
    if db is None:
        yield
        return
    import fcntl

    with open(os.fspath(Path(db).expanduser()) + f".{kind}-lock", "a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(busy) from None
                time.sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
