"""The store: one interface to the shared cache, whatever holds it.

:class:`Store` is what the pipeline, the middleware, the server and the commands use.
:class:`SqlStore` implements it over SQLAlchemy (SQLite, PostgreSQL, MySQL/MariaDB) and a
blob store; ``scrapy_imgcache.remote.RemoteStore`` over an imgcache HTTP service.
:func:`open_store` picks one from a URL, the way Scrapy picks a files store by scheme.

Every method blocks: Scrapy components call them through ``deferToThread``.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Protocol, TypeVar

import numpy as np
from sqlalchemy import (
    BigInteger,
    Select,
    any_,
    bindparam,
    delete,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import aliased

from .blobs import BlobStore, blob_key, claim, hash_of_key, is_temporary, open_blob_store
from .errors import ConfigError, StoreError
from .hashing import ImageInfo, Inspector, content_hash
from .models import BUCKET_LENGTH, ImageRow, UrlRow
from .schema import cache_id, ensure_schema, make_engine, make_reading_engine, make_writing_engine
from .simindex import HammingIndex, to_signed

T = TypeVar("T")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
PHASH_RE = re.compile(r"^[0-9a-f]{16}$")
BUCKET_RE = re.compile(rf"^[A-Za-z0-9._-]{{0,{BUCKET_LENGTH}}}$")
MAX_DISTANCE = 32


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _utc(moment: datetime) -> datetime:
    """Naive times are taken as UTC (as the database columns store them)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def validate_bucket(bucket: str) -> str:
    if not isinstance(bucket, str) or not BUCKET_RE.match(bucket):
        raise ValueError(f"bad bucket name {bucket!r}: up to {BUCKET_LENGTH} of A-Z a-z 0-9 . _ -")
    return bucket


def validate_content_hash(value: str) -> str:
    if not isinstance(value, str) or not HASH_RE.match(value):
        raise ValueError(f"bad content hash {value!r}: 64 lowercase hex digits expected")
    return value


def validate_phash(value: str) -> str:
    if not isinstance(value, str) or not PHASH_RE.match(value):
        raise ValueError(f"bad perceptual hash {value!r}: 16 lowercase hex digits expected")
    return value


def validate_distance(value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= MAX_DISTANCE:
        raise ValueError(f"bad max distance {value!r}: an integer from 0 to {MAX_DISTANCE}")
    return value


@dataclass(frozen=True)
class Entry:
    """One cached image as seen at one URL: the imgcache API's entry schema, plus extras."""

    url: str
    content_hash: str
    content_type: str
    file_size_bytes: int
    original_filename: str | None
    width: int | None
    height: int | None
    perceptual_hash: str | None
    client_name: str
    lookup_time: datetime
    created_at: datetime
    bucket: str
    hash_algorithm: str = "phash"
    flat: bool = False
    etag: str | None = None
    last_modified: str | None = None
    path: str | None = None
    similar_to: str | None = None
    similar_distance: int | None = None
    hamming_distance: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lookup_time"] = self.lookup_time.isoformat()
        data["created_at"] = self.created_at.isoformat()
        if self.hamming_distance is None:
            del data["hamming_distance"]
        return data


@dataclass(frozen=True)
class PutResult:
    entry: Entry
    created: bool  # False: identical bytes were already in the bucket


@dataclass
class Usage:
    """Counts for one bucket (and, in ``clients``, per client name)."""

    bucket: str
    images: int = 0
    bytes: int = 0
    urls: int = 0
    exact_duplicates: int = 0
    exact_bytes_saved: int = 0
    similar_duplicates: int = 0
    similar_bytes_saved: int = 0
    clients: dict[str, Usage] = field(default_factory=dict)


class Store(Protocol):
    """The cache as every component sees it. Blocking; safe to call from many threads."""

    inspector: Inspector

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
    ) -> PutResult:
        """Store ``data`` (once per bucket) and record ``url`` for it.

        ``info``: :meth:`Inspector.inspect` of exactly these bytes, when the caller has it
        (they are then not decoded again); without it the bytes are inspected here.
        """
        ...

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
    ) -> Entry | None: ...

    def get_bytes(self, content_hash: str, bucket: str = "") -> bytes | None: ...
    def get_meta(self, content_hash: str, bucket: str = "") -> Entry | None: ...
    def lookup(self, url: str, bucket: str = "") -> Entry | None: ...
    def search(self, url_contains: str, bucket: str = "", limit: int = 100) -> list[Entry]: ...
    def similar(
        self,
        perceptual_hash: str,
        max_distance: int = 4,
        bucket: str = "",
        limit: int = 100,
        algorithm: str = "phash",
    ) -> list[Entry]: ...
    def urls(self, content_hash: str, bucket: str = "") -> list[Entry]: ...
    def delete(self, content_hash: str, bucket: str = "") -> bool: ...
    def usage(self) -> list[Usage]: ...
    def close(self) -> None: ...


