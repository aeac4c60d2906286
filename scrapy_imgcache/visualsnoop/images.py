"""One collection's images over the shared cache: the ids they were added under, listing,
search, adding and deleting.

A collection's images are the images cached in its bucket:

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
"""

from __future__ import annotations

import contextlib
import threading
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError

from ..errors import ImgCacheError
from ..hashing import ImageInfo
from ..store.base import utcnow
from ..store.locks import database_lock
from ..store.models import ImageRow
from ..store.sql import SqlStore
from .models import CollectionImageRow
from .registry import Collection

#: what the cache records as the client of images added through the API
CLIENT_NAME = "visualsnoop"
#: seconds a change waits for another change of the same collection before giving up
LOCK_TIMEOUT = 60.0
#: times an overwrite names its id again when a concurrent insert of the same id won
_NAME_ATTEMPTS = 3


class IdTaken(ImgCacheError):
    """POST of an image id the collection already has."""


# -- serialising a collection's changes --------------------------------------------------

_guard = threading.Lock()
#: per store, a pool of its own for the connections that hold database locks (a lock held on
#: a connection of the store's pools, while the work under it takes more from them, could
#: exhaust them with waiters; a connection per lock costs ~50 ms on MariaDB)
_lock_engines: weakref.WeakKeyDictionary[SqlStore, Engine] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def collection_lock(store: SqlStore, row_id: int, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the lock on one collection's changes, for every thread and process using
    ``store``'s database (``store.locks.database_lock``); :class:`StoreError` after ``timeout``
    seconds of waiting."""
    with database_lock(_lock_engine(store), "collection", f"{store.cache_id}:{row_id}", timeout):
        yield


def _lock_engine(store: SqlStore) -> Engine:
    with _guard:
        engine = _lock_engines.get(store)
        if engine is None:
            engine = create_engine(
                store.engine.url, pool_size=2, max_overflow=30, pool_pre_ping=True, pool_recycle=3600
            )
            _lock_engines[store] = engine
        return engine


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
