"""The shared index file at 10M and 100M entries (issue 22), and a fleet of crawl processes.

Part of ``./dev bench store``:

    ./dev bench store --simulate 10000000 100000000   # synthetic hashes straight into a file
    ./dev bench store --sizes 10000000 --db postgresql --processes 8   # through the store

``--simulate``: pHash-like values (``bench_store.clustered_hashes``) written as an index
file, then ``--processes`` spawned processes at once each map it and answer the same
queries; each reports its start-up (open and first query), its similar() latency (the
index's probe, nearest first), and its memory from ``/proc/self/smaps_rollup``: RSS, the
private (anonymous) part, and PSS (its fair share of pages shared with the others: eight
processes holding one copy of a file show one copy's worth in total). Every answer of the
first process is compared with a numpy linear scan in the parent.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scrapy_imgcache.store import indexfile
from scrapy_imgcache.store.index import linear_scan

KEY = ("", "phash")


def memory() -> dict[str, float]:
    """MiB: Rss, the private anonymous part, Pss; from smaps_rollup (Linux)."""
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss", "Anonymous", "Pss_File"):
                out[name] = int(rest.split()[0]) / 1024
    return out


def _probe_process(path: str, identity: str, qs: list[int], d: int, barrier: Any, results: Any) -> None:
    import numpy  # noqa: F401 - imported before the baseline, as in a crawl process

    before = memory()
    start = time.perf_counter()
    found = indexfile.open_file(path, identity)
    assert found is not None
    group = found.groups[KEY]
    first = sorted_hits(group, qs[0], d)
    started = time.perf_counter() - start
    barrier.wait()  # all query at once, like a fleet
    times, cpu, answers = [], [], []
    for q in qs:
        t, c = time.perf_counter(), time.process_time()
        answers.append(sorted_hits(group, q, d))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    after = memory()
    after["cpu_p50"] = statistics.median(cpu) * 1000
    barrier.wait()  # every process still maps the file while the others read their memory
    results.put((os.getpid(), started, times, before, after, answers if first is not None else None))
    barrier.wait()


def sorted_hits(group: indexfile.MappedGroup, q: int, d: int) -> list[tuple[int, int]]:
    ids, dists = group.query(q, d)
    order = np.lexsort((ids, dists))
    return [(int(i), int(x)) for i, x in zip(ids[order], dists[order], strict=True)]


def simulate(
    size: int, processes: int, n_queries: int, distances: tuple[int, ...], clustered: Callable, queries: Callable
) -> None:
    values = clustered(size)
    ids = np.arange(1, size + 1, dtype=np.int64)
    qs = queries(values, n_queries)
    with tempfile.TemporaryDirectory(prefix="imgcache-index-bench-") as folder:
        path = os.path.join(folder, "bench.idx")
        start = time.perf_counter()
        indexfile.write(path, "bench", size, [], {KEY: (ids, values)})
        written = time.perf_counter() - start
        size_mb = os.path.getsize(path) / 2**20
        print(
            f"\n## Simulated index of {size:,} entries: file {size_mb:,.0f} MiB"
            f" ({os.path.getsize(path) / size:.1f} bytes an entry), written in {written:.1f} s;"
            f" {processes} processes at once, {n_queries} queries each. Load average {os.getloadavg()[0]:.1f}.\n"
        )
        print(
            "| processes | distance | open + first query, s (slowest) | p50 ms | p99 ms | CPU p50 ms"
            " | RSS growth MiB | private MiB | PSS MiB (sum) |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for fleet in sorted({1, processes}):
            for d in distances:
                print(fleet_row(path, ids, values, qs, d, fleet))
    del values, ids


def fleet_row(path: str, ids: np.ndarray, values: np.ndarray, qs: list[int], d: int, fleet: int) -> str:
    """One table row; the first process's first 50 answers checked against a linear scan."""
    r = run_fleet(path, qs, d, fleet)
    for q, got in zip(qs[:50], r["answers"], strict=False):
        want = linear_scan(ids, values, q, d)
        if got != want:
            raise SystemExit(f"MISMATCH at d={d}: {got[:3]} vs {want[:3]}")
    return (
        f"| {fleet} | {d} | {r['start']:.3f} | {r['p50']:.3f} | {r['p99']:.3f} | {r['cpu_p50']:.3f}"
        f" | {r['rss']:.0f} | {r['private']:.0f} | {r['pss']:.0f} |"
    )


