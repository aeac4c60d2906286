"""Engines and schema versions: how each database is opened so that many processes can share it.

SQLite: WAL (readers never wait for the writer), a busy timeout, and ``BEGIN IMMEDIATE`` for
write transactions so that two writers queue on the lock instead of one failing with
"database is locked" when it upgrades a read lock. PostgreSQL and MySQL/MariaDB need nothing
special here; their upserts live in the store.

The schema is created and migrated with Alembic on first use. Concurrent first uses are
serialised with ``locks.database_lock`` (an advisory lock on PostgreSQL, ``GET_LOCK`` on MySQL,
a lock file beside a SQLite database), so N processes starting at once create the tables once.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, insert, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    OperationalError,
    ProgrammingError,
    SQLAlchemyError,
)

from ..errors import ConfigError, StoreError
from .locks import database_lock, sqlite_file

if TYPE_CHECKING:
    from types import TracebackType

    from alembic.config import Config
    from sqlalchemy import Connection

logger = logging.getLogger(__name__)
VERSION_TABLE = "imgcache_alembic_version"
HEAD = "0004"
_MIGRATIONS = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: page cache of each connection in the SQLite pools of the per-image reads and writes: the
#: file is in the OS page cache anyway, and a dozen pooled connections at SQLite's default
#: 2 MiB each grew a crawl's RSS by ~20 MiB as the database grew (docs/crawl-benchmark.md)
HOT_POOL_CACHE_KIB = 512
#: seconds a first use waits for another process creating or migrating the schema (a
#: migration of a large cache on MySQL, whose DDL copies tables, takes a while)
SCHEMA_LOCK_TIMEOUT = 120.0


#: backend -> (the driver an extra installs, the extra)
EXTRAS = {"postgresql": ("psycopg", "postgres"), "mysql": ("pymysql", "mysql"), "mariadb": ("pymysql", "mysql")}


def make_engine(url: str, make_folder: bool = False) -> Engine:
    """An engine for ``url``. A SQLite file's folder must exist unless ``make_folder`` (the
    default location): a typo must not create folders anywhere."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"not a database URL: {url!r} ({exc})") from exc
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(url, make_folder)
        kwargs: dict[str, object] = {"pool_pre_ping": True, "pool_recycle": 3600}
        if parsed.get_backend_name() in ("mysql", "mariadb"):
            kwargs["isolation_level"] = "READ COMMITTED"
        return create_engine(url, **kwargs)
    except NoSuchModuleError as exc:
        raise ConfigError(f"no SQLAlchemy dialect for {parsed.drivername!r}: {exc}") from exc
    except ModuleNotFoundError as exc:
        raise ConfigError(f"the database driver for {parsed.drivername}:// is missing ({exc}){_hint(parsed)}") from exc


def _hint(url: URL) -> str:
    """How to get the driver ``url`` names: the extra that installs it, or the URL it serves."""
    backend, driver = url.get_backend_name(), url.get_driver_name()
    if backend not in EXTRAS:
        return ""
    served, extra = EXTRAS[backend]
    if driver == served:
        return f"; install it with pip install 'scrapy-imgcache[{extra}]'"
    return (
        f"; pip install 'scrapy-imgcache[{extra}]' installs {served}, which serves "
        f"{backend}+{served}:// URLs (or install the driver {url.drivername}:// needs yourself)"
    )


def _sqlite_engine(url: str, make_folder: bool) -> Engine:
    path = sqlite_file(make_url(url))
    if path:
        folder = Path(path).expanduser().parent
        if make_folder:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise StoreError(f"there is no image cache at {path}: the folder {folder} does not exist (IMGCACHE_URL)")
    engine = _sqlite_pool(url)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        mode = "IMMEDIATE" if conn.get_execution_options().get("imgcache_write") else "DEFERRED"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _sqlite_pool(url: str | URL, cache_kib: int | None = None, **kwargs: Any) -> Engine:
    """An engine on a SQLite file: WAL, a long busy timeout, and BEGIN left to the caller.

    ``cache_kib`` caps each connection's page cache (SQLite's default is 2 MiB a connection).
    """
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}, **kwargs
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # autocommit; transactions BEGIN explicitly (above)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        if cache_kib is not None:
            cur.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
        cur.close()

    return engine


def make_reading_engine(engine: Engine) -> Engine:
    """The pool for the per-image reads, which must cost well under a millisecond.

    Autocommit from the start, no ping on checkout and no rollback on return: on PostgreSQL
    the main engine's pre-ping, BEGIN, autocommit switch and reset cost ~0.6 ms of round
    trips a call; on SQLite its explicit BEGIN and ROLLBACK are two more statements around
    every SELECT. Each read is one statement (or a few that need no common snapshot), so
    autocommit loses nothing. Callers retry once on a connection the server dropped.
    MySQL/MariaDB, and an in-memory SQLite database (which lives in one connection), keep
    ``engine`` itself.
    """
    if sqlite_file(engine.url):
        return _sqlite_pool(
            engine.url, cache_kib=HOT_POOL_CACHE_KIB, isolation_level="AUTOCOMMIT", pool_reset_on_return=None
        )
    if engine.dialect.name == "postgresql":
        return create_engine(engine.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, pool_recycle=3600)
    return engine


