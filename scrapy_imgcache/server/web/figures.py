"""What the web page's views show, computed from the store (no HTTP here): the overview's
figures and chart, and the near-duplicate groups of ``imgcache-dupes``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta

from ...commands.dupes import Cluster, clusters
from ...store.base import Store, Usage, utcnow

#: the chart's span: images stored per day over the last DAYS days
DAYS = 30
CHART_WIDTH, CHART_HEIGHT = 600, 120


@dataclass(frozen=True)
class Bar:
    day: date
    images: int
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Overview:
    buckets: list[Usage]
    days: list[tuple[date, int]]
    totals: Usage = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "totals", _sum(self.buckets))

    @property
    def bars(self) -> list[Bar]:
        """The chart's bars, one a day, scaled to the busiest day (an SVG drawn by the server:
        no script, and no inline style for the CSP to allow)."""
        top = max((n for _, n in self.days), default=0) or 1
        step = CHART_WIDTH / max(len(self.days), 1)
        bars = []
        for i, (day, n) in enumerate(self.days):
            height = CHART_HEIGHT * n / top
            bars.append(Bar(day, n, i * step + 1, CHART_HEIGHT - height, max(step - 2, 1), height))
        return bars

    def clients(self, bucket: str) -> list[str]:
        return sorted(next((u.clients for u in self.buckets if u.bucket == bucket), {}))


def _sum(buckets: list[Usage]) -> Usage:
    total = Usage("")
    for usage in buckets:
        for name in ("images", "bytes", "urls", "exact_duplicates", "exact_bytes_saved"):
            setattr(total, name, getattr(total, name) + getattr(usage, name))
        total.similar_duplicates += usage.similar_duplicates
        total.similar_bytes_saved += usage.similar_bytes_saved
    return total


def overview(store: Store, _key: object = None) -> Overview:
    """Every bucket's figures (``Store.usage``) and the images stored per day, with the days
    that stored none filled in."""
    found = dict(store.daily_counts(None, DAYS))
    today = utcnow().date()
    days = [(d, found.get(d, 0)) for d in (today - timedelta(days=DAYS - 1 - i) for i in range(DAYS))]
    return Overview(store.usage(), days)


@dataclass(frozen=True)
class GroupsKey:
    bucket: str
    distance: int
    min_size: int


def groups(store: Store, key: GroupsKey) -> list[Cluster]:
    """The groups ``imgcache-dupes`` forms (its own function), largest first."""
    return clusters(store, key.bucket, key.distance, key.min_size)