def run_fleet(path: str, qs: list[int], d: int, processes: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_probe_process, args=(path, "bench", qs, d, barrier, results)) for _ in range(processes)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    times = [t * 1000 for _, _, ts, _, _, _ in got for t in ts]
    return {
        "start": max(s for _, s, _, _, _, _ in got),
        "p50": statistics.median(times),
        "p99": float(np.percentile(times, 99)),
        "rss": max(a["Rss"] - b["Rss"] for _, _, _, b, a, _ in got),
        "private": max(a["Anonymous"] - b["Anonymous"] for _, _, _, b, a, _ in got),
        "pss": sum(a["Pss"] - b["Pss"] for _, _, _, b, a, _ in got),
        "cpu_p50": statistics.median(a["cpu_p50"] for _, _, _, _, a, _ in got),
        "answers": got[0][5],
    }


# -- through the store: crawl processes opening a cache, and the database's own CPU -------------


def _store_process(url: str, files: str, index_dir: str, qs: list[int], d: int, barrier: Any, results: Any) -> None:
    from scrapy_imgcache.store.sql import SqlStore  # a crawl process has its modules loaded

    before = memory()
    start = time.perf_counter()
    store = SqlStore(url, files, index_dir=index_dir)
    store.similar(f"{qs[0]:016x}", d)
    started = time.perf_counter() - start
    barrier.wait()
    times = []
    for q in qs:
        t = time.perf_counter()
        store.similar(f"{q:016x}", d, limit=100)
        times.append(time.perf_counter() - t)
    after = memory()
    barrier.wait()
    results.put((os.getpid(), started, times, before, after, None))
    barrier.wait()
    store.close()


def store_fleet(url: str, files: str, index_dir: str, qs: list[int], d: int, processes: int) -> str:
    """A row of figures: ``processes`` fresh processes opening the cache at once (the file
    exists), each timing its open + first similar(), then the queries."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    results = ctx.Queue()
    args = (url, files, index_dir, qs, d, barrier, results)
    procs = [ctx.Process(target=_store_process, args=args) for _ in range(processes)]
    for p in procs:
        p.start()
    got = [results.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
    times = [t * 1000 for _, _, ts, _, _, _ in got for t in ts]
    starts = sorted(s for _, s, _, _, _, _ in got)
    rss = max(a["Rss"] - b["Rss"] for _, _, _, b, a, _ in got)
    private = max(a["Anonymous"] - b["Anonymous"] for _, _, _, b, a, _ in got)
    pss = sum(a["Pss"] - b["Pss"] for _, _, _, b, a, _ in got)
    return (
        f"| {processes} processes, d{d} | {starts[len(starts) // 2]:.3f} / {starts[-1]:.3f}"
        f" | {statistics.median(times):.3f} | {np.percentile(times, 99):.3f} | {rss:.0f} | {private:.0f} | {pss:.0f} |"
    )


def backend_cpu_seconds(engine: Any, application_name: str) -> float:
    """CPU seconds (user + system) of every PostgreSQL backend serving ``application_name``,
    from /proc/<pid>/stat (the server runs on this machine)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        pids = conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE application_name = :a AND pid <> pg_backend_pid()"),
            {"a": application_name},
        ).scalars()
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def database_cpu(
    store: Any, admin: Any, application_name: str, qs: list[int], urls: list[str], photos: list[bytes]
) -> None:
    """The PostgreSQL backends' CPU per lookup (URL), per similar() and per new image (put),
    and what one core of the database then serves."""
    print("\n| operation (PostgreSQL backend CPU) | count | ms per operation | per second per PG core |")
    print("| --- | ---: | ---: | ---: |")
    steps: list[tuple[str, Callable[[int], object], int]] = [
        ("URL lookup (`lookup`)", lambda i: store.lookup(urls[i % len(urls)]), 4000),
        ("similar(), distance 8", lambda i: store.similar(f"{qs[i % len(qs)]:016x}", 8), 2000),
        (
            "new image (`put`)",
            lambda i: store.put(photos[i], url=f"https://new.example/{i}.jpg", client_name="b"),
            len(photos),
        ),
    ]
    for label, run, count in steps:
        run(0)  # the pool's connections exist before the baseline
        before = backend_cpu_seconds(admin, application_name)
        for i in range(1, count):
            run(i)
        spent = backend_cpu_seconds(admin, application_name) - before
        per = spent / (count - 1) * 1000
        print(f"| {label} | {count - 1} | {per:.3f} | {1000 / per if per else float('inf'):,.0f} |")