def open_store(url: str, files: str | None = None, inspector: Inspector | None = None, **options: Any) -> Store:
    """``http(s)://`` → a remote imgcache service; anything else is a SQLAlchemy URL."""
    if url.startswith(("http://", "https://")):
        from .remote import RemoteStore

        return RemoteStore(url, inspector=inspector, **options)
    if files is None:
        raise ConfigError("a database store needs a files location (IMGCACHE_FILES_STORE)")
    return SqlStore(url, files, inspector=inspector)


class SqlStore:
    """The cache in a SQL database (metadata) and a blob store (bytes)."""

    def __init__(
        self,
        url: str,
        files: str | BlobStore,
        inspector: Inspector | None = None,
    ) -> None:
        self.url = url
        self.inspector = inspector or Inspector()
        self.blobs: BlobStore = open_blob_store(files) if isinstance(files, str) else files
        self.engine = make_engine(url)
        ensure_schema(self.engine)
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
        self._index = _SharedIndex(self)

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
    ) -> PutResult:
        validate_bucket(bucket)
        if info is None:
            info = self.inspector.inspect(data)
        elif info.size != len(data):  # (hashing them again to be sure cost ~0.3 ms an image)
            raise ValueError("the ImageInfo given does not describe these bytes")
        now = utcnow()
        lookup_time = _utc(lookup_time) if lookup_time else now
        key = blob_key(info.content_hash, info.extension)
        self.blobs.put(key, data)  # bytes first: a row never points at nothing
        values = dict(
            bucket=bucket,
            content_hash=info.content_hash,
            content_type=info.content_type,
            file_size=info.size,
            width=info.width,
            height=info.height,
            perceptual_hash=info.perceptual_hash,
            phash_int=to_signed(int(info.perceptual_hash, 16)),
            hash_algorithm=info.algorithm,
            flat=info.flat,
            blob_key=key,
            original_filename=(filename or None) and filename[:255],
            client_name=client_name[:255],
            lookup_time=lookup_time,
            created_at=now,
            similar_to=similar_to,
            similar_distance=similar_distance,
        )
        with self._write() as conn:
            image_id = self._insert_ignore(conn, ImageRow, values)
            created = image_id is not None
            if image_id is None:  # these bytes were there already
                image_id = self._image_id(conn, bucket, info.content_hash)
                assert image_id is not None
            self._upsert_url(
                conn,
                image_id=image_id,
                bucket=bucket,
                url=url,
                client_name=client_name,
                lookup_time=lookup_time,
                etag=etag,
                last_modified=last_modified,
                duplicate=None if created else "exact",
                saved_bytes=0 if created else info.size,
            )
        if not self.blobs.exists(key):  # a concurrent delete removed it before our row landed
            self.blobs.put(key, data)
        if created:  # the row is what we just wrote: no need to read it back
            entry = Entry(
                url=url,
                content_hash=info.content_hash,
                content_type=info.content_type,
                file_size_bytes=info.size,
                original_filename=values["original_filename"],
                width=info.width,
                height=info.height,
                perceptual_hash=info.perceptual_hash,
                client_name=values["client_name"],
                lookup_time=lookup_time,
                created_at=now,
                bucket=bucket,
                hash_algorithm=info.algorithm,
                flat=info.flat,
                etag=etag,
                last_modified=last_modified,
                path=key,
                similar_to=similar_to,
                similar_distance=similar_distance,
            )
        else:  # the image row is someone else's: its fields are the stored ones
            found = self._entry(bucket, info.content_hash, url=url, client_name=client_name)
            assert found is not None
            entry = found
        return PutResult(entry, created)

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
        """Note that ``url`` answered with an image already cached (a 304, a skipped near-dup)."""
        validate_bucket(bucket)
        with self._write() as conn:
            image_id = self._image_id(conn, bucket, content_hash)
            if image_id is None:
                return None
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
        return self._entry(bucket, content_hash, url=url, client_name=client_name)

    def delete(self, content_hash: str, bucket: str = "") -> bool:
        validate_bucket(bucket)
        with self._write() as conn:
            row = conn.execute(
                select(ImageRow.id, ImageRow.blob_key).where(
                    ImageRow.bucket == bucket, ImageRow.content_hash == content_hash
                )
            ).first()
            if row is None:
                return False
            conn.execute(delete(UrlRow).where(UrlRow.image_id == row.id))
            conn.execute(delete(ImageRow).where(ImageRow.id == row.id))
            still_used = conn.execute(
                select(ImageRow.id).where(ImageRow.content_hash == content_hash).limit(1)
            ).first()
        self._index.forget(row.id)
        if still_used is None:  # the same bytes may live on in another bucket
            self.remove_blob(row.blob_key)
        return True

    def remove_blob(self, key: str) -> bool:
        """Delete a blob no row references, without losing it to a ``put`` that commits meanwhile.

        ``put`` looks for its blob after its commit; this looks for rows after the delete and
        writes the bytes back if one appeared. Whichever runs last sees the other, so no row is
        left pointing at nothing, on any database, without locks.
        """
        data = self.blobs.get(key)
        if data is None:
            return False
        self.blobs.delete(key)
        with self.engine.connect() as conn:
            used = conn.execute(
                select(ImageRow.id).where(ImageRow.content_hash == hash_of_key(key)).limit(1)
            ).first()
        if used is not None:
            self.blobs.put(key, data)
            return False
        return True

    def _write(self):  # type: ignore[no-untyped-def]
        return _retrying_begin(self._writer, self._begin_sql)

    def _image_id(self, conn: Any, bucket: str, chash: str) -> int | None:
        return conn.execute(_IMAGE_ID, {"bucket": bucket, "chash": chash}).scalar()

    def _insert_ignore(self, conn: Any, model: Any, values: dict[str, Any]) -> int | None:
        """Insert unless the unique key exists; the new row's id, or None when it existed."""
        if self._dialect in ("sqlite", "postgresql"):
            return conn.execute(_insert_ignore_stmt(self._dialect, model.__table__), values).scalar()
        if self._dialect in ("mysql", "mariadb"):
            result = conn.execute(_insert_ignore_stmt(self._dialect, model.__table__), values)
            return result.inserted_primary_key[0] if result.rowcount == 1 else None
        else:  # pragma: no cover - other dialects: plain insert, duplicate key means "exists"
            try:
                with conn.begin_nested():
                    return conn.execute(model.__table__.insert().values(**values)).inserted_primary_key[0]
            except IntegrityError:
                return None

    def _upsert_url(self, conn: Any, **values: Any) -> None:
        values["url_hash"] = content_hash(values["url"].encode("utf-8", "surrogatepass"))
        values["client_name"] = values["client_name"][:255]
        values["created_at"] = utcnow()
        refresh = {k: values[k] for k in ("lookup_time", "etag", "last_modified")}
        key = {k: values[k] for k in ("image_id", "url_hash", "client_name")}
        if self._dialect in ("sqlite", "postgresql", "mysql", "mariadb"):
            conn.execute(_upsert_url_stmt(self._dialect), values)
        else:  # pragma: no cover
            done = conn.execute(update(UrlRow).filter_by(**key).values(**refresh)).rowcount
            if not done:
                conn.execute(UrlRow.__table__.insert().values(**values))

    # -- reading -------------------------------------------------------------------------

    def get_bytes(self, content_hash: str, bucket: str = "") -> bytes | None:
        key = self._read(lambda conn: conn.execute(_BLOB_KEY, {"bucket": bucket, "chash": content_hash}).scalar())
        return None if key is None else self.blobs.get(key)

    def get_meta(self, content_hash: str, bucket: str = "") -> Entry | None:
        return self._entry(bucket, content_hash)

    def lookup(self, url: str, bucket: str = "") -> Entry | None:
        url_hash = content_hash(url.encode("utf-8", "surrogatepass"))
        return self._first(_LOOKUP, {"bucket": bucket, "url_hash": url_hash, "url": url})

    def search(self, url_contains: str, bucket: str = "", limit: int = 100) -> list[Entry]:
        stmt = (
            _joined()
            .where(UrlRow.bucket == bucket, UrlRow.url.contains(url_contains, autoescape=True))
            .order_by(UrlRow.lookup_time.desc(), UrlRow.id.desc())
            .limit(limit)
        )
        return self._all(stmt)

    def urls(self, content_hash: str, bucket: str = "") -> list[Entry]:
        """Every URL record of one image, most recent first."""
        stmt = (
            _joined()
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
        self, conn: Any, perceptual_hash: str, max_distance: int, bucket: str, limit: int, algorithm: str
    ) -> list[Entry]:
        out: list[Entry] = []
        hits = self._index.query(bucket, algorithm, int(perceptual_hash, 16), max_distance, conn)
        for start in range(0, len(hits), max(limit, 1)):
            chunk = hits[start : start + max(limit, 1)]
            by_id = self._latest_rows([i for i, _ in chunk], conn)
            for image_id, dist in chunk:
                row = by_id.get(image_id)
                if row is not None:  # deleted since the index saw it
                    out.append(_to_entry(row, dist))
            if len(out) >= limit:
                break
        return out[:limit]

    def images(self, bucket: str | None = None, batch: int = 1000) -> Iterator[Entry]:
        """Every image (with its most recent URL), oldest first; ``None`` walks every bucket."""
        last = 0
        while True:
            stmt = select(ImageRow.id).where(ImageRow.id > last).order_by(ImageRow.id).limit(batch)
            if bucket is not None:
                stmt = stmt.where(ImageRow.bucket == bucket)
            with self.engine.connect() as conn:
                ids = list(conn.execute(stmt).scalars())
            if not ids:
                return
            by_id = self._latest_by_image(ids)
            for image_id in ids:
                if image_id in by_id:
                    yield by_id[image_id]
            last = ids[-1]

    def buckets(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(ImageRow.bucket).distinct().order_by(ImageRow.bucket)).scalars())

    def usage(self) -> list[Usage]:
        out: dict[str, Usage] = {}
        with self.engine.connect() as conn:
            for bucket, n, size in conn.execute(
                select(ImageRow.bucket, func.count(), func.coalesce(func.sum(ImageRow.file_size), 0)).group_by(
                    ImageRow.bucket
                )
            ):
                out[bucket] = Usage(bucket, images=int(n), bytes=int(size))
            stmt = select(
                UrlRow.bucket,
                UrlRow.client_name,
                UrlRow.duplicate,
                func.count(),
                func.coalesce(func.sum(UrlRow.saved_bytes), 0),
            ).group_by(UrlRow.bucket, UrlRow.client_name, UrlRow.duplicate)
            for bucket, client, dup, n, saved in conn.execute(stmt):
                usage = out.setdefault(bucket, Usage(bucket))
                per = usage.clients.setdefault(client, Usage(bucket))
                for target in (usage, per):
                    target.urls += int(n)
                    if dup == "exact":
                        target.exact_duplicates += int(n)
                        target.exact_bytes_saved += int(saved)
                    elif dup == "similar":
                        target.similar_duplicates += int(n)
                        target.similar_bytes_saved += int(saved)
            stmt = (
                select(ImageRow.bucket, ImageRow.client_name, func.count(), func.sum(ImageRow.file_size))
                .group_by(ImageRow.bucket, ImageRow.client_name)
            )
            for bucket, client, n, size in conn.execute(stmt):
                per = out[bucket].clients.setdefault(client, Usage(bucket))
                per.images += int(n)
                per.bytes += int(size or 0)
            # near-duplicates kept in annotate mode count too (their bytes were stored)
            stmt = (
                select(ImageRow.bucket, ImageRow.client_name, func.count())
                .where(ImageRow.similar_to.is_not(None))
                .group_by(ImageRow.bucket, ImageRow.client_name)
            )
            for bucket, client, n in conn.execute(stmt):
                out[bucket].similar_duplicates += int(n)
                out[bucket].clients.setdefault(client, Usage(bucket)).similar_duplicates += int(n)
        return [out[b] for b in sorted(out)]

    # -- maintenance (the gc command) ------------------------------------------------------

    def referenced_hashes(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(select(ImageRow.content_hash).distinct()).scalars())

    def orphan_blobs(self, grace_seconds: float) -> list[tuple[str, int]]:
        """Blobs (and thumbnails) of contents no row holds, and the temporary files of
        interrupted writes, older than the grace period."""
        cutoff = time.time() - grace_seconds
        keys = list(self.blobs.iter_keys())
        used = self.referenced_hashes()  # read after listing: a blob written meanwhile is young
        return [
            (k, size)
            for k, mtime, size in keys
            if mtime < cutoff and (is_temporary(k) or (_is_blob(k) and hash_of_key(k) not in used))
        ]

    def missing_blobs(self) -> list[Entry]:
        """Rows whose bytes are gone (someone deleted files by hand)."""
        return [e for e in self.images() if not self.blobs.exists(e.path or "")]

    def expired(self, older_than: datetime, bucket: str | None = None) -> list[Entry]:
        """Images no URL has been seen at since ``older_than``."""
        newest = (
            select(UrlRow.image_id, func.max(UrlRow.lookup_time).label("seen"))
            .group_by(UrlRow.image_id)
            .subquery()
        )
        stmt = select(ImageRow.id).join(newest, newest.c.image_id == ImageRow.id).where(newest.c.seen < older_than)
        if bucket is not None:
            stmt = stmt.where(ImageRow.bucket == bucket)
        with self.engine.connect() as conn:
            ids = list(conn.execute(stmt).scalars())
        return list(self._latest_by_image(ids).values())

    # -- rows to entries -------------------------------------------------------------------

    def _entry(self, bucket: str, chash: str, url: str | None = None, client_name: str | None = None) -> Entry | None:
        params = {"bucket": bucket, "chash": chash}
        if url is not None:
            params["url_hash"] = content_hash(url.encode("utf-8", "surrogatepass"))
            if client_name is not None:
                params["client_name"] = client_name[:255]
        return self._first(_ENTRY[url is not None, url is not None and client_name is not None], params)

    def _latest_by_image(self, image_ids: Sequence[int]) -> dict[int, Entry]:
        if not image_ids:
            return {}
        with self.engine.connect() as conn:
            return {image_id: _to_entry(row) for image_id, row in self._latest_rows(image_ids, conn).items()}

    def _latest_rows(self, image_ids: Sequence[int], conn: Any) -> dict[int, Any]:
        """Each image's row joined with its most recent URL record, by image id."""
        if not image_ids:
            return {}
        stmt = _LATEST_ROWS[self._dialect == "postgresql"]
        return {row.image_id: row for row in conn.execute(stmt, {"image_ids": list(image_ids)})}

    def _first(self, stmt: Select[Any], params: dict[str, Any] | None = None) -> Entry | None:
        row = self._read(lambda conn: conn.execute(stmt, params or {}).first())
        return None if row is None else _to_entry(row)

    def _read(self, work: Callable[[Any], T]) -> T:
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
            return [_to_entry(r) for r in conn.execute(stmt)]


