"""The SQL store's upkeep (``scrapy imgcache-gc``): files no row references, rows whose
bytes are gone, images not seen for a while; never what a write in flight needs.

A part of :class:`~scrapy_imgcache.store.sql.SqlStore` (its base class), apart because it
is its own concern: what the store's reads and writes need from it is the names below.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import func, select

from .base import HASH_RE, Entry, GcReport, as_utc
from .blobs import BlobStore, hash_of_key, is_temporary
from .models import ImageRow, UrlRow

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

T = TypeVar("T")


class GarbageCollection:
    """:meth:`collect_garbage` and what it reports on, over the store's rows and blobs."""

    engine: Engine
    blobs: BlobStore

    if TYPE_CHECKING:  # the store's own, which this part uses

        def images(self, bucket: str | None = None) -> Iterator[Entry]: ...

        def remove_blob(self, key: str) -> bool: ...

        def _read(self, work: Callable[[Connection], T]) -> T: ...

        def _delete(
            self, bucket: str, content_hash: str, unless: Callable[[Connection, int], bool] | None = None
        ) -> bool: ...

        def _latest_by_image(self, image_ids: Sequence[int]) -> dict[int, Entry]: ...

    def collect_garbage(
        self, *, grace_seconds: float, older_than: datetime | None = None, dry_run: bool = False
    ) -> GcReport:
        """Files no row references that are older than the grace period first (so that a full
        disk gets space back before the database is written), then rows whose bytes are gone
        (damage, not garbage), then images not seen since ``older_than``.

        Whatever the grace, nothing a write in flight needs is removed: a blob is held by its
        writer until its row is written (``BlobStore.hold``), temporary files by theirs, and a
        row is deleted with the image row locked, only if no URL record was written for it
        since it was found (a writer storing those bytes again, or seeing the URL again)."""
        report = GcReport(dry_run=dry_run)
        orphans = self.orphan_blobs(grace_seconds)
        if not dry_run:
            orphans = [(key, size) for key, size in orphans if self._remove_orphan(key)]
        report.orphans, report.orphan_bytes = len(orphans), sum(size for _, size in orphans)
        missing = self.missing_blobs()
        report.missing = missing if dry_run else self._remove_missing(missing)
        if older_than is not None:
            report.expired = self.expired(older_than)
            report.expired_bytes = self._remove_images(report.expired, dry_run, older_than)
        return report

    def _remove_orphan(self, key: str) -> bool:
        return self.blobs.remove_if(key, lambda: True) if is_temporary(key) else self.remove_blob(key)

    def _remove_missing(self, entries: list[Entry]) -> list[Entry]:
        """Delete the rows of these images whose bytes are still gone, unless a URL record of
        the image was written since they were found missing; the rows deleted."""
        removed = []
        for entry in entries:
            found = self._read(functools.partial(_url_mark, bucket=entry.bucket, chash=entry.content_hash))
            if found is None or self.blobs.exists(entry.path or ""):
                continue

            def written_since(conn: Connection, _id: int, found: tuple[Any, ...] = found, e: Entry = entry) -> bool:
                return _url_mark(conn, e.bucket, e.content_hash) != found

            if self._delete(entry.bucket, entry.content_hash, unless=written_since):
                removed.append(entry)
        return removed

    def _remove_images(self, entries: list[Entry], dry_run: bool, older_than: datetime) -> int:
        """Delete these images unless seen since ``older_than`` meanwhile; the bytes actually
        freed (a blob shared with another bucket stays)."""
        freed = 0
        for entry in entries:
            key = entry.path or ""
            present = self.blobs.exists(key)
            if dry_run:
                freed += entry.file_size_bytes if present else 0
                continue

            def seen_since(conn: Connection, image_id: int) -> bool:
                newest = conn.execute(select(func.max(UrlRow.lookup_time)).where(UrlRow.image_id == image_id)).scalar()
                return newest is not None and as_utc(newest) >= older_than

            if (
                self._delete(entry.bucket, entry.content_hash, unless=seen_since)
                and present
                and not self.blobs.exists(key)
            ):
                freed += entry.file_size_bytes
        return freed

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
            select(UrlRow.image_id, func.max(UrlRow.lookup_time).label("seen")).group_by(UrlRow.image_id).subquery()
        )
        stmt = select(ImageRow.id).join(newest, newest.c.image_id == ImageRow.id).where(newest.c.seen < older_than)
        if bucket is not None:
            stmt = stmt.where(ImageRow.bucket == bucket)
        with self.engine.connect() as conn:
            ids = list(conn.execute(stmt).scalars())
        return list(self._latest_by_image(ids).values())


def _url_mark(conn: Connection, bucket: str, chash: str) -> tuple[Any, ...] | None:
    """What changes when a URL record of an image is written: its id, and its URL records'
    number, newest id and newest sighting (None: no such image)."""
    stmt = (
        select(ImageRow.id, func.count(UrlRow.id), func.max(UrlRow.id), func.max(UrlRow.lookup_time))
        .outerjoin(UrlRow, UrlRow.image_id == ImageRow.id)
        .where(ImageRow.bucket == bucket, ImageRow.content_hash == chash)
        .group_by(ImageRow.id)
    )
    row = conn.execute(stmt).first()
    return None if row is None else tuple(row)


def _is_blob(key: str) -> bool:
    return bool(HASH_RE.match(hash_of_key(key)))
