"""Store benchmark: ingest throughput on real photos, and similar-search latency at scale.

Not a test: it prints figures for docs/store-benchmark.md. Run from the repository root:

    python -m benchmarks.bench_store            # 100k and 1M stored hashes (several minutes)
    python -m benchmarks.bench_store --quick    # 10k and 100k, fewer queries

Similar-search goes through the public API (``SqlStore.similar``), so each query pays for
the index refresh (one SQL query), the in-memory index, and fetching the matches' rows.
The synthetic rows are bulk-inserted with SQL; their hashes are clustered like real pHashes
(the DC bit always set, near-duplicate families a few bits apart), not uniformly random.
Every answer is checked against a numpy linear scan, and so is pybktree's.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import create_engine, text

from scrapy_imgcache.hashing import Inspector, content_hash
from scrapy_imgcache.store.index import linear_scan
from scrapy_imgcache.store.sql import SqlStore

POSTGRES_URL = os.environ.get("IMGCACHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DISTANCES = (4, 8, 10)
MASK64 = (1 << 64) - 1


# -- synthetic pHash-like data -----------------------------------------------------------------


def clustered_hashes(n: int, seed: int = 0) -> np.ndarray:
    """``n`` pHash-like 64-bit values: families of near-duplicates around random centres.

    pHash's top bit (the DCT's DC term against the median) is always set, and real
    collections hold many near-duplicate families (resized, recompressed copies), so most
    values sit 0-6 bits from a family centre; family sizes follow Zipf(2), capped at 100.
    """
    rng = np.random.default_rng(seed)
    families = max(n // 8, 1)
    centres = rng.integers(0, 1 << 63, families, dtype=np.uint64) | np.uint64(1 << 63)
    sizes = rng.zipf(2.0, families).clip(1, 100)
    owner = np.repeat(np.arange(families), sizes)[:n]
    if len(owner) < n:
        owner = np.concatenate([owner, rng.integers(0, families, n - len(owner))])
    values = centres[owner].copy()
    flips = rng.binomial(6, 0.4, n)
    for k in range(1, flips.max() + 1):
        rows = np.nonzero(flips >= k)[0]
        bits = rng.integers(0, 63, len(rows)).astype(np.uint64)
        values[rows] ^= np.uint64(1) << bits
    rng.shuffle(values)
    return values


def queries(stored: np.ndarray, count: int, seed: int = 1) -> list[int]:
    """Half near a stored value (a re-crawled photo), half fresh pHash-like values (new ones)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        if i % 2 == 0:
            value = int(stored[rng.integers(0, len(stored))])
            for bit in rng.choice(63, rng.integers(0, 4), replace=False):
                value ^= 1 << int(bit)
        else:
            value = int(rng.integers(0, 1 << 63, dtype=np.uint64)) | (1 << 63)
        out.append(value)
    return out


def synthetic_rows(values: np.ndarray) -> Iterator[tuple[tuple, tuple]]:
    """(image row, url row) per hash; row id i+1 has the content hash ``f'{i+1:064x}'``."""
    now = datetime(2026, 1, 1, tzinfo=timezone.utc).replace(tzinfo=None)
    signed = values.view(np.int64)
    for i in range(len(values)):
        rid = i + 1
        chash = f"{rid:064x}"
        phash = f"{int(values[i]):016x}"
        url = f"https://example.com/img/{rid}.jpg"
        image = (
            rid,
            "",
            chash,
            "image/jpeg",
            50_000,
            640,
            480,
            phash,
            int(signed[i]),
            "phash",
            False,
            f"{chash[:2]}/{chash[2:4]}/{chash}.jpg",
            None,
            "bench",
            now,
            now,
            None,
            None,
        )
        record = (rid, rid, "", url, content_hash(url.encode()), "bench", now, now, None, None, None, 0)
        yield image, record


IMAGE_COLS = (
    "id, bucket, content_hash, content_type, file_size, width, height, perceptual_hash, phash_int, "
    "hash_algorithm, flat, blob_key, original_filename, client_name, lookup_time, created_at, "
    "similar_to, similar_distance"
)
URL_COLS = (
    "id, image_id, bucket, url, url_hash, client_name, lookup_time, created_at, etag, last_modified, duplicate,"
    " saved_bytes"
)