def _entry_columns(urls: Any = UrlRow) -> tuple[Any, ...]:
    """An Entry's fields in order, as plain columns (ORM entities cost ~15 us a row to load)."""
    return (
        ImageRow.id.label("image_id"),
        urls.url,
        ImageRow.content_hash,
        ImageRow.content_type,
        ImageRow.file_size.label("file_size_bytes"),
        ImageRow.original_filename,
        ImageRow.width,
        ImageRow.height,
        ImageRow.perceptual_hash,
        urls.client_name,
        urls.lookup_time,
        ImageRow.created_at,
        ImageRow.bucket,
        ImageRow.hash_algorithm,
        ImageRow.flat,
        urls.etag,
        urls.last_modified,
        ImageRow.blob_key.label("path"),
        ImageRow.similar_to,
        ImageRow.similar_distance,
    )


_ENTRY_COLUMNS = _entry_columns()
assert [c.key for c in _ENTRY_COLUMNS[1:]] == [f.name for f in fields(Entry)][: len(_ENTRY_COLUMNS) - 1]


def _joined() -> Select[Any]:
    return select(*_ENTRY_COLUMNS).select_from(ImageRow).join(UrlRow, UrlRow.image_id == ImageRow.id)


def _to_entry(row: Any, hamming_distance: int | None = None) -> Entry:
    return Entry(*row[1:], hamming_distance=hamming_distance)  # type: ignore[misc]


