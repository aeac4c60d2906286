"""The SQL a :class:`~.sql.SqlStore` runs per image, built once at import.

Building a statement and deriving its cache key cost ~0.6 ms, several times its execution,
so the per-image reads and writes are prebuilt here with bound parameters and take their
values at execution. Rows come back as plain columns in :class:`~.base.Entry` order.
"""

from __future__ import annotations

import functools
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, Select, any_, bindparam, func, or_, select, true, union_all
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import aliased

from .base import Entry
from .models import ImageRow, UrlRow

if TYPE_CHECKING:
    from sqlalchemy import Insert, Table


def entry_columns(urls: Any = UrlRow) -> tuple[Any, ...]:
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
        ImageRow.similar_match,
        urls.duplicate,
        urls.created_at.label("first_seen"),
    )


ENTRY_COLUMNS = entry_columns()
assert [c.key for c in ENTRY_COLUMNS[1:]] == [f.name for f in fields(Entry)][: len(ENTRY_COLUMNS) - 1]


def joined() -> Select[Any]:
    return select(*ENTRY_COLUMNS).select_from(ImageRow).join(UrlRow, UrlRow.image_id == ImageRow.id)


def to_entry(row: Any, hamming_distance: int | None = None, match: str | None = None) -> Entry:
    return Entry(*row[1:], match=match, hamming_distance=hamming_distance)  # type: ignore[misc]


# similar() runs the two statements below on every query, so they are built once: building
# and cache-keying a statement costs more than a round trip. On PostgreSQL an array parameter
# keeps the SQL text the same whatever the number of ids, so psycopg prepares it after a few
# calls (planning the join costs more than running it); elsewhere an expanding IN.


def id_in(column: Any, name: str, postgres: bool) -> Any:
    if postgres:
        return column == any_(bindparam(name, type_=ARRAY(BigInteger)))
    return column.in_(bindparam(name, expanding=True))


def latest_rows_stmt(postgres: bool) -> Select[Any]:
    if postgres:
        # a LATERAL top-1 per image touches fewer pages than max(id) ... GROUP BY and a second
        # primary-key probe: p50 0.26 ms vs 0.38 ms for a dozen ids of a million cold rows
        newest = select(UrlRow).where(UrlRow.image_id == ImageRow.id).order_by(UrlRow.id.desc()).limit(1).lateral()
        urls = aliased(UrlRow, newest)
        return (
            select(*entry_columns(urls))
            .select_from(ImageRow)
            .join(urls, true())
            .where(id_in(ImageRow.id, "image_ids", postgres))
        )
    wanted = id_in(UrlRow.image_id, "image_ids", postgres)
    latest = select(func.max(UrlRow.id)).where(wanted).group_by(UrlRow.image_id).scalar_subquery()
    return joined().where(UrlRow.id.in_(latest))


def new_rows_stmt(gaps: bool, postgres: bool) -> Select[int, str, str, int | None, bool, bytes | None]:
    """Rows past the highest id the index has seen, and the recent ids it is still missing."""
    cond = ImageRow.id > bindparam("high")
    if gaps:
        cond = or_(cond, id_in(ImageRow.id, "gaps", postgres))
    cols = (
        ImageRow.id,
        ImageRow.bucket,
        ImageRow.hash_algorithm,
        ImageRow.phash_int,
        ImageRow.flat,
        ImageRow.extra_hashes,
    )
    return select(*cols).where(cond).order_by(ImageRow.id)


LATEST_ROWS = {postgres: latest_rows_stmt(postgres) for postgres in (True, False)}
#: the verification signatures of near-duplicate candidates (read from the database, never the blobs)
SIGNATURES = select(ImageRow.id, ImageRow.signature).where(ImageRow.id.in_(bindparam("image_ids", expanding=True)))
NEW_ROWS = {(gaps, pg): new_rows_stmt(gaps, pg) for gaps in (True, False) for pg in (True, False)}
#: what a cached image is searched with (``near_cached``), and the images linked to it by a
#: recorded near-duplicate match, either way round: (image id, distance, how it matched)
NEAR_SOURCE = select(
    ImageRow.id, ImageRow.perceptual_hash, ImageRow.hash_algorithm, ImageRow.flat, ImageRow.signature,
    ImageRow.extra_hashes,
).where(ImageRow.bucket == bindparam("bucket"), ImageRow.content_hash == bindparam("chash"))  # fmt: skip
_SOURCE = aliased(ImageRow)
NEAR_LINKS = union_all(
    select(ImageRow.id, ImageRow.similar_distance, ImageRow.similar_match).where(
        ImageRow.bucket == bindparam("bucket"), ImageRow.similar_to == bindparam("chash")
    ),
    select(ImageRow.id, _SOURCE.similar_distance, _SOURCE.similar_match)
    .select_from(_SOURCE)
    .join(ImageRow, (ImageRow.bucket == _SOURCE.bucket) & (ImageRow.content_hash == _SOURCE.similar_to))
    .where(_SOURCE.bucket == bindparam("bucket"), _SOURCE.content_hash == bindparam("chash")),
)


# the per-image reads (every put, get_meta and middleware lookup) are prebuilt with bound
# parameters too: building one and deriving its cache key cost ~0.6 ms, ~4x its execution
NEWEST_FIRST = (UrlRow.lookup_time.desc(), UrlRow.id.desc())
BY_HASH = (ImageRow.bucket == bindparam("bucket"), ImageRow.content_hash == bindparam("chash"))
IMAGE_ID = select(ImageRow.id).where(*BY_HASH)
BLOB_KEY = select(ImageRow.blob_key).where(*BY_HASH)
LOOKUP = (
    joined()
    .where(
        UrlRow.bucket == bindparam("bucket"), UrlRow.url_hash == bindparam("url_hash"), UrlRow.url == bindparam("url")
    )
    .order_by(*NEWEST_FIRST)
    .limit(1)
)


@functools.cache
def insert_ignore_stmt(dialect: str, table: Table) -> Insert:
    """INSERT unless the unique key exists, values bound at execution (sqlite, postgresql, mysql)."""
    if dialect in ("mysql", "mariadb"):
        return mysql_insert(table).prefix_with("IGNORE")
    return (sqlite_insert if dialect == "sqlite" else pg_insert)(table).on_conflict_do_nothing().returning(table.c.id)


@functools.cache
def upsert_url_stmt(dialect: str) -> Insert:
    """Insert a URL record, or refresh when it was seen and its validators (same values as inserted)."""
    table = UrlRow.__table__
    refresh = ("lookup_time", "etag", "last_modified")
    if dialect in ("mysql", "mariadb"):
        my_ins = mysql_insert(table)
        return my_ins.on_duplicate_key_update({k: my_ins.inserted[k] for k in refresh})
    ins = (sqlite_insert if dialect == "sqlite" else pg_insert)(table)
    return ins.on_conflict_do_update(
        index_elements=["image_id", "url_hash", "client_name"], set_={k: ins.excluded[k] for k in refresh}
    )


def entry_stmt(by_url: bool, by_client: bool) -> Select[Any]:
    stmt = joined().where(*BY_HASH)
    if by_url:
        stmt = stmt.where(UrlRow.url_hash == bindparam("url_hash"))
        if by_client:
            stmt = stmt.where(UrlRow.client_name == bindparam("client_name"))
    return stmt.order_by(*NEWEST_FIRST).limit(1)


ENTRY = {(u, c): entry_stmt(u, c) for u in (True, False) for c in (True, False) if u or not c}
