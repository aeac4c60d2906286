"""Web page benchmark: the overview and the grid of ``/web/`` at a million cached images.

Not a test: it prints the figures of BENCHMARKS.md. Run from the repository root:

    python -m benchmarks.bench_web                  # 1M images, SQLite and PostgreSQL (~10 minutes)
    python -m benchmarks.bench_web --rows 100000 --db sqlite

The cache is filled by bulk inserts of synthetic rows (``bench_store.insert_rows``) shaped
like a crawl's: 95 % in the default bucket, five spiders of unequal size, mostly JPEG, sizes
from a few KiB to MiBs, a year of creation times, 5 % stored as near-duplicates and 10 % seen
again as exact copies. Then a real ``imgcache-server`` answers over loopback HTTP, one request
at a time, and each page is timed from request to last byte: the overview (whose figures are
counted in a background thread and kept a minute: the count itself is timed too, in-process),
the grid's first page, a page half-way down (keyset pages cost the same at any depth) and
filtered pages.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import select

from benchmarks.bench_store import Database, insert_rows, machine
from scrapy_imgcache.hashing import content_hash
from scrapy_imgcache.server.process import imgcache_server
from scrapy_imgcache.store.base import make_cursor
from scrapy_imgcache.store.models import ImageRow
from scrapy_imgcache.store.sql import SqlStore

CLIENTS = ("shop_spider", "blog_spider", "forum_spider", "news_spider", "archive_spider")
CLIENT_SHARE = (0.5, 0.25, 0.12, 0.08, 0.05)
TYPES = (("image/jpeg", ".jpg"), ("image/png", ".png"), ("image/webp", ".webp"), ("image/gif", ".gif"))
TYPE_SHARE = (0.8, 0.12, 0.05, 0.03)


def varied_rows(n: int, seed: int = 0) -> tuple[list[tuple], list[tuple]]:
    """``n`` image rows and their URL rows (one each, plus an exact copy's for one in ten)."""
    rng = np.random.default_rng(seed)
    clients = rng.choice(len(CLIENTS), n, p=CLIENT_SHARE)
    types = rng.choice(len(TYPES), n, p=TYPE_SHARE)
    sizes = np.clip(rng.lognormal(11, 1.2, n), 2_000, 8_000_000).astype(np.int64)
    buckets = rng.random(n) < 0.05
    near = rng.random(n) < 0.05
    copied = rng.random(n) < 0.10
    phashes = rng.integers(0, 1 << 63, n, dtype=np.int64)
    start = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(days=365)
    step = timedelta(days=365) / n
    images, urls = [], []
    for i in range(n):
        rid = i + 1
        chash = f"{rid:064x}"
        mime, ext = TYPES[types[i]]
        when = start + step * i
        bucket = "other" if buckets[i] else ""
        client = CLIENTS[clients[i]]
        similar = f"{max(rid - 7, 1):064x}" if near[i] else None
        images.append((
            rid, bucket, chash, mime, int(sizes[i]), 640, 480, f"{int(phashes[i]) & (2**64 - 1):016x}",
            int(phashes[i]), "phash", False, f"{chash[:2]}/{chash[2:4]}/{chash}{ext}", None, client, when, when,
            similar, 3 if similar else None,
        ))  # fmt: skip
        url = f"https://{client}.example/img/{rid}{ext}"
        record = (rid, bucket, url, content_hash(url.encode()), client, when, when, None, None, None)
        urls.append((len(urls) + 1, *record, 0))
        if copied[i]:
            url = f"https://mirror.example/{rid}{ext}"
            record = (rid, bucket, url, content_hash(url.encode()), "blog_spider", when, when, None, None, "exact")
            urls.append((len(urls) + 1, *record, int(sizes[i])))
    return images, urls


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.95))]


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        began = time.perf_counter()
        call()
        out.append(time.perf_counter() - began)
    return out


def deep_cursor(store: SqlStore, bucket: str, depth: int) -> str:
    """The cursor of the image ``depth`` rows down a bucket's grid (read once, not timed)."""
    stmt = (
        select(ImageRow.created_at, ImageRow.id)
        .where(ImageRow.bucket == bucket)
        .order_by(ImageRow.created_at.desc(), ImageRow.id.desc())
        .offset(depth)
        .limit(1)
    )
    with store.engine.connect() as conn:
        when, row_id = conn.execute(stmt).one()
    return make_cursor(when, row_id)


def pages(store: SqlStore, rows: int) -> Iterator[tuple[str, str, dict[str, str]]]:
    half = deep_cursor(store, "", rows * 95 // 200)
    yield "grid, first page", "/web/browse", {}
    yield "grid, half-way down (~475k rows deep at 1M)", "/web/browse", {"before": half}
    yield "grid, format=png", "/web/browse", {"format": "image/png"}
    yield "grid, client=news_spider (8 %)", "/web/browse", {"client": "news_spider"}
    yield "grid, near-duplicates (5 %)", "/web/browse", {"duplicate": "near"}
    yield "grid, seen as exact copies (10 %), half-way down", "/web/browse", {"duplicate": "exact", "before": half}
    yield "grid, bucket 'other' (5 %)", "/web/browse", {"bucket": "other"}
    yield "grid, png over 1 MiB (0.3 %)", "/web/browse", {"format": "image/png", "min_kib": "1024"}


def bench(kind: str, workdir: str, rows: int, repeat: int) -> None:
    db = Database(kind, workdir)
    try:
        store = db.store()
        began = time.perf_counter()
        insert_rows(store, *varied_rows(rows))
        print(f"\n## {kind}, {rows:,} images (filled in {time.perf_counter() - began:.0f} s)\n")
        counts = timed(lambda: (store.usage(), store.daily_counts(None, 30)), 3)
        serverdir = Path(workdir) / f"server-{kind}"
        serverdir.mkdir()
        print(f"overview figures counted in-process (usage + daily_counts): {min(counts) * 1000:.0f} ms best of 3\n")
        with (
            imgcache_server(db.url, serverdir) as server,
            httpx.Client(base_url=server.url, timeout=120) as http,
        ):
            began = time.perf_counter()
            while 'id="total-images"' not in http.get("/web/").text:  # "still counting" until the first count
                time.sleep(0.2)
            first = time.perf_counter() - began
            print("| page | p50 ms | p95 ms |\n|---|---|---|")
            print(f"| overview, from the first view to the first count shown | {first * 1000:.0f} | - |")
            report(http, "overview, later views", "/web/", {}, repeat)
            for label, path, params in pages(store, rows):
                report(http, label, path, params, repeat)
        store.close()
    finally:
        db.drop()


def report(http: httpx.Client, label: str, path: str, params: dict[str, str], repeat: int) -> None:
    response = http.get(path, params=params)
    response.raise_for_status()
    cards = response.text.count('class="card ')
    shown = f" ({cards} images)" if path == "/web/browse" else ""
    p50, p95 = percentiles(timed(lambda: http.get(path, params=params).raise_for_status(), repeat))
    print(f"| {label}{shown} | {p50:.1f} | {p95:.1f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--db", action="append", choices=("sqlite", "postgresql"), help="default: both")
    parser.add_argument("--repeat", type=int, default=50, help="requests timed per page")
    args = parser.parse_args(argv)
    print(f"# bench_web {' '.join(sys.argv[1:])}\n\nMachine: {machine()}\nload average: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="imgcache-bench-web-") as workdir:
        for kind in args.db or ["sqlite", "postgresql"]:
            bench(kind, workdir, args.rows, args.repeat)


if __name__ == "__main__":
    main()