# similar() runs the two statements below on every query, so they are built once: building
# and cache-keying a statement costs more than a round trip. On PostgreSQL an array parameter
# keeps the SQL text the same whatever the number of ids, so psycopg prepares it after a few
# calls (planning the join costs more than running it); elsewhere an expanding IN.


def _id_in(column: Any, name: str, postgres: bool) -> Any:
    if postgres:
        return column == any_(bindparam(name, type_=ARRAY(BigInteger)))
    return column.in_(bindparam(name, expanding=True))


def _latest_rows_stmt(postgres: bool) -> Select[Any]:
    if postgres:
        # a LATERAL top-1 per image touches fewer pages than max(id) ... GROUP BY and a second
        # primary-key probe: p50 0.26 ms vs 0.38 ms for a dozen ids of a million cold rows
        newest = select(UrlRow).where(UrlRow.image_id == ImageRow.id).order_by(UrlRow.id.desc()).limit(1).lateral()
        urls = aliased(UrlRow, newest)
        return (
            select(*_entry_columns(urls))
            .select_from(ImageRow)
            .join(urls, true())
            .where(_id_in(ImageRow.id, "image_ids", postgres))
        )
    wanted = _id_in(UrlRow.image_id, "image_ids", postgres)
    latest = select(func.max(UrlRow.id)).where(wanted).group_by(UrlRow.image_id).scalar_subquery()
    return _joined().where(UrlRow.id.in_(latest))