def bulk_insert(store: SqlStore, values: np.ndarray) -> None:
    """Rows straight into the tables: COPY on PostgreSQL, executemany on SQLite."""
    rows = list(synthetic_rows(values))
    insert_rows(store, [image for image, _ in rows], [record for _, record in rows])


def insert_rows(store: SqlStore, images: list[tuple], urls: list[tuple]) -> None:
    """Image rows (:data:`IMAGE_COLS`) and URL rows (:data:`URL_COLS`) in bulk, ids given."""
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        if store.engine.dialect.name == "postgresql":
            with cur.copy(f"COPY imgcache_images ({IMAGE_COLS}) FROM STDIN") as copy:
                for image in images:
                    copy.write_row(image)
            with cur.copy(f"COPY imgcache_urls ({URL_COLS}) FROM STDIN") as copy:
                for record in urls:
                    copy.write_row(record)
            for table, n in (("imgcache_images", len(images)), ("imgcache_urls", len(urls))):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {max(n, 1)})")
            cur.execute("ANALYZE")
        else:
            stamp = lambda row: tuple(v.strftime("%Y-%m-%d %H:%M:%S.%f") if isinstance(v, datetime) else v for v in row)  # noqa: E731
            cur.execute("BEGIN")
            cur.executemany(
                f"INSERT INTO imgcache_images ({IMAGE_COLS}) VALUES ({','.join('?' * 18)})", map(stamp, images)
            )
            cur.executemany(f"INSERT INTO imgcache_urls ({URL_COLS}) VALUES ({','.join('?' * 12)})", map(stamp, urls))
            cur.execute("COMMIT")
        raw.commit()
    finally:
        raw.close()


# -- databases -----------------------------------------------------------------------------


class Database:
    """A fresh SQLite file or PostgreSQL schema, removed afterwards."""

    def __init__(self, kind: str, workdir: str) -> None:
        self.kind = kind
        self.workdir = workdir
        self.schema = f"imgcache_bench_{uuid.uuid4().hex[:10]}"
        if kind == "sqlite":
            self.url = f"sqlite:///{workdir}/{self.schema}.sqlite3"
        else:
            self.admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
            with self.admin.connect() as conn:
                conn.execute(text(f"CREATE SCHEMA {self.schema}"))
            sep = "&" if "?" in POSTGRES_URL else "?"
            # the application name finds this run's backends (their CPU: bench_index.database_cpu)
            self.url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{self.schema}&application_name={self.schema}"
        self.files = os.path.join(self.workdir, self.schema + "-files")
        self.index_dir = os.path.join(self.workdir, self.schema + "-index")
        os.makedirs(self.index_dir, exist_ok=True)

    def store(self) -> SqlStore:
        return SqlStore(self.url, self.files, index_dir=self.index_dir)

    def drop(self) -> None:
        if self.kind == "postgresql":
            with self.admin.connect() as conn:
                conn.execute(text(f"DROP SCHEMA {self.schema} CASCADE"))
            self.admin.dispose()


# -- measuring ---------------------------------------------------------------------------


def percentiles(samples_s: list[float]) -> tuple[float, float]:
    ms = np.array(samples_s) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_ingest(kinds: list[str], workdir: str, count: int) -> None:
    from example_project.photos import distinct_images, encode

    bench_hashing(count)
    photos = [encode(img) for img in distinct_images(count, size=(800, 600))]
    size_kb = statistics.mean(len(p) for p in photos) / 1024
    print(f"\n## Ingest: {count} real photos, 800x600 JPEG q90, mean {size_kb:.0f} KiB")
    print("| step | ms per image (mean) | images/s |\n| --- | ---: | ---: |")
    for kind in kinds:
        db = Database(kind, workdir)
        store = db.store()
        try:
            spent = sum(
                timed(lambda i=i, p=p: store.put(p, url=f"https://e.com/{i}.jpg", client_name="bench"))[0]
                for i, p in enumerate(photos)
            )
            print(f"| hash + pHash + store.put ({kind}) | {spent / count * 1000:.2f} | {count / spent:.0f} |")
        finally:
            store.close()
            db.drop()


