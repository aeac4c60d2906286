"""The SQL of the web page's views: a filtered page of a bucket's images, newest first, and
the images stored per day.

Pages are found by keyset ("seek") pagination on ``(created_at, id)``, which the index
``ix_imgcache_images_bucket_created`` (bucket, created_at, id) serves in order: page 10,000
costs what page 1 does, where ``OFFSET`` would read every row before it. The condition is
written ``created_at <= t AND (created_at < t OR id < i)`` rather than as a row-value
comparison, which MySQL/MariaDB do not always turn into an index range.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, exists, func, not_, or_, select

from .base import BrowseQuery, parse_cursor, utcnow
from .models import ImageRow, UrlRow


def _has_url(duplicate: str) -> Any:
    """An image has a URL record of that duplicate kind (the unique key on
    (image_id, url_hash, client_name) makes it one index probe an image)."""
    return exists().where(UrlRow.image_id == ImageRow.id, UrlRow.duplicate == duplicate)


def _duplicate_filter(kind: str) -> Any:
    exact = _has_url("exact")
    near = or_(ImageRow.similar_to.is_not(None), _has_url("similar"))
    if kind == "exact":
        return exact
    if kind == "near":
        return near
    return and_(not_(exact), not_(near))


def _filters(query: BrowseQuery) -> list[Any]:
    conds: list[Any] = [ImageRow.bucket == query.bucket]
    if query.client is not None:
        conds.append(ImageRow.client_name == query.client)
    if query.content_type is not None:
        conds.append(ImageRow.content_type == query.content_type)
    if query.duplicate is not None:
        conds.append(_duplicate_filter(query.duplicate))
    if query.min_size is not None:
        conds.append(ImageRow.file_size >= query.min_size)
    if query.max_size is not None:
        conds.append(ImageRow.file_size <= query.max_size)
    return conds


def browse_stmt(query: BrowseQuery) -> tuple[Select[int, datetime], bool]:
    """(the ids and creation times of the page's images, plus one to tell whether there are
    more; whether they come oldest first: a page *after* a cursor is read upwards)."""
    conds = _filters(query)
    upwards = query.after is not None
    cursor = query.after if upwards else query.before
    if cursor is not None:
        when, row_id = parse_cursor(cursor)
        if upwards:
            conds.append(and_(ImageRow.created_at >= when, or_(ImageRow.created_at > when, ImageRow.id > row_id)))
        else:
            conds.append(and_(ImageRow.created_at <= when, or_(ImageRow.created_at < when, ImageRow.id < row_id)))
    order = (ImageRow.created_at, ImageRow.id) if upwards else (ImageRow.created_at.desc(), ImageRow.id.desc())
    stmt = select(ImageRow.id, ImageRow.created_at).where(*conds).order_by(*order).limit(query.limit + 1)
    return stmt, upwards


def daily_stmt(bucket: str | None, buckets: list[str], days: int) -> tuple[Select[Any], datetime]:
    """Images created per day since ``days`` days ago (UTC midnight), per bucket in ``buckets``
    so the (bucket, created_at) index serves each range; ``func.date`` is SQL's ``date()`` on
    SQLite, PostgreSQL and MySQL/MariaDB alike."""
    since = datetime.combine(utcnow().date() - timedelta(days=max(days, 1) - 1), datetime.min.time())
    wanted = [bucket] if bucket is not None else buckets
    day = func.date(ImageRow.created_at)
    stmt = (
        select(day, func.count())
        .where(ImageRow.bucket.in_(wanted), ImageRow.created_at >= since)
        .group_by(day)
        .order_by(day)
    )
    return stmt, since


def as_date(value: Any) -> date:
    """A ``date()`` result as a date: a string on SQLite, a date elsewhere."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])