def _new_rows_stmt(gaps: bool, postgres: bool) -> Select[Any]:
    """Rows past the highest id the index has seen, and the recent ids it is still missing."""
    cond = ImageRow.id > bindparam("high")
    if gaps:
        cond = or_(cond, _id_in(ImageRow.id, "gaps", postgres))
    cols = (ImageRow.id, ImageRow.bucket, ImageRow.hash_algorithm, ImageRow.phash_int, ImageRow.flat)
    return select(*cols).where(cond).order_by(ImageRow.id)


_LATEST_ROWS = {postgres: _latest_rows_stmt(postgres) for postgres in (True, False)}
_NEW_ROWS = {(gaps, pg): _new_rows_stmt(gaps, pg) for gaps in (True, False) for pg in (True, False)}


# the per-image reads (every put, get_meta and middleware lookup) are prebuilt with bound
# parameters too: building one and deriving its cache key cost ~0.6 ms, ~4x its execution
_NEWEST_FIRST = (UrlRow.lookup_time.desc(), UrlRow.id.desc())
_BY_HASH = (ImageRow.bucket == bindparam("bucket"), ImageRow.content_hash == bindparam("chash"))
_IMAGE_ID = select(ImageRow.id).where(*_BY_HASH)
_BLOB_KEY = select(ImageRow.blob_key).where(*_BY_HASH)
_LOOKUP = (
    _joined()
    .where(UrlRow.bucket == bindparam("bucket"), UrlRow.url_hash == bindparam("url_hash"), UrlRow.url == bindparam("url"))
    .order_by(*_NEWEST_FIRST)
    .limit(1)
)


