"""``SqlStore``: the cache in a SQL database (metadata) and a blob store (bytes).

SQLAlchemy 2 over SQLite (the default), PostgreSQL or MySQL/MariaDB; the bytes of each
distinct image are stored once in a :mod:`~scrapy_imgcache.blobs` store, before the row that
points at them. Engines and the schema are in :mod:`.schema`, the tables in :mod:`.models`,
the in-memory similarity index in :mod:`.index`.

Every method blocks: Scrapy components call them in threads.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    Select,
    delete,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from ..errors import StoreError
from ..hashing import ImageInfo, Inspector, content_hash
from .base import (
    HASH_RE,
    Answer,
    Entry,
    NearQuery,
    PutResult,
    as_utc,
    utcnow,
    validate_bucket,
    validate_distance,
    validate_phash,
    validate_url,
)
from .blobs import (
    BlobStore,
    blob_key,
    claim,
    hash_of_key,
    open_blob_store,
    storage_options,
)
from .gc import GarbageCollection
from .index import (
    SLOT_KINDS,
    pack_hashes,
    to_signed,
    unpack_hashes,
)
from .models import ImageRow, UrlRow
from .nearpolicy import link_hints
from .nearpolicy import search as near_search
from .reports import Reports
from .schema import (
    WriteTransaction,
    cache_id,
    driver_reason,
    ensure_schema,
    make_engine,
    make_reading_engine,
    make_writing_engine,
)
from .shared import FOLD_MIN, SharedIndex
from .statements import (
    BLOB_KEY,
    ENTRY,
    IMAGE_ID,
    LATEST_ROWS,
    LOOKUP,
    NEAR_LINKS,
    NEAR_SOURCE,
    SIGNATURES,
    insert_ignore_stmt,
    joined,
    to_entry,
    upsert_url_stmt,
)

if TYPE_CHECKING:
    from sqlalchemy import Connection, CursorResult, Engine

    from ..config import ImgCacheConfig
    from .models import Base

T = TypeVar("T")
logger = logging.getLogger(__name__)
C = TypeVar("C", bound=type)
#: times a write runs again when a concurrent delete of the same image gets in its way
_RACE_ATTEMPTS = 8


def _store_errors(cls: C) -> C:
    """Every public method of ``cls`` raises :class:`StoreError` for a failure of the database
    (a connection reset or refused, "database or disk is full", a pool with no connection to
    spare, a lock wait that timed out...), with the driver's reason: callers handle one error,
    so ``IMGCACHE_ON_STORE_ERROR`` applies to every step of an image, and the blob stores raise
    the same for their files. Here, once, rather than at each call site; what a method handles
    itself (a deadlock retried, a race with a delete) it handles inside. (The extra frame costs
    ~0.12 µs a call, measured with ``timeit``: 0.06 % of a SQLite ``lookup()``'s ~200 µs.)"""
    for part in reversed(cls.__mro__[:-1]):  # its own methods and its parts' (reports, gc)
        for name, method in list(vars(part).items()):
            if not name.startswith("_") and callable(method):  # (a classmethod is not: from_config)
                setattr(cls, name, _translating(method))
    return cls


def _translating(method: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(method)
    def translated(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except SQLAlchemyError as exc:
            raise StoreError(f"the database failed: {driver_reason(exc)}") from exc

    return translated


@_store_errors
class SqlStore(Reports, GarbageCollection):
    """The cache in a SQL database (metadata) and a blob store (bytes)."""

    def __init__(
        self,
        url: str,
        files: str | BlobStore,
        inspector: Inspector | None = None,
        *,
        create: bool = True,
        make_folder: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        index_dir: str | None = None,
        index_fold_min: int = FOLD_MIN,
    ) -> None:
        """``create=False``: open an existing cache only (its database and its files);
        ``make_folder``: a SQLite file's folder is made when missing (the default location);
        ``storage_options``: fsspec's, for ``files`` in object storage; ``index_dir``: the
        folder of the similarity index file the processes of a host share (None: beside a
        SQLite file, else no file: each process loads the index itself); ``index_fold_min``:
        the entries from which it is written (see :mod:`.shared`)."""
        self.url = url
        self.inspector = inspector or Inspector()
        self.engine = make_engine(url, make_folder and create)
        ensure_schema(self.engine, create)
        self.blobs: BlobStore = open_blob_store(files, storage_options, create) if isinstance(files, str) else files
        #: this cache's id: its blob store is claimed with it, so no other cache shares it
        self.cache_id = cache_id(self.engine)
        claim(self.blobs, self.cache_id, self.engine.url.render_as_string(hide_password=True))
        self._dialect = self.engine.dialect.name
        # per-image reads and writes run on their own pools where that saves per-statement
        # work (see make_reading_engine and make_writing_engine)
        self._reader = make_reading_engine(self.engine)
        self._writer, self._begin_sql = make_writing_engine(self.engine)
        # one engine a connection pool (the reader or writer may be the main engine itself)
        self._pools = list({e.pool: e for e in (self.engine, self._reader, self._writer)}.values())
        self._index = SharedIndex(
            self.engine,
            self._dialect == "postgresql",
            self.cache_id,
            _index_folder(self.engine, index_dir),
            index_fold_min,
        )

    @classmethod
    def from_config(cls, config: ImgCacheConfig, create: bool = True) -> SqlStore:
        """The database ``IMGCACHE_URL`` names, with its bytes at ``IMGCACHE_FILES_STORE`` (in
        object storage, configured by Scrapy's ``AWS_*``/``GCS_*``/``FTP_*`` settings). Opening
        reads the folder's owner marker (and writes it the first time), so a location that
        cannot be reached, or bad credentials, stop a crawl at its start; a folder already
        claimed is not written to, so a full or read-only disk can still be read and collected."""
        return cls(
            config.url,
            config.files_store,
            inspector=config.inspector(),
            create=create,
            make_folder=config.url_is_default,
            storage_options=storage_options(config.files_store, config.storage_settings),
            index_dir=config.index_dir or None,
        )

    def __repr__(self) -> str:
        return f"SqlStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        for pool in self._pools:
            pool.dispose()

    # -- writing -------------------------------------------------------------------------

    def put(
        self,
        data: bytes,
        *,
        url: str,
        client_name: str,
        bucket: str = "",
        lookup_time: datetime | None = None,
        filename: str | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        info: ImageInfo | None = None,
        similar_to: str | None = None,
        similar_distance: int | None = None,
        similar_match: str | None = None,
    ) -> PutResult:
        validate_bucket(bucket)
        validate_url(url)
        if info is None:
            info = self.inspector.inspect(data)
        elif info.size != len(data):  # (hashing them again to be sure cost ~0.3 ms an image)
            raise ValueError("the ImageInfo given does not describe these bytes")
        now = utcnow()
        lookup_time = as_utc(lookup_time) if lookup_time else now
        key = blob_key(info.content_hash, info.extension)
        values = _image_row(
            info, bucket, key, (filename or None) and filename[:255], client_name[:255], lookup_time, now
        )
        values.update(similar_to=similar_to, similar_distance=similar_distance, similar_match=similar_match)
        url_values = {
            "bucket": bucket, "url": url, "client_name": client_name, "lookup_time": lookup_time, "etag": etag,
            "last_modified": last_modified, "created_at": now,
        }  # fmt: skip
        # bytes first, held until the row is written: a row never points at nothing, and the
        # garbage collector never takes bytes whose row is on its way
        with self.blobs.hold(key, data):
            created = self._insert_image_and_url(values, url_values, info)
        found = None if created else self._entry(bucket, info.content_hash, url=url, client_name=client_name)
        if found is not None:  # the image row is someone else's: its fields are the stored ones
            return PutResult(found, created)
        # the row is what we just wrote (or it was deleted again since: then it was stored, and gone)
        return PutResult(_written_entry(values, url_values, created), created)

    def _insert_image_and_url(self, values: dict[str, Any], url_values: dict[str, Any], info: ImageInfo) -> bool:
        """The image row (unless these bytes have one) and the URL record, in one transaction;
        True when the image row is new. A delete of the same image can land between the two
        (a foreign-key error, or a row found and gone): the transaction runs again, and then
        stores the image anew."""

        def work(conn: Connection) -> bool | None:
            image_id = self._insert_ignore(conn, ImageRow, values)
            created = image_id is not None
            if image_id is None:  # these bytes were there already
                image_id = self._image_id(conn, values["bucket"], info.content_hash)
            if image_id is None:  # ...and were deleted since: again
                return None
            self._upsert_url(
                conn,
                image_id=image_id,
                duplicate=None if created else "exact",
                saved_bytes=0 if created else info.size,
                **url_values,
            )
            return created

        for attempt in range(_RACE_ATTEMPTS):
            if attempt:  # a random pause: a deleter in step with us would win every time
                time.sleep(random.uniform(0, 0.002 * attempt))
            try:
                created = self._transaction(work)
            except IntegrityError:
                if attempt == _RACE_ATTEMPTS - 1:
                    raise
                continue
            if created is not None:
                return created
        raise StoreError(f"image {info.content_hash} kept being deleted while it was stored; try again")

    def record_url(
        self,
        content_hash: str,
        *,
        url: str,
        client_name: str,
        bucket: str = "",
        lookup_time: datetime | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        duplicate: str | None = None,
        saved_bytes: int = 0,
    ) -> Entry | None:
        """Note that ``url`` answered with an image already cached (a 304, a skipped near-dup);
        None when the image is not there (or is deleted meanwhile)."""
        validate_bucket(bucket)
        validate_url(url)

        def work(conn: Connection) -> bool:
            image_id = self._image_id(conn, bucket, content_hash)
            if image_id is None:
                return False
            self._upsert_url(
                conn,
                image_id=image_id,
                bucket=bucket,
                url=url,
                client_name=client_name,
                lookup_time=lookup_time or utcnow(),
                etag=etag,
                last_modified=last_modified,
                duplicate=duplicate,
                saved_bytes=saved_bytes,
            )
            return True

        try:
            if not self._transaction(work):
                return None
        except IntegrityError:  # the image row was deleted between the two statements
            return None
        return self._entry(bucket, content_hash, url=url, client_name=client_name)

    def put_bytes(self, data: bytes, info: ImageInfo) -> None:
        """The atomic, fsync'd write of the bytes, ahead of the ``put`` that records them:
        callers run it in parallel with other images, outside their own locks."""
        self.blobs.put(blob_key(info.content_hash, info.extension), data)

    def delete(self, content_hash: str, bucket: str = "") -> bool:
        validate_bucket(bucket)
        return self._delete(bucket, content_hash)

    def _delete(self, bucket: str, content_hash: str, unless: Callable[[Connection, int], bool] | None = None) -> bool:
        """Delete an image's rows (and its blob, when no bucket holds those bytes any more);
        ``unless(connection, image id)``, asked with the image row locked (a writer recording
        a URL for it waits), keeps it."""

        stmt = select(ImageRow.id, ImageRow.blob_key).where(
            ImageRow.bucket == bucket, ImageRow.content_hash == content_hash
        )
        if unless is not None:
            stmt = stmt.with_for_update()

        def work(conn: Connection) -> tuple[Any, Any]:
            row = conn.execute(stmt).first()
            if row is None or (unless is not None and unless(conn, row.id)):
                return None, None
            conn.execute(delete(UrlRow).where(UrlRow.image_id == row.id))
            if conn.execute(delete(ImageRow).where(ImageRow.id == row.id)).rowcount != 1:
                # a concurrent delete removed it since the select (PostgreSQL's and MariaDB's
                # DELETE waits for that one's commit, then finds nothing): it is that one's
                return None, None
            used = conn.execute(select(ImageRow.id).where(ImageRow.content_hash == content_hash).limit(1)).first()
            return row, used

        row, still_used = self._transaction(work)
        if row is None:
            return False
        self._index.forget(row.id)
        if still_used is None:  # the same bytes may live on in another bucket
            self.remove_blob(row.blob_key)
        return True

    def remove_blob(self, key: str) -> bool:
        """Delete a blob no row references, without losing it to a ``put`` that commits meanwhile:
        ``put`` holds its blob until its row is written (see ``BlobStore.hold``), and the rows
        are looked for while the blob cannot be taken."""

        def unused() -> bool:
            with self.engine.connect() as conn:
                stmt = select(ImageRow.id).where(ImageRow.content_hash == hash_of_key(key)).limit(1)
                return conn.execute(stmt).first() is None

        return self.blobs.remove_if(key, unused)

    def _write(self) -> WriteTransaction:
        return WriteTransaction(self._writer, self._begin_sql)

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` in one write transaction, run again when the database picked
        it as a deadlock's victim (MySQL/MariaDB and PostgreSQL do, under concurrent writers)."""
        for attempt in range(_RACE_ATTEMPTS):
            try:
                with self._write() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if not _deadlock(exc) or attempt == _RACE_ATTEMPTS - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _image_id(self, conn: Connection, bucket: str, chash: str) -> int | None:
        image_id: int | None = conn.execute(IMAGE_ID, {"bucket": bucket, "chash": chash}).scalar()
        return image_id

    def _insert_ignore(self, conn: Connection, model: type[Base], values: dict[str, Any]) -> int | None:
        """Insert unless the unique key exists; the new row's id, or None when it existed."""
        if self._dialect in ("sqlite", "postgresql"):
            new_id: int | None = conn.execute(insert_ignore_stmt(self._dialect, model.__table__), values).scalar()
            return new_id
        if self._dialect in ("mysql", "mariadb"):
            result = conn.execute(insert_ignore_stmt(self._dialect, model.__table__), values)
            return _inserted_id(result) if result.rowcount == 1 else None
        # pragma: no cover - other dialects: plain insert, duplicate key means "exists"
        try:
            with conn.begin_nested():
                return _inserted_id(conn.execute(model.__table__.insert().values(**values)))
        except IntegrityError:
            return None

    def _upsert_url(self, conn: Connection, **values: Any) -> None:
        values["url_hash"] = content_hash(values["url"].encode("utf-8", "surrogatepass"))
        values["client_name"] = values["client_name"][:255]
        values.setdefault("created_at", utcnow())  # a new image's first URL: the image's own time
        refresh = {k: values[k] for k in ("lookup_time", "etag", "last_modified")}
        key = {k: values[k] for k in ("image_id", "url_hash", "client_name")}
        if self._dialect in ("sqlite", "postgresql", "mysql", "mariadb"):
            conn.execute(upsert_url_stmt(self._dialect), values)
        else:  # pragma: no cover
            done = conn.execute(update(UrlRow).filter_by(**key).values(**refresh)).rowcount
            if not done:
                conn.execute(UrlRow.__table__.insert().values(**values))

    # -- reading -------------------------------------------------------------------------

    def get_bytes(self, content_hash: str, bucket: str = "") -> bytes | None:
        key = self._read(lambda conn: conn.execute(BLOB_KEY, {"bucket": bucket, "chash": content_hash}).scalar())
        return None if key is None else self.read_blob(key)

    def read_blob(self, key: str) -> bytes | None:
        """A blob's bytes, checked against the hash they are stored under: bytes that no longer
        match (edited through a hard link an older version placed, damaged on disk) are
        deleted, so that the image is fetched and written again, and None is returned.
        BLAKE2b costs ~0.04/0.2/0.5 ms for a 14/80/213 KB image here, outside the GIL, next to
        ~1.2 ms of crawl-process CPU a cache hit (docs/store.md)."""
        data = self.blobs.get(key)
        if data is None or content_hash(data) == hash_of_key(key):
            return data
        logger.warning(
            "imgcache: %s does not hold the bytes of its hash (changed or damaged on disk): deleted, to fetch again",
            self.blobs.describe(key),
        )
        self.blobs.delete(key)
        return None

    def get_meta(self, content_hash: str, bucket: str = "") -> Entry | None:
        return self._entry(bucket, content_hash)

    def has_bytes(self, entry: Entry) -> bool:
        return bool(entry.path) and self.blobs.exists(entry.path or "")

    def answer(self, url: str, *, bucket: str, client_name: str, fresh_since: datetime) -> Answer | None:
        entry = self.lookup(url, bucket)
        if entry is None or entry.lookup_time <= fresh_since:
            return None if entry is None else Answer(entry, None)
        body = self.read_blob(entry.path) if entry.path else None
        if body is None:  # the row outlived its bytes (see collect_garbage): fetch it again
            return Answer(entry, None, damaged=True)
        if client_name and entry.client_name != client_name[:255]:
            self.record_url(
                entry.content_hash,
                duplicate=entry.duplicate,
                url=url,
                client_name=client_name,
                bucket=bucket,
                lookup_time=entry.lookup_time,
                etag=entry.etag,
                last_modified=entry.last_modified,
            )
        return Answer(entry, body)

    def lookup(self, url: str, bucket: str = "") -> Entry | None:
        url_hash = content_hash(url.encode("utf-8", "surrogatepass"))
        return self._first(LOOKUP, {"bucket": bucket, "url_hash": url_hash, "url": url})

    def search(self, url_contains: str, bucket: str = "", limit: int = 100) -> list[Entry]:
        stmt = (
            joined()
            .where(UrlRow.bucket == bucket, UrlRow.url.contains(url_contains, autoescape=True))
            .order_by(UrlRow.lookup_time.desc(), UrlRow.id.desc())
            .limit(limit)
        )
        return self._all(stmt)

    def urls(self, content_hash: str, bucket: str = "") -> list[Entry]:
        """Every URL record of one image, most recent first."""
        stmt = (
            joined()
            .where(ImageRow.bucket == bucket, ImageRow.content_hash == content_hash)
            .order_by(UrlRow.lookup_time.desc(), UrlRow.id.desc())
        )
        return self._all(stmt)

    def similar(
        self,
        perceptual_hash: str,
        max_distance: int = 4,
        bucket: str = "",
        limit: int = 100,
        algorithm: str = "phash",
    ) -> list[Entry]:
        """Images whose hash is within ``max_distance`` bits, nearest first (flat ones never)."""
        validate_phash(perceptual_hash)
        validate_distance(max_distance)
        return self._read(lambda conn: self._similar(conn, perceptual_hash, max_distance, bucket, limit, algorithm))

    def _similar(
        self, conn: Connection, perceptual_hash: str, max_distance: int, bucket: str, limit: int, algorithm: str
    ) -> list[Entry]:
        (hits,) = self._index.query(bucket, algorithm, [(int(perceptual_hash, 16), max_distance)], conn)
        stored = [(image_id, dist) for image_id, slot, dist in hits if slot == 0]  # the stored hashes only
        return self._entries(conn, stored, limit)

    def _entries(
        self, conn: Connection, found: Sequence[tuple[int, int]], limit: int, matches: Mapping[int, str | None] = {}
    ) -> list[Entry]:
        """Entries of the images ``found`` as (image id, distance), in that order, with their
        ``match``; images deleted since the index saw them are left out."""
        out: list[Entry] = []
        for start in range(0, len(found), max(limit, 1)):
            chunk = found[start : start + max(limit, 1)]
            by_id = self._latest_rows([i for i, _ in chunk], conn)
            for image_id, dist in chunk:
                row = by_id.get(image_id)
                if row is not None:  # deleted since the index saw it
                    out.append(to_entry(row, dist, matches.get(image_id)))
            if len(out) >= limit:
                break
        return out[:limit]

    def near(self, query: NearQuery, max_distance: int = 8, bucket: str = "", limit: int = 100) -> list[Entry]:
        """Candidates the query's hashes find in the index (its perceptual hash within
        ``max_distance`` bits of any entry, its extra query hashes within
        ``nearpolicy.EXTRA_DISTANCE``), verified against their stored signatures (read from the
        database, never from the blobs; the policy is :mod:`.nearpolicy`'s); best verification
        score first. Images without a signature (stored before robust search,
        or in ``phash`` mode) count when their stored hash is within ``max_distance``."""
        validate_phash(query.perceptual_hash)
        validate_distance(max_distance)
        if query.signature is None:
            return self.similar(query.perceptual_hash, max_distance, bucket, limit, query.algorithm)
        return self._read(lambda conn: near_search(_NearRows(self, conn), query, max_distance, bucket, limit))

    def near_cached(
        self, content_hash: str, max_distance: int = 8, bucket: str = "", limit: int = 100
    ) -> list[Entry] | None:
        """:meth:`near` for a cached image, from what its row keeps (its hashes and signature,
        and the near-duplicate links recorded when images were stored); itself left out."""
        validate_distance(max_distance)
        if not HASH_RE.match(content_hash):
            return None
        return self._read(lambda conn: self._near_cached(conn, content_hash, max_distance, bucket, limit))

    def _near_cached(
        self, conn: Connection, content_hash: str, max_distance: int, bucket: str, limit: int
    ) -> list[Entry] | None:
        row = conn.execute(NEAR_SOURCE, {"bucket": bucket, "chash": content_hash}).first()
        if row is None:
            return None
        image_id, phash, algorithm, flat, signature, extra = row
        if flat or phash is None:
            return []
        hashes = tuple((SLOT_KINDS[slot], value) for slot, value in unpack_hashes(extra))
        query = NearQuery(phash, algorithm, signature, hashes)
        if signature is None:  # phash mode, or stored before it: the stored hash alone, as before
            hits = self._similar(conn, phash, max_distance, bucket, limit + 1, algorithm)
            return [e for e in hits if e.content_hash != content_hash][:limit]
        linked = {
            linked_id: (dist or 0, link_hints(how))
            for linked_id, dist, how in conn.execute(NEAR_LINKS, {"bucket": bucket, "chash": content_hash})
        }
        return near_search(_NearRows(self, conn), query, max_distance, bucket, limit, linked, leave_out=image_id)

    # -- rows to entries -------------------------------------------------------------------

    def _entry(self, bucket: str, chash: str, url: str | None = None, client_name: str | None = None) -> Entry | None:
        params = {"bucket": bucket, "chash": chash}
        if url is not None:
            params["url_hash"] = content_hash(url.encode("utf-8", "surrogatepass"))
            if client_name is not None:
                params["client_name"] = client_name[:255]
        return self._first(ENTRY[url is not None, url is not None and client_name is not None], params)

    def _latest_by_image(self, image_ids: Sequence[int]) -> dict[int, Entry]:
        if not image_ids:
            return {}
        with self.engine.connect() as conn:
            return {image_id: to_entry(row) for image_id, row in self._latest_rows(image_ids, conn).items()}

    def _latest_rows(self, image_ids: Sequence[int], conn: Connection) -> dict[int, Any]:
        """Each image's row joined with its most recent URL record, by image id."""
        if not image_ids:
            return {}
        stmt = LATEST_ROWS[self._dialect == "postgresql"]
        return {row.image_id: row for row in conn.execute(stmt, {"image_ids": list(image_ids)})}

    def _first(self, stmt: Select[Any], params: dict[str, Any] | None = None) -> Entry | None:
        row = self._read(lambda conn: conn.execute(stmt, params or {}).first())
        return None if row is None else to_entry(row)

    def _read(self, work: Callable[[Connection], T]) -> T:
        """``work(connection)`` on the reading pool, which does not ping: a connection the
        server dropped is retried once."""
        try:
            with self._reader.connect() as conn:
                return work(conn)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        with self._reader.connect() as conn:
            return work(conn)

    def _all(self, stmt: Select[Any]) -> list[Entry]:
        with self.engine.connect() as conn:
            return [to_entry(r) for r in conn.execute(stmt)]


class _NearRows:
    """The store's side of :func:`.nearpolicy.search`, over one connection."""

    def __init__(self, store: SqlStore, conn: Connection) -> None:
        self.store, self.conn = store, conn

    def probe(self, bucket: str, algorithm: str, probes: Sequence[tuple[int, int]]) -> list[list[tuple[int, int, int]]]:
        return self.store._index.query(bucket, algorithm, probes, self.conn)

    def signatures(self, image_ids: Sequence[int]) -> dict[int, bytes | None]:
        return {row[0]: row[1] for row in self.conn.execute(SIGNATURES, {"image_ids": list(image_ids)})}

    def entries(self, found: Sequence[tuple[int, int]], limit: int, matches: Mapping[int, str | None]) -> list[Entry]:
        return self.store._entries(self.conn, found, limit, matches)


def _image_row(
    info: ImageInfo, bucket: str, key: str, filename: str | None, client: str, lookup_time: datetime, now: datetime
) -> dict[str, Any]:
    """The images row of a new image (``similar_*`` added by the caller)."""
    return {
        "bucket": bucket,
        "content_hash": info.content_hash,
        "content_type": info.content_type,
        "file_size": info.size,
        "width": info.width,
        "height": info.height,
        "perceptual_hash": info.perceptual_hash,
        "phash_int": to_signed(int(info.perceptual_hash, 16)),
        "hash_algorithm": info.algorithm,
        "flat": info.flat,
        "blob_key": key,
        "original_filename": filename,
        "client_name": client,
        "lookup_time": lookup_time,
        "created_at": now,
        "signature": info.signature,
        "extra_hashes": pack_hashes(info.index_hashes, info.query_hashes),
    }


def _written_entry(values: dict[str, Any], url_values: dict[str, Any], created: bool) -> Entry:
    """The Entry of the rows just written, without reading them back."""
    return Entry(
        url=url_values["url"],
        content_hash=values["content_hash"],
        content_type=values["content_type"],
        file_size_bytes=values["file_size"],
        original_filename=values["original_filename"],
        width=values["width"],
        height=values["height"],
        perceptual_hash=values["perceptual_hash"],
        client_name=values["client_name"],
        lookup_time=values["lookup_time"],
        created_at=values["created_at"],
        bucket=values["bucket"],
        hash_algorithm=values["hash_algorithm"],
        flat=values["flat"],
        etag=url_values["etag"],
        last_modified=url_values["last_modified"],
        path=values["blob_key"],
        similar_to=values["similar_to"],
        similar_distance=values["similar_distance"],
        similar_match=values["similar_match"],
        duplicate=None if created else "exact",
        first_seen=values["created_at"],
    )


def _inserted_id(result: CursorResult[Any]) -> int:
    """The id of the row a single-row INSERT added (SQLAlchemy types its key as optional)."""
    key = result.inserted_primary_key
    assert key is not None  # only an INSERT of no rows has none
    new_id: int = key[0]
    return new_id


def _deadlock(exc: DBAPIError) -> bool:
    """A deadlock or serialisation failure, which the database asks the client to retry."""
    orig = exc.orig
    code = orig.args[0] if orig is not None and orig.args else None
    return code in (1205, 1213) or getattr(orig, "sqlstate", None) in ("40P01", "40001")


def _index_folder(engine: Engine, index_dir: str | None) -> str | None:
    """Where the index file goes: ``index_dir``, else beside a SQLite file (an in-memory
    SQLite database, or another database without ``index_dir``: nowhere)."""
    if index_dir:
        return index_dir
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:" and not database.startswith("file:"):
        return os.path.dirname(os.path.abspath(database))
    return None
