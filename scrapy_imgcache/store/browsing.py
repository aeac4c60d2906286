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
    """The query's filters beyond the bucket."""
    conds: list[Any] = []
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


def _beyond(cursor: tuple[datetime, int], upwards: bool, inclusive: bool = False) -> Any:
    """The rows past ``cursor`` in the reading direction (and the cursor's own, ``inclusive``)."""
    when, row_id = cursor
    if upwards:
        past = ImageRow.id >= row_id if inclusive else ImageRow.id > row_id
        return and_(ImageRow.created_at >= when, or_(ImageRow.created_at > when, past))
    past = ImageRow.id <= row_id if inclusive else ImageRow.id < row_id
    return and_(ImageRow.created_at <= when, or_(ImageRow.created_at < when, past))


@dataclass(frozen=True)
class Plan:
    """How one page is read. ``edge`` (filtered pages only) finds the last row the page may
    examine, the :data:`SCAN_BUDGET`-th past the cursor (a covering index read); ``page``
    then gives (id, created_at) of up to limit + 1 matching images up to that row."""

    query: BrowseQuery
    window: tuple[Any, ...]
    edge: Select[datetime, int] | None
    upwards: bool

    @property
    def order(self) -> tuple[Any, Any]:
        if self.upwards:
            return ImageRow.created_at, ImageRow.id
        return ImageRow.created_at.desc(), ImageRow.id.desc()

    def page(self, edge: tuple[datetime, int] | None) -> Select[int, datetime]:
        conds = [*self.window, *_filters(self.query)]
        if edge is not None:
            conds.append(_beyond(edge, not self.upwards, inclusive=True))
        return select(ImageRow.id, ImageRow.created_at).where(*conds).order_by(*self.order).limit(self.query.limit + 1)


def browse_plan(query: BrowseQuery) -> Plan:
    """The statements of a page: newest first (a page *after* a cursor is read upwards, oldest
    first), one indexed range read each; a filtered page reads at most :data:`SCAN_BUDGET`
    rows. (Cutting the range in a subquery with LIMIT instead made SQLite read all of it
    before filtering: ~130 ms a page at a million images, against a few ms this way.)"""
    upwards = query.after is not None
    window: list[Any] = [ImageRow.bucket == query.bucket]
    cursor = query.after if upwards else query.before
    if cursor is not None:
        window.append(_beyond(parse_cursor(cursor), upwards))
    plan = Plan(query, tuple(window), None, upwards)
    if not _filters(query):
        return plan
    edge = select(ImageRow.created_at, ImageRow.id).where(*window).order_by(*plan.order)
    return Plan(query, tuple(window), edge.offset(SCAN_BUDGET - 1).limit(1), upwards)


def cursors(
    query: BrowseQuery, plan: Plan, found: list[tuple[int, datetime]], more: bool, edge: tuple[datetime, int] | None
) -> tuple[str | None, str | None]:
    """(newer, older) of a page whose images are ``found`` (id, created_at), newest first;
    ``more``: an image past them matched; ``edge``: the last row the page could examine."""
    carry_on = make_cursor(*edge) if edge is not None else None
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
