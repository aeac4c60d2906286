"""VisualSnoop collections over the shared cache: key pairs, image ids, replay records.

A *collection* is one bucket (at most one collection per bucket) seen through the VisualSnoop
API, and its images are the images cached in that bucket:

* an image added through the API is stored with ``store.put`` into the bucket like any
  crawled image, and is known by the id it was added under (the caller's own, or a generated
  32-hex one); ``imgcache_collection_images`` maps that id to the image's content hash;
* an image a spider cached into the bucket and that no id of the collection names is known by
  its content hash (64 hex digits), its ``image_time`` being when it was cached.

Deleting an image through the API removes it from the bucket once no id of the collection
names its bytes any more (otherwise it would come back under its content hash).

A collection's changes are serialised by :func:`collection_lock` (a lock per collection in
the process, and one in the database that every server process and worker sees), held from
reading what an id names to deciding whether the bytes it named leave the bucket; without
it, concurrent clients lost images and left others behind under their content hash.

HMAC needs the secret itself, so it cannot be hashed one-way. :class:`SecretBox` stores it
encrypted (Fernet) when a server key is configured, and as given otherwise.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Engine,
    Integer,
    and_,
    create_engine,
    delete,
    exists,
    insert,
    literal,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from .errors import ConfigError, ImgCacheError, StoreError
from .hashing import ImageInfo
from .store.base import utcnow, validate_bucket
from .store.models import (
    CollectionImageRow,
    CollectionRow,
    ImageRow,
    RequestRow,
)
from .store.schema import sqlite_file
from .store.sql import SqlStore

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

MAX_NAME_LENGTH = 100
#: what the cache records as the client of images added through the API
CLIENT_NAME = "visualsnoop"
SECRETS_KEY_ENV = "IMGCACHE_SECRETS_KEY"
SECRETS_KEY_FILE_ENV = "IMGCACHE_SECRETS_KEY_FILE"
PUBLIC_KEY_RE = re.compile(r"^[0-9a-f]{20}$")
#: seconds a change waits for another change of the same collection before giving up
LOCK_TIMEOUT = 60.0
#: times an overwrite names its id again when a concurrent insert of the same id won
_NAME_ATTEMPTS = 3


class CollectionError(ImgCacheError):
    """A collection cannot be created or changed as asked (name taken, bad bucket...)."""


class IdTaken(ImgCacheError):
    """POST of an image id the collection already has."""


# -- secrets -----------------------------------------------------------------------------


class SecretBox:
    """Seals secret keys for the database: Fernet-encrypted with a server key when one is set.

    The server key is any long random string (``IMGCACHE_SECRETS_KEY``, or a file named by
    ``IMGCACHE_SECRETS_KEY_FILE``); the Fernet key is its SHA-256. Without one the secret is
    stored as given, marked ``plain:``, and a leaked database leaks the secrets.
    """

    def __init__(self, server_key: str | None = None) -> None:
        self._fernet: Fernet | None = None
        if server_key:
            if len(server_key) < 16:
                raise ConfigError(f"{SECRETS_KEY_ENV}: at least 16 characters of random text are expected")
            from cryptography.fernet import Fernet

            self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(server_key.encode()).digest()))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SecretBox:
        env = os.environ if environ is None else environ
        key = env.get(SECRETS_KEY_ENV, "").strip()
        path = env.get(SECRETS_KEY_FILE_ENV, "").strip()
        if path and not key:
            try:
                with open(path, encoding="utf-8") as fh:
                    key = fh.read().strip()
            except OSError as exc:
                raise ConfigError(f"{SECRETS_KEY_FILE_ENV}={path!r}: {exc.strerror}") from exc
        return cls(key or None)

    def seal(self, secret: str) -> str:
        if self._fernet is None:
            return "plain:" + secret
        return "fernet:" + self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, stored: str) -> str:
        kind, _, value = stored.partition(":")
        if kind == "plain":
            return value
        if self._fernet is None:
            raise ConfigError(f"a secret is stored encrypted but {SECRETS_KEY_ENV} is not set")
        from cryptography.fernet import InvalidToken

        try:
            return str(self._fernet.decrypt(value.encode("ascii")).decode())
        except InvalidToken as exc:
            raise ConfigError(f"a secret cannot be decrypted with this {SECRETS_KEY_ENV}") from exc


# -- collections and their keys ----------------------------------------------------------


@dataclass(frozen=True)
class Collection:
    row_id: int
    collection_id: str
    name: str
    bucket: str
    user: str
    public_key: str
    created_at: datetime
    key_created_at: datetime
    secret_encrypted: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "collection_id": self.collection_id,
            "name": self.name,
            "bucket": self.bucket,
            "user": self.user,
            "public_key": self.public_key,
            "created_at": self.created_at.isoformat(),
            "key_created_at": self.key_created_at.isoformat(),
            "secret_storage": "encrypted" if self.secret_encrypted else "plain",
        }


def _collection(row: CollectionRow) -> Collection:
    return Collection(
        row_id=row.id,
        collection_id=row.ref,
        name=row.name,
        bucket=row.bucket,
        user=row.owner,
        public_key=row.public_key,
        created_at=row.created_at,
        key_created_at=row.key_created_at,
        secret_encrypted=row.secret.startswith("fernet:"),
    )


def new_key_pair() -> tuple[str, str]:
    """A 20-hex public key and a 40-character secret, as the hosted service issued them."""
    return secrets.token_hex(10), secrets.token_urlsafe(30)


class Registry:
    """Collections and their key pairs, in the cache's database (blocking)."""

    def __init__(self, engine: Engine, box: SecretBox | None = None) -> None:
        self.engine = engine
        self.box = box or SecretBox.from_env()
        self._writer = engine.execution_options(imgcache_write=True)

    def create(self, name: str, bucket: str | None = None, user: str = "") -> tuple[Collection, str]:
        """A new collection; returns it and its secret key (the only time it is shown)."""
        name = _check_name(name)
        bucket = name if bucket is None else bucket
        try:
            validate_bucket(bucket)
        except ValueError as exc:
            hint = " (give one with --bucket)" if bucket == name else ""
            raise CollectionError(f"{exc}{hint}") from None
        if len(user) > 255:
            raise CollectionError("the user label is over 255 characters")
        public, secret = new_key_pair()
        now = utcnow()
        values = {
            "ref": secrets.token_hex(8),
            "name": name,
            "bucket": bucket,
            "owner": user,
            "public_key": public,
            "secret": self.box.seal(secret),
            "created_at": now,
            "key_created_at": now,
        }
        with self._writer.begin() as conn:
            taken = conn.execute(
                select(CollectionRow.name, CollectionRow.bucket).where(
                    or_(CollectionRow.name == name, CollectionRow.bucket == bucket)
                )
            ).first()
            if taken is not None:
                raise CollectionError(f"collection {taken.name!r} already exists over bucket {taken.bucket!r}")
            try:
                conn.execute(insert(CollectionRow).values(**values))
            except IntegrityError as exc:  # a concurrent create won
                raise CollectionError(f"collection {name!r} or bucket {bucket!r} is already taken") from exc
        found = self.get(name)
        assert found is not None
        return found, secret

    def list(self) -> list[Collection]:
        with Session(self.engine) as session:
            return [_collection(r) for r in session.scalars(select(CollectionRow).order_by(CollectionRow.name))]

    def get(self, name: str) -> Collection | None:
        return self._one(CollectionRow.name == name)

    def rotate_key(self, name: str) -> tuple[Collection, str] | None:
        """A fresh key pair; the old one stops working at once."""
        public, secret = new_key_pair()
        with self._writer.begin() as conn:
            done = conn.execute(
                update(CollectionRow)
                .where(CollectionRow.name == name)
                .values(public_key=public, secret=self.box.seal(secret), key_created_at=utcnow())
            ).rowcount
        found = self.get(name) if done else None
        return None if found is None else (found, secret)

    def delete(self, name: str) -> Collection | None:
        """Forget the collection and its image ids; the images stay cached in the bucket."""
        found = self.get(name)
        if found is None:
            return None
        with self._writer.begin() as conn:
            conn.execute(delete(CollectionImageRow).where(CollectionImageRow.collection_id == found.row_id))
            conn.execute(delete(CollectionRow).where(CollectionRow.id == found.row_id))
        return found

    def by_public_key(self, public_key: str) -> tuple[Collection, str] | None:
        """The collection a public key opens, with its secret in clear (for HMAC)."""
        if not PUBLIC_KEY_RE.match(public_key):
            return None
        with Session(self.engine) as session:
            row = session.scalar(select(CollectionRow).where(CollectionRow.public_key == public_key))
            if row is None:
                return None
            return _collection(row), self.box.open(row.secret)

    def remember_request(self, digest: str, expires_at: datetime, *more: str) -> bool:
        """Record an accepted state-changing request by ``digest`` (and the ``more`` digests it
        is also known by, in the same transaction); False when ``digest`` was recorded already."""
        try:
            with self._writer.begin() as conn:
                conn.execute(delete(RequestRow).where(RequestRow.expires_at < utcnow()))
                for each in (digest, *more):
                    conn.execute(insert(RequestRow).values(digest=each, expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    def remembers(self, digest: str) -> bool:
        """Whether an accepted request was recorded by ``digest`` (and has not expired)."""
        with self.engine.connect() as conn:
            found = conn.execute(
                select(RequestRow.digest).where(RequestRow.digest == digest, RequestRow.expires_at >= utcnow())
            ).first()
        return found is not None

    def _one(self, cond: Any) -> Collection | None:
        with Session(self.engine) as session:
            row = session.scalar(select(CollectionRow).where(cond))
            return None if row is None else _collection(row)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise CollectionError(f"bad collection name {name!r}: 1 to {MAX_NAME_LENGTH} printable characters")
    return name


# -- serialising a collection's changes --------------------------------------------------

_local_guard = threading.Lock()
_local_locks: dict[tuple[str, int], threading.Lock] = {}
#: per store, a pool of its own for the connections that hold database locks (a lock held on
#: a connection of the store's pools, while the work under it takes more from them, could
#: exhaust them with waiters; a connection per lock costs ~50 ms on MariaDB)
_lock_engines: weakref.WeakKeyDictionary[SqlStore, Engine] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def collection_lock(store: SqlStore, row_id: int, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the lock on one collection's changes, for every thread and process using ``store``'s database.

    First a lock of this process, so that its threads wait without holding a connection (and
    at most one connection a collection holds a database lock), then one that other
    processes see: an advisory lock on PostgreSQL, ``GET_LOCK`` on MySQL/MariaDB, a lock file
    beside a SQLite database. Each is held by a connection (or an open file), so a process
    that dies releases it. :class:`StoreError` after ``timeout`` seconds of waiting.
    """
    local_key = (store.cache_id, row_id)
    with _local_guard:
        local = _local_locks.setdefault(local_key, threading.Lock())
    if not local.acquire(timeout=timeout):
        raise StoreError(f"collection {row_id} has been busy for {timeout:.0f} s; try again")
    try:
        with _database_lock(store, row_id, timeout):
            yield
    finally:
        local.release()


def _lock_engine(store: SqlStore) -> Engine:
    with _local_guard:
        engine = _lock_engines.get(store)
        if engine is None:
            engine = create_engine(
                store.engine.url, pool_size=2, max_overflow=30, pool_pre_ping=True, pool_recycle=3600
            )
            _lock_engines[store] = engine
        return engine


@contextlib.contextmanager
def _database_lock(store: SqlStore, row_id: int, timeout: float) -> Iterator[None]:
    dialect = store.engine.dialect.name
    if dialect == "sqlite":
        with _file_lock(sqlite_file(store.engine.url), timeout):
            yield
        return
    if dialect not in ("postgresql", "mysql", "mariadb"):  # pragma: no cover - the process lock only
        yield
        return
    name = f"imgcache:{store.cache_id}:collection:{row_id}"
    busy = f"collection {row_id} has been busy for {timeout:.0f} s; try again"
    params: dict[str, Any]
    with _lock_engine(store).connect() as conn:
        if dialect == "postgresql":
            params = {"key": int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)}
            conn.execute(text(f"SET LOCAL lock_timeout = {int(timeout * 1000)}"))
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
        conn.commit()
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
def _file_lock(db: str | None, timeout: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``<db>.collections-lock`` (SQLite writes one at a time anyway)."""
    if db is None:  # an in-memory database lives in one process: its lock is enough
        yield
        return
    import fcntl

    deadline = time.monotonic() + timeout
    with open(os.fspath(Path(db).expanduser()) + ".collections-lock", "a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreError(f"the collections of {db} have been busy for {timeout:.0f} s; try again") from None
                time.sleep(0.005)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- a collection's images ---------------------------------------------------------------


@dataclass(frozen=True)
class CollectionImage:
    image_id: str
    content_hash: str
    image_time: datetime
    #: 1: named by an id given through the API; 0: a cached image known by its content hash
    kind: int
    #: the row behind it (with ``kind`` and ``image_time``, the listing's sort key)
    row_id: int


@dataclass(frozen=True)
class Match:
    image_id: str
    distance: int


class CollectionImages:
    """One collection's images over a :class:`SqlStore` (blocking; call from a thread)."""

    def __init__(self, store: SqlStore, collection: Collection) -> None:
        self.store = store
        self.collection = collection
        self.bucket = collection.bucket
        self._cid = collection.row_id
        self._writer = store.engine.execution_options(imgcache_write=True)

    # reading

    def get(self, image_id: str) -> CollectionImage | None:
        listing = self._listing()
        with self.store.engine.connect() as conn:
            row = conn.execute(select(listing).where(listing.c.id == image_id)).first()
        return None if row is None else _image(row)

    def page(self, start: str | None, count: int) -> tuple[list[CollectionImage], str | None] | None:
        """Up to ``count`` images newest first from ``start``, and the next page's start.

        None when ``start`` names no image of the collection. Each half of the listing is read
        in index order up to ``count + 1`` rows and the two are merged here, so a page costs
        the same in a bucket of a million images as in one of ten.
        """
        first = None if start is None else self.get(start)
        if start is not None and first is None:
            return None
        rows: list[CollectionImage] = []
        with self.store.engine.connect() as conn:
            for half in self._halves():
                part = half.subquery()
                stmt = select(part).order_by(part.c.image_time.desc(), part.c.rid.desc()).limit(count + 1)
                if first is not None:
                    t, kind, rid = part.c.image_time, part.c.kind, part.c.rid
                    stmt = stmt.where(
                        t <= first.image_time,
                        or_(
                            t < first.image_time,
                            kind < first.kind,
                            and_(kind == first.kind, rid <= first.row_id),
                        ),
                    )
                rows += [_image(r) for r in conn.execute(stmt)]
        rows.sort(key=lambda i: (i.image_time, i.kind, i.row_id), reverse=True)
        more = rows[count : count + 1]
        return rows[:count], (more[0].image_id if more else None)

    def similar(
        self, perceptual_hash: str, algorithm: str, max_distance: int, limit: int, leave_out: str | None = None
    ) -> list[Match]:
        """Images of the collection within ``max_distance`` bits, nearest first."""
        hits = self.store.similar(
            perceptual_hash, max_distance, bucket=self.bucket, limit=limit + 1, algorithm=algorithm
        )
        hashes = [e.content_hash for e in hits]
        named: dict[str, list[str]] = {}
        hidden: set[str] = set()
        M = CollectionImageRow
        with self.store.engine.connect() as conn:
            for ext_id, chash in conn.execute(
                select(M.image_id, M.content_hash).where(
                    M.collection_id == self._cid, or_(M.content_hash.in_(hashes), M.image_id.in_(hashes))
                )
            ):
                if chash in hashes:
                    named.setdefault(chash, []).append(ext_id)
                if ext_id in hashes:
                    hidden.add(ext_id)
        out: list[Match] = []
        for entry in hits:
            chash = entry.content_hash
            ids = named.get(chash) or ([] if chash in hidden else [chash])
            out.extend(Match(i, entry.hamming_distance or 0) for i in ids if i != leave_out)
        out.sort(key=lambda m: (m.distance, m.image_id))
        return out[:limit]

    # writing

    def add(
        self, data: bytes, info: ImageInfo, image_id: str | None = None, overwrite: bool = False
    ) -> tuple[CollectionImage, bool]:
        """Cache the bytes into the bucket under ``image_id`` (generated when None).

        Returns the image and whether the id is new. An existing id raises :class:`IdTaken`
        unless ``overwrite``; the bytes it named leave the bucket when nothing names them now.
        """
        if image_id is None:
            image_id = uuid.uuid4().hex
        self.store.put_bytes(data, info)  # the slow, durable write of the bytes: outside the lock
        with collection_lock(self.store, self._cid):
            current = self.get(image_id)
            if current is not None and not overwrite:
                raise IdTaken(image_id)
            put = self.store.put(
                data,
                url=f"visualsnoop://{self.collection.collection_id}/image/{image_id}",
                client_name=CLIENT_NAME,
                bucket=self.bucket,
                info=info,
            )
            chash = put.entry.content_hash
            try:
                named_at = self._name(image_id, chash, replace=overwrite)
            except IntegrityError:  # (a process without the lock named it first)
                if put.created:
                    self._drop_if_unnamed(chash)
                raise IdTaken(image_id) from None
            if current is not None and current.content_hash != chash:
                self._drop_if_unnamed(current.content_hash)
            added = self.get(image_id)
        if added is None:  # its bytes left the bucket at once (a spider's delete, gc): still named
            added = CollectionImage(image_id, chash, named_at, 1, 0)
        return added, current is None

    def delete(self, image_id: str) -> CollectionImage | None:
        with collection_lock(self.store, self._cid):
            current = self.get(image_id)
            if current is None:
                return None
            if current.kind:
                with self._writer.begin() as conn:
                    conn.execute(
                        delete(CollectionImageRow).where(
                            CollectionImageRow.collection_id == self._cid, CollectionImageRow.image_id == image_id
                        )
                    )
            self._drop_if_unnamed(current.content_hash)
        return current

    def _name(self, image_id: str, chash: str, replace: bool) -> datetime:
        """Point ``image_id`` at ``chash``; without ``replace`` only a free (or dangling) id.

        An overwrite whose insert loses to a concurrent insert of the same id updates that one
        instead; a plain add raises :class:`IntegrityError`. Returns the new ``image_time``.
        """
        M = CollectionImageRow
        mine = and_(M.collection_id == self._cid, M.image_id == image_id)
        for attempt in range(_NAME_ATTEMPTS):
            now = utcnow()
            values = {"content_hash": chash, "image_time": now}
            try:
                with self._writer.begin() as conn:
                    if replace:
                        if conn.execute(update(M).where(mine).values(**values)).rowcount:
                            return now
                    else:  # an id whose bytes left the bucket (gc, a spider's delete) is free again
                        conn.execute(delete(M).where(mine, ~self._cached(M.content_hash)))
                    conn.execute(insert(M).values(collection_id=self._cid, image_id=image_id, **values))
                    return now
            except IntegrityError:
                if not replace or attempt == _NAME_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _drop_if_unnamed(self, chash: str) -> None:
        """Remove ``chash`` from the bucket unless an id of the collection names it (under the lock)."""
        M = CollectionImageRow
        with self.store.engine.connect() as conn:
            named = conn.execute(
                select(M.id).where(M.collection_id == self._cid, M.content_hash == chash).limit(1)
            ).first()
        if named is None:
            self.store.delete(chash, self.bucket)

    # the listing

    def _cached(self, chash: Any) -> Any:
        return exists(select(ImageRow.id).where(ImageRow.bucket == self.bucket, ImageRow.content_hash == chash))

    def _listing(self) -> Any:
        return union_all(*self._halves()).subquery()

    def _halves(self) -> tuple[Any, Any]:
        """Ids given through the API (kind 1), and the bucket's images no id names (kind 0)."""
        M = CollectionImageRow
        named = select(
            M.image_id.label("id"),
            M.content_hash.label("chash"),
            M.image_time.label("image_time"),
            literal(1, Integer).label("kind"),
            M.id.label("rid"),
        ).where(M.collection_id == self._cid, self._cached(M.content_hash))
        mine = M.collection_id == self._cid
        unnamed = select(
            ImageRow.content_hash.label("id"),
            ImageRow.content_hash.label("chash"),
            ImageRow.created_at.label("image_time"),
            literal(0, Integer).label("kind"),
            ImageRow.id.label("rid"),
        ).where(
            ImageRow.bucket == self.bucket,
            ~exists(select(M.id).where(mine, M.content_hash == ImageRow.content_hash)),
            ~exists(select(M.id).where(mine, M.image_id == ImageRow.content_hash)),
        )
        return named, unnamed


def _image(row: Any) -> CollectionImage:
    return CollectionImage(row.id, row.chash, row.image_time, int(row.kind), int(row.rid))
