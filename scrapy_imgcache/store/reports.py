"""What the SQL store holds, page by page and in sums: every image, the web page's pages of a
bucket, images stored per day, and the usage report (``scrapy imgcache-stats``).

A part of :class:`~scrapy_imgcache.store.sql.SqlStore` (its base class), apart because it
is its own concern; the SQL of the pages and days is :mod:`.browsing`'s.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from .base import BrowsePage, BrowseQuery, Entry, Usage, every_image
from .browsing import as_date, browse_plan, cursors, daily_stmt
from .models import ImageRow, UrlRow

if TYPE_CHECKING:
    from sqlalchemy import Engine


class Reports:
    """The store's listings and sums."""

    engine: Engine

    if TYPE_CHECKING:  # the store's own, which this part uses

        def _latest_by_image(self, image_ids: Sequence[int]) -> dict[int, Entry]: ...

    def images(self, bucket: str | None = None) -> Iterator[Entry]:
        """Every image (with its most recent URL), oldest first; ``None`` walks every bucket."""
        return every_image(self.image_page, bucket)

    def image_page(self, bucket: str | None, after: int = 0, limit: int = 1000) -> tuple[list[Entry], int | None]:
        """Up to ``limit`` images past the cursor ``after`` (0: the first), oldest first, and
        the cursor of the next page (None after the last)."""
        stmt = select(ImageRow.id).where(ImageRow.id > after).order_by(ImageRow.id).limit(limit)
        if bucket is not None:
            stmt = stmt.where(ImageRow.bucket == bucket)
        with self.engine.connect() as conn:
            ids = list(conn.execute(stmt).scalars())
        by_id = self._latest_by_image(ids)
        return [by_id[i] for i in ids if i in by_id], (ids[-1] if len(ids) == limit else None)

    def browse(self, query: BrowseQuery) -> BrowsePage:
        """A page by keyset pagination (see :mod:`.browsing`): one indexed range read of
        ``limit + 1`` ids (a filtered one examines at most ``SCAN_BUDGET`` rows), then their
        rows with their most recent URLs."""
        plan = browse_plan(query)
        with self.engine.connect() as conn:
            row = conn.execute(plan.edge).first() if plan.edge is not None else None
            edge = None if row is None else (row[0], row[1])
            found = [(r.id, r.created_at) for r in conn.execute(plan.page(edge))]
        more = len(found) > query.limit
        found = found[: query.limit]
        if plan.upwards:  # read oldest first from the cursor: shown newest first
            found.reverse()
        by_id = self._latest_by_image([i for i, _ in found])
        newer, older = cursors(query, plan, found, more, edge)
        return BrowsePage([by_id[i] for i, _ in found if i in by_id], newer, older)

    def daily_counts(self, bucket: str | None, days: int) -> list[tuple[date, int]]:
        stmt, _since = daily_stmt(bucket, self.buckets() if bucket is None else [], days)
        with self.engine.connect() as conn:
            return [(as_date(day), int(n)) for day, n in conn.execute(stmt)]

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
            urls_stmt = select(
                UrlRow.bucket,
                UrlRow.client_name,
                UrlRow.duplicate,
                func.count(),
                func.coalesce(func.sum(UrlRow.saved_bytes), 0),
            ).group_by(UrlRow.bucket, UrlRow.client_name, UrlRow.duplicate)
            for bucket, client, dup, n, saved in conn.execute(urls_stmt):
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
            images_stmt = select(
                ImageRow.bucket, ImageRow.client_name, func.count(), func.sum(ImageRow.file_size)
            ).group_by(ImageRow.bucket, ImageRow.client_name)
            for bucket, client, n, size in conn.execute(images_stmt):
                per = out[bucket].clients.setdefault(client, Usage(bucket))
                per.images += int(n)
                per.bytes += int(size or 0)
            # near-duplicates kept in annotate mode count too (their bytes were stored)
            similar_stmt = (
                select(ImageRow.bucket, ImageRow.client_name, func.count())
                .where(ImageRow.similar_to.is_not(None))
                .group_by(ImageRow.bucket, ImageRow.client_name)
            )
            for bucket, client, n in conn.execute(similar_stmt):
                out[bucket].similar_duplicates += int(n)
                out[bucket].clients.setdefault(client, Usage(bucket)).similar_duplicates += int(n)
        return [out[b] for b in sorted(out)]