def make_writing_engine(engine: Engine) -> tuple[Engine, str | None]:
    """The pool for the per-image write transactions, and the SQL that begins one (None:
    ``engine.begin()``).

    A SQLite file gets an autocommit pool and ``BEGIN IMMEDIATE`` sent as a plain statement:
    the main engine's "begin" listener (which sends its BEGIN) makes SQLAlchemy dispatch
    events around every statement, ~20 % of a ``put()``. Elsewhere the main engine's own
    transactions, marked as writes.
    """
    if sqlite_file(engine.url):
        return _sqlite_pool(engine.url, cache_kib=HOT_POOL_CACHE_KIB, isolation_level="AUTOCOMMIT"), "BEGIN IMMEDIATE"
    return engine.execution_options(imgcache_write=True), None


def current_revision(engine: Engine, attempts: int = 20) -> str | None:
    """The schema's revision; None before the first migration. A database that cannot be
    reached raises (connecting is outside the check for the table); a SQLite file another
    process holds locked while it creates the schema is asked again."""
    for attempt in range(attempts):
        try:
            conn = engine.connect()
        except OperationalError as exc:
            if "locked" not in str(exc.orig) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
            continue
        with conn:
            try:
                return conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
            except (OperationalError, ProgrammingError):  # no such table yet
                return None
    raise AssertionError("unreachable")


def ensure_schema(engine: Engine, create: bool = True) -> None:
    """Create or migrate the tables to the head revision, once, whoever else is trying.
    ``create=False``: a database without a cache is an error (commands that only read).

    Every step looks before it creates (``migrations/steps.py``), so a migration killed
    half-way on MySQL/MariaDB, whose DDL is not transactional, completes on the next start.
    """
    db = sqlite_file(engine.url)
    if not create and db is not None and not Path(db).expanduser().is_file():
        raise StoreError(f"there is no image cache at {db} (IMGCACHE_URL)")
    try:
        revision = current_revision(engine)
    except (OperationalError, InterfaceError) as exc:
        raise StoreError(f"cannot reach the database at {engine.url!r}: {driver_reason(exc)}") from exc
    if revision == HEAD:
        return
    if revision is None and not create:
        raise StoreError(f"the database at {engine.url!r} holds no image cache (IMGCACHE_URL)")
    try:
        with database_lock(engine, "schema", "", SCHEMA_LOCK_TIMEOUT):
            if current_revision(engine) == HEAD:
                return
            _upgrade(engine)
    except StoreError:
        raise
    except SQLAlchemyError as exc:
        raise StoreError(
            f"creating or migrating the cache schema at {engine.url!r} to revision {HEAD} failed: {driver_reason(exc)}"
        ) from exc


def _upgrade(engine: Engine) -> None:
    logger.info("imgcache: migrating the cache schema at %r to revision %s", engine.url, HEAD)
    alembic_log = logging.getLogger("alembic")
    level = alembic_log.level
    alembic_log.setLevel(logging.WARNING)  # its INFO lines (some logged on import) would flood the log
    try:
        from alembic import command

        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
    finally:
        alembic_log.setLevel(level)


def alembic_config(conn: Connection) -> Config:
    """Alembic's configuration for our migrations, run on ``conn``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def driver_reason(exc: SQLAlchemyError) -> str:
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


def cache_id(engine: Engine) -> str:
    """The cache's id, made on first use: what its blob folder is claimed with (see ``blobs.claim``)."""
    from .models import MetaRow

    query = select(MetaRow.value).where(MetaRow.name == "cache_id")
    with engine.connect() as conn:
        found = conn.execute(query).scalar()
    if found is None:
        try:
            with engine.begin() as conn:
                conn.execute(insert(MetaRow).values(name="cache_id", value=uuid.uuid4().hex))
        except IntegrityError:  # another process made it first: theirs is the id
            pass
        with engine.connect() as conn:
            found = conn.execute(query).scalar()
    return str(found)


class WriteTransaction:
    """A write transaction whose BEGIN is retried while the database stays locked past its
    busy timeout (or a lock wait times out).

    With ``begin_sql`` the engine is an autocommit pool and the transaction is plain SQL:
    ``begin_sql`` … ``COMMIT`` (or ``ROLLBACK``); see ``schema.make_writing_engine``.
    """

    _ctx: contextlib.AbstractContextManager[Connection]
    _conn: Connection

    def __init__(self, engine: Engine, begin_sql: str | None = None, attempts: int = 5) -> None:
        self.engine = engine
        self.begin_sql = begin_sql
        self.attempts = attempts

    def __enter__(self) -> Connection:
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                return self._begin()
            except OperationalError as exc:  # locked at BEGIN IMMEDIATE past the busy timeout
                if "locked" not in str(exc.orig):  # the database is gone, or full: not worth waiting for
                    raise
                last = exc
                time.sleep(0.05 * (attempt + 1))
        raise StoreError(f"database busy: {last}")

    def _begin(self) -> Connection:
        if self.begin_sql is None:
            self._ctx = self.engine.begin()
            return self._ctx.__enter__()
        conn = self.engine.connect()
        try:
            conn.exec_driver_sql(self.begin_sql)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        if self.begin_sql is None:
            return self._ctx.__exit__(exc_type, exc, tb)
        try:
            if exc_type is None:
                self._conn.exec_driver_sql("COMMIT")
            else:  # a failed ROLLBACK must not hide the error that caused it
                with contextlib.suppress(DBAPIError):
                    self._conn.exec_driver_sql("ROLLBACK")
        finally:
            self._conn.close()  # a failed COMMIT is rolled back as the connection returns
        return False
