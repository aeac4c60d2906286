"""The SQL of the web page's views: a filtered page of a bucket's images, newest first, and
the images stored per day.

Pages are found by keyset ("seek") pagination on ``(created_at, id)``, which the index
``ix_imgcache_images_bucket_created`` (bucket, created_at, id) serves in order: page 10,000
costs what page 1 does, where ``OFFSET`` would read every row before it. The condition is
written ``created_at <= t AND (created_at < t OR id < i)`` rather than as a row-value
comparison, which MySQL/MariaDB do not always turn into an index range. A filtered page
examines at most :data:`SCAN_BUDGET` rows, so no filter makes a page slow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, exists, func, not_, or_, select

from .base import BrowseQuery, make_cursor, parse_cursor, utcnow
from .models import ImageRow, UrlRow

#: the most rows one filtered page examines: a filter few images pass (a rare format, a small
#: spider) would otherwise read the whole bucket for one page. A page that examined this many
#: rows without filling up ends there, with an ``older`` cursor to carry on from.
SCAN_BUDGET = 20_000
Columns = Callable[[str], Any]


def _has_url(image_id: Any, duplicate: str) -> Any:
    """An image has a URL record of that duplicate kind (the unique key on
    (image_id, url_hash, client_name) makes it one index probe an image)."""
    return exists().where(UrlRow.image_id == image_id, UrlRow.duplicate == duplicate)


def _duplicate_filter(kind: str, col: Columns) -> Any:
    exact = _has_url(col("id"), "exact")
    near = or_(col("similar_to").is_not(None), _has_url(col("id"), "similar"))
    if kind == "exact":
        return exact
    if kind == "near":
        return near
    return and_(not_(exact), not_(near))


def _filters(query: BrowseQuery, col: Columns) -> list[Any]:
    """The query's filters beyond the bucket, on the columns ``col`` names."""
    conds: list[Any] = []
    if query.client is not None:
        conds.append(col("client_name") == query.client)
    if query.content_type is not None:
        conds.append(col("content_type") == query.content_type)
    if query.duplicate is not None:
        conds.append(_duplicate_filter(query.duplicate, col))
    if query.min_size is not None:
        conds.append(col("file_size") >= query.min_size)
    if query.max_size is not None:
        conds.append(col("file_size") <= query.max_size)
    return conds


@dataclass(frozen=True)
class Plan:
    """How one page is read: ``page`` gives (id, created_at) of up to limit + 1 images;
    ``edge`` (filtered pages) the last row the page examined and how many it examined."""

    page: Select[int, datetime]
    edge: Select[datetime, int, int] | None
    upwards: bool


def _window(query: BrowseQuery, upwards: bool) -> list[Any]:
    conds: list[Any] = [ImageRow.bucket == query.bucket]
    cursor = query.after if upwards else query.before
    if cursor is not None:
        when, row_id = parse_cursor(cursor)
        if upwards:
            conds.append(and_(ImageRow.created_at >= when, or_(ImageRow.created_at > when, ImageRow.id > row_id)))
        else:
            conds.append(and_(ImageRow.created_at <= when, or_(ImageRow.created_at < when, ImageRow.id < row_id)))
    return conds


def browse_plan(query: BrowseQuery) -> Plan:
    """The statements of a page: newest first (a page *after* a cursor is read upwards, oldest
    first). Unfiltered, one indexed range read; filtered, the same range cut at
    :data:`SCAN_BUDGET` rows, and the filters applied to those."""
    upwards = query.after is not None
    window = _window(query, upwards)

    def order(c: Columns) -> tuple[Any, Any]:
        return (c("created_at"), c("id")) if upwards else (c("created_at").desc(), c("id").desc())

    table: Columns = lambda name: getattr(ImageRow, name)  # noqa: E731
    filters = _filters(query, table)
    if not filters:
        stmt = select(ImageRow.id, ImageRow.created_at).where(*window).order_by(*order(table))
        return Plan(stmt.limit(query.limit + 1), None, upwards)
    names = ("id", "created_at", "client_name", "content_type", "file_size", "similar_to")
    scanned = (
        select(*(getattr(ImageRow, n) for n in names)).where(*window).order_by(*order(table)).limit(SCAN_BUDGET)
    ).subquery()
    col: Columns = lambda name: scanned.c[name]  # noqa: E731
    page = select(scanned.c.id, scanned.c.created_at).where(*_filters(query, col)).order_by(*order(col))
    last = (scanned.c.created_at.desc(), scanned.c.id.desc()) if upwards else (scanned.c.created_at, scanned.c.id)
    edge = select(scanned.c.created_at, scanned.c.id, func.count().over()).order_by(*last).limit(1)
    return Plan(page.limit(query.limit + 1), edge, upwards)


def cursors(
    query: BrowseQuery, plan: Plan, found: list[tuple[int, datetime]], more: bool, edge: Any
) -> tuple[str | None, str | None]:
    """(newer, older) of a page whose images are ``found`` (id, created_at), newest first;
    ``more``: an image past them matched; ``edge``: the last row examined and the count."""
    carry_on = make_cursor(edge[0], edge[1]) if edge is not None and edge[2] >= SCAN_BUDGET else None
    first = make_cursor(found[0][1], found[0][0]) if found else None
    last = make_cursor(found[-1][1], found[-1][0]) if found else None
    if plan.upwards:
        return (first if more else carry_on), (last or _including(query.after, +1))
    newer = (first or _including(query.before, -1)) if query.before is not None else None
    return newer, (last if more else carry_on)


def _including(cursor: str | None, step: int) -> str | None:
    """A cursor one id past ``cursor``, so that the page it leads to holds the image at
    ``cursor`` too (cursors exclude their own image): how an empty page leads back."""
    if cursor is None:
        return None
    when, row_id = parse_cursor(cursor)
    return make_cursor(when, max(row_id + step, 0))


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