def bench_hashing(count: int) -> None:
    """What inspecting one image costs (BLAKE2b, decode, pHash, and in robust mode the extra
    hashes and the signature), by image size and IMGCACHE_SIMILARITY / IMGCACHE_FAST_HASH."""
    from example_project.photos import distinct_images, encode

    sizes = {"thumbnail 150x112": (150, 112), "800x600": (800, 600), "1600x1200": (1600, 1200)}
    modes = {
        "phash": Inspector(robust=False),
        "robust": Inspector(),
        "phash, fast": Inspector(robust=False, fast=True),
        "robust, fast": Inspector(fast=True),
    }
    warm = encode(distinct_images(1, size=(64, 48))[0])
    for inspector in modes.values():  # imports and first-call set-up are not an image's cost
        inspector.inspect(warm)
    print(f"\n## Inspecting one image: {count} real photos a size, JPEG q90, CPU ms per image (mean)")
    print("| size | " + " | ".join(modes) + " |\n| --- |" + " ---: |" * len(modes))
    for label, size in sizes.items():
        photos = [encode(img) for img in distinct_images(count, size=size)]
        cells = []
        for inspector in modes.values():
            start = time.process_time()
            for p in photos:
                inspector.inspect(p)
            cells.append(f"{(time.process_time() - start) / count * 1000:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


def bench_colour_check(count: int) -> None:
    """What the colour check of robust verification costs (issue 19): per verified candidate
    (``nearcolour.difference`` under the accepted alignment, and ``nearsig.verify`` with and
    without the colour bytes), and per image (its colour bytes, within ``robust`` above)."""
    from PIL import ImageOps

    from example_project.photos import distinct_images, encode
    from scrapy_imgcache import nearcolour, nearsig

    photos = distinct_images(count, size=(800, 600))
    inspector = Inspector()
    pairs = [
        (inspector.inspect(encode(p)).signature, inspector.inspect(encode(copy)).signature)
        for p in photos
        for copy in (ImageOps.mirror(p), p.crop((40, 30, 800, 600)))
    ]
    v3 = bytes([nearsig.SIG_VERSION])
    grey = [(v3 + a[1 : nearsig.SIG_SIZE], v3 + b[1 : nearsig.SIG_SIZE]) for a, b in pairs]
    hints = ("id", "m")
    aligned = [nearsig.decide_aligned(nearsig.verify_detail(a, b, hints))[3] for a, b in pairs]
    colours = [(nearsig.colour_of(a), nearsig.colour_of(b)) for a, b in pairs]
    rounds = 20

    def per_call(fn: Callable[[], object], n: int) -> float:
        start = time.process_time()
        for _ in range(rounds):
            fn()
        return (time.process_time() - start) / (rounds * n) * 1000

    cost = per_call(
        lambda: [nearcolour.difference(a, b, al) for (a, b), al in zip(colours, aligned, strict=True)], len(pairs)
    )
    with_colour = per_call(lambda: [nearsig.verify(a, b, hints) for a, b in pairs], len(pairs))
    without = per_call(lambda: [nearsig.verify(a, b, hints) for a, b in grey], len(pairs))
    print(f"\n## The colour check: {len(pairs)} verified pairs (800x600 photos and copies), CPU ms per candidate")
    print("| colour difference alone | verify(), colour signatures | verify(), greyscale signatures |")
    print(f"| --- | --- | --- |\n| {cost:.4f} | {with_colour:.3f} | {without:.3f} |")
    for label, size in {"thumbnail 150x112": (150, 112), "1600x1200": (1600, 1200)}.items():
        decoded = [Image.open(io.BytesIO(encode(p))) for p in distinct_images(count, size=size)]
        for d in decoded:
            d.load()
        per = per_call(lambda: [nearcolour.of_image(d, (0.0, 0.0, 1.0, 1.0), ()) for d in decoded], len(decoded))
        print(f"colour bytes of one decoded {label} image: {per:.3f} ms")


def check(got: list[tuple[int, int]], expected: list[tuple[int, int]], limit: int, what: str) -> None:
    if got != expected[:limit]:
        raise SystemExit(f"MISMATCH in {what}: {got[:5]} vs {expected[:5]}")


def best_round(run: Callable[[int], float], qs: list[int], rounds: int) -> list[float]:
    """Per-query seconds of the round with the lowest median: the machine is shared, and a
    neighbour's burst should not pass for the store's latency (each round is reported in full)."""
    results = [[run(q) for q in qs] for _ in range(rounds)]
    return min(results, key=statistics.median)


def row(label: str, d: int, times: list[float], qs: list[int], expected: dict) -> None:
    """p50/p99 over all queries, then p50 of the queries with matches and of those without."""
    found = [t for t, q in zip(times, qs, strict=True) if expected[q, d]]
    empty = [t for t, q in zip(times, qs, strict=True) if not expected[q, d]]
    split = [f"{percentiles(part)[0]:.3f}" if part else "-" for part in (found, empty)]
    p50, p99 = percentiles(times)
    print(f"| {label} | {d} | {p50:.3f} | {p99:.3f} | {split[0]} | {split[1]} |")


def bench_similar(
    kinds: list[str],
    workdir: str,
    sizes: list[int],
    n_queries: int,
    bk_queries: int,
    rounds: int,
    bk_max: int,
    processes: int = 8,
) -> None:
    limit = 100
    for size in sizes:
        values = clustered_hashes(size)
        ids = np.arange(1, size + 1, dtype=np.int64)
        qs = queries(values, n_queries)
        expected = {(q, d): linear_scan(ids, values, q, d) for q in qs for d in DISTANCES}
        hits = {d: statistics.mean(len(expected[q, d]) for q in qs) for d in DISTANCES}
        with_match = {d: sum(1 for q in qs if expected[q, d]) for d in DISTANCES}
        print(
            f"\n## similar() at {size:,} stored hashes\n\n{n_queries} queries, best of {rounds} rounds; "
            + "; ".join(
                f"d{d}: {with_match[d]} queries with matches, {hits[d]:.1f} matches on average" for d in DISTANCES
            )
            + f". Load average before: {os.getloadavg()[0]:.1f}.\n"
        )
        print("| engine | max distance | p50 ms | p99 ms | p50, with matches | p50, none |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for d in DISTANCES:
            times = best_round(lambda q: timed(lambda: linear_scan(ids, values, q, d))[0], qs, rounds)
            row("numpy linear scan", d, times, qs, expected)
        for kind in kinds:
            db = Database(kind, workdir)
            try:
                store = db.store()
                load, _ = timed(lambda: bulk_insert(store, values))
                warm, _ = timed(lambda: store.similar("8000000000000000", 0))  # loads the index
                print(
                    f"| SqlStore.similar, {kind} (bulk insert {load:.0f} s,"
                    f" first query loads the index: {warm:.2f} s) | | | | | |"
                )
                for d in DISTANCES:
                    for q in qs:  # answers checked once, outside the timed rounds
                        got = [
                            (int(e.content_hash, 16), e.hamming_distance)
                            for e in store.similar(f"{q:016x}", d, limit=limit)
                        ]
                        check(got, expected[q, d], limit, f"{kind} d={d}")
                    times = best_round(
                        lambda q: timed(lambda: store.similar(f"{q:016x}", d, limit=limit))[0], qs, rounds
                    )
                    row(f"SqlStore.similar, {kind}", d, times, qs, expected)
                fleet_and_database(db, store, qs, processes)
                store.close()
            finally:
                db.drop()
        if size <= bk_max:
            bench_bktree(values, qs[:bk_queries], expected, limit)
        else:  # its Python tuples and its ~1 s a query at 1M make it hours at 10M
            print(f"| pybktree | not run above {bk_max:,} hashes (--bktree-max) | | | | |")
        print(f"\nLoad average after: {os.getloadavg()[0]:.1f}.")


def fleet_and_database(db: Database, store: SqlStore, qs: list[int], processes: int) -> None:
    """Crawl processes opening the cache (its index file written by the first query above),
    and on PostgreSQL the server's own CPU per operation (benchmarks/bench_index.py)."""
    from benchmarks.bench_index import database_cpu, store_fleet
    from example_project.photos import distinct_images, encode

    print(
        "\n| processes opening the cache at once | open + first similar(), s (median / slowest) | p50 ms | p99 ms"
        " | RSS growth MiB (max) | private MiB (max) | PSS MiB (sum) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sorted({1, processes}):
        print(store_fleet(db.url, db.files, db.index_dir, qs[:100], 8, n))
    print(
        f"\nDatabase size: {database_bytes(db, store) / 2**20:,.0f} MiB;"
        f" index files: {folder_bytes(db.index_dir) / 2**20:,.0f} MiB"
    )
    if db.kind == "postgresql":
        urls = [f"https://example.com/img/{i}.jpg" for i in range(1, 2001)]
        photos = [encode(img) for img in distinct_images(200, size=(320, 240))]
        database_cpu(store, db.admin, db.schema, qs, urls, photos)


def database_bytes(db: Database, store: SqlStore) -> int:
    """The tables with their indexes (PostgreSQL), or the SQLite file."""
    if db.kind == "sqlite":
        return os.path.getsize(store.engine.url.database or "")
    with store.engine.connect() as conn:
        sizes = [
            conn.execute(text(f"SELECT pg_total_relation_size('{t}')")).scalar()
            for t in ("imgcache_images", "imgcache_urls")
        ]
    return int(sum(sizes))


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def bench_bktree(values: np.ndarray, qs: list[int], expected: dict, limit: int) -> None:
    try:
        import pybktree
    except ImportError:
        print("| pybktree | not installed (pip install pybktree) | | | | |")
        return
    build, tree = timed(
        lambda: pybktree.BKTree(lambda a, b: (a[0] ^ b[0]).bit_count(), [(int(v), i + 1) for i, v in enumerate(values)])
    )
    print(f"| pybktree (build {build:.0f} s; {len(qs)} queries, one round) | | | | | |")
    for d in DISTANCES:
        times = []
        for q in qs:
            spent, found = timed(lambda q=q: tree.find((q, 0), d))
            times.append(spent)
            got = sorted((dist, item[1]) for dist, item in found)
            check([(i, dd) for dd, i in got][:limit], expected[q, d], limit, f"pybktree d={d}")
        row("pybktree", d, times, qs, expected)


def machine() -> str:
    import imagehash
    import PIL
    import sqlalchemy

    versions = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "Pillow": PIL.__version__,
        "imagehash": imagehash.__version__,
        "SQLAlchemy": sqlalchemy.__version__,
    }
    import sqlite3

    versions["SQLite"] = sqlite3.sqlite_version
    for package in ("psycopg", "pybktree"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "absent"
    try:
        with create_engine(POSTGRES_URL).connect() as conn:
            versions["PostgreSQL"] = conn.execute(text("SHOW server_version")).scalar().split()[0]
    except Exception:  # noqa: BLE001 - an unreachable server is reported as such
        versions["PostgreSQL"] = "unreachable"
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; " + ", ".join(
        f"{k} {v}" for k, v in versions.items()
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k hashes, fewer queries")
    parser.add_argument("--db", action="append", choices=("sqlite", "postgresql"), help="default: both")
    parser.add_argument("--queries", type=int, help="similar() queries per distance")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of the queries; the best is reported")
    parser.add_argument("--skip-ingest", action="store_true")
    parser.add_argument("--hashing-only", action="store_true", help="only what inspecting one image costs")
    parser.add_argument("--sizes", type=int, nargs="+", help="stored hashes per run (default 100k and 1M)")
    parser.add_argument("--bktree-max", type=int, default=1_000_000, help="largest size pybktree is run at")
    parser.add_argument(
        "--simulate",
        type=int,
        nargs="+",
        help="entries of synthetic index files, no database (benchmarks/bench_index.py)",
    )
    parser.add_argument("--processes", type=int, default=8, help="processes sharing one index (--simulate, fleet)")
    args = parser.parse_args(argv)
    kinds = args.db or ["sqlite", "postgresql"]
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [100_000, 1_000_000])
    n_queries = args.queries or (100 if args.quick else 400)
    print(f"# bench_store {' '.join(sys.argv[1:])}\n\nMachine: {machine()}")
    if args.hashing_only:
        bench_hashing(20 if args.quick else 60)
        bench_colour_check(10 if args.quick else 30)
        return
    if args.simulate:
        from benchmarks.bench_index import simulate

        for size in args.simulate:
            simulate(size, args.processes, args.queries or 200, DISTANCES, clustered_hashes, queries)
        return
    with tempfile.TemporaryDirectory(prefix="imgcache-bench-") as workdir:
        if not args.skip_ingest:
            bench_ingest(kinds, workdir, 20 if args.quick else 60)
        bench_similar(
            kinds,
            workdir,
            sizes,
            n_queries,
            bk_queries=10 if args.quick else 20,
            rounds=args.rounds,
            bk_max=args.bktree_max,
            processes=args.processes,
        )


if __name__ == "__main__":
    main()