@functools.cache
def _insert_ignore_stmt(dialect: str, table: Any) -> Any:
    """INSERT unless the unique key exists, values bound at execution (sqlite, postgresql, mysql)."""
    if dialect in ("mysql", "mariadb"):
        return mysql_insert(table).prefix_with("IGNORE")
    return (sqlite_insert if dialect == "sqlite" else pg_insert)(table).on_conflict_do_nothing().returning(table.c.id)


@functools.cache
def _upsert_url_stmt(dialect: str) -> Any:
    """Insert a URL record, or refresh when it was seen and its validators (same values as inserted)."""
    table = UrlRow.__table__
    refresh = ("lookup_time", "etag", "last_modified")
    if dialect in ("mysql", "mariadb"):
        ins = mysql_insert(table)
        return ins.on_duplicate_key_update({k: ins.inserted[k] for k in refresh})
    ins = (sqlite_insert if dialect == "sqlite" else pg_insert)(table)
    return ins.on_conflict_do_update(
        index_elements=["image_id", "url_hash", "client_name"], set_={k: ins.excluded[k] for k in refresh}
    )


def _entry_stmt(by_url: bool, by_client: bool) -> Select[Any]:
    stmt = _joined().where(*_BY_HASH)
    if by_url:
        stmt = stmt.where(UrlRow.url_hash == bindparam("url_hash"))
        if by_client:
            stmt = stmt.where(UrlRow.client_name == bindparam("client_name"))
    return stmt.order_by(*_NEWEST_FIRST).limit(1)


_ENTRY = {(u, c): _entry_stmt(u, c) for u in (True, False) for c in (True, False) if u or not c}


def _is_blob(key: str) -> bool:
    return bool(HASH_RE.match(hash_of_key(key)))


class _retrying_begin:
    """A write transaction whose BEGIN is retried while the database stays locked past its
    busy timeout (or a lock wait times out).

    With ``begin_sql`` the engine is an autocommit pool and the transaction is plain SQL:
    ``begin_sql`` … ``COMMIT`` (or ``ROLLBACK``); see ``schema.make_writing_engine``.
    """

    def __init__(self, engine: Any, begin_sql: str | None = None, attempts: int = 5) -> None:
        self.engine = engine
        self.begin_sql = begin_sql
        self.attempts = attempts

    def __enter__(self) -> Any:
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                return self._begin()
            except OperationalError as exc:  # locked at BEGIN IMMEDIATE past the busy timeout
                last = exc
                time.sleep(0.05 * (attempt + 1))
        raise StoreError(f"database busy: {last}")

    def _begin(self) -> Any:
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

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
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


class _SharedIndex:
    """The in-memory similarity index of one process, kept in step with the database.

    Before each query it reads the rows added since the last one it saw (one indexed range
    query on the primary key), so images stored by other processes are found too. Ids that
    were skipped (a transaction still open elsewhere, or a sequence value burnt by a
    conflict) are re-asked for a while in case they commit late. Deleted rows drop out when
    the matches are fetched from the database.
    """

    GAP_TTL = 30.0
    MAX_GAPS = 512

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.lock = threading.Lock()
        self.indexes: dict[tuple[str, str], HammingIndex] = {}
        self.high = 0
        self.gaps: dict[int, float] = {}
        self.loaded = False

    def forget(self, image_id: int) -> None:
        with self.lock:
            for index in self.indexes.values():
                index.remove(image_id)

    def query(
        self, bucket: str, algorithm: str, value: int, max_distance: int, conn: Any = None
    ) -> list[tuple[int, int]]:
        with self.lock:
            self._refresh(conn)
            index = self.indexes.get((bucket, algorithm))
            return [] if index is None else index.query(value, max_distance)

    def _refresh(self, conn: Any = None) -> None:
        now = time.monotonic()
        self.gaps = {i: t for i, t in self.gaps.items() if now - t < self.GAP_TTL}
        stmt = _NEW_ROWS[bool(self.gaps), self.store._dialect == "postgresql"]
        params = {"high": self.high, "gaps": list(self.gaps)}
        if conn is None:
            with self.store.engine.connect() as conn:
                rows = conn.execute(stmt, params).all()
        else:
            rows = conn.execute(stmt, params).all()
        if not rows:
            return
        if not self.loaded:
            self._bulk_load(rows)
            self.loaded = True
        else:
            for image_id, bucket, algorithm, phash, flat in rows:
                self.gaps.pop(image_id, None)
                if phash is not None and not flat:
                    self._index(bucket, algorithm).add(image_id, phash)
        top = rows[-1][0]
        if top > self.high:
            # only the most recent ids can still be in flight elsewhere; older holes are deletes
            seen = {r[0] for r in rows}
            for missing in range(max(self.high + 1, top - self.MAX_GAPS), top):
                if missing not in seen:
                    self.gaps[missing] = now
            self.high = top
        if len(self.gaps) > self.MAX_GAPS:
            for old in sorted(self.gaps, key=self.gaps.__getitem__)[: len(self.gaps) - self.MAX_GAPS]:
                del self.gaps[old]

    def _bulk_load(self, rows: Sequence[Any]) -> None:
        groups: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        for image_id, bucket, algorithm, phash, flat in rows:
            if phash is None or flat:
                continue
            ids, values = groups.setdefault((bucket, algorithm), ([], []))
            ids.append(image_id)
            values.append(phash)
        for key, (ids, values) in groups.items():
            self._index(*key).add_many(np.array(ids), np.array(values, dtype=np.int64).view(np.uint64))

    def _index(self, bucket: str, algorithm: str) -> HammingIndex:
        key = (bucket, algorithm)
        if key not in self.indexes:
            self.indexes[key] = HammingIndex()
        return self.indexes[key]
