"""Server benchmark: uploads/s and similar queries/s through a real imgcache-server on loopback.

Not a test: it prints figures for docs/server-benchmark.md. Run from the repository root:

    python -m benchmarks.bench_server                      # SQLite, 8 clients
    python -m benchmarks.bench_server --db postgresql+psycopg://postgres@127.0.0.1:5432/test
    python -m benchmarks.bench_server --clients 4 --uploads 300 --queries 2000

Each client is a thread with its own keep-alive HTTP connection (httpx). Uploads are real
photos (crops of scikit-image's samples, 320x240 JPEG, each encoded at a few qualities so
every upload is new bytes); every answer is checked (201 and the right content hash;
similar results sorted nearest first). The server runs in its own process, so on a small
machine the clients and the server compete for the same cores: the figures are what one
box does end to end, not the server alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import httpx

from example_project.photos import distinct_images, encode
from scrapy_imgcache.hashing import content_hash
from scrapy_imgcache.server.process import imgcache_server


def make_uploads(count: int) -> list[bytes]:
    images = distinct_images(min(count, 224), size=(320, 240))
    out: list[bytes] = []
    quality = 90
    while len(out) < count:
        out.extend(encode(img, quality=quality) for img in images[: count - len(out)])
        quality -= 7
    return out


def run_concurrently(
    url: str, clients: int, jobs: Sequence[object], call: Callable[[httpx.Client, object], None]
) -> tuple[float, list[float]]:
    """Spread ``jobs`` over ``clients`` threads; (wall seconds, per-request latencies)."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(mine: Sequence[object]) -> None:
        local: list[float] = []
        try:
            with httpx.Client(base_url=url, timeout=60) as http:
                for job in mine:
                    start = time.perf_counter()
                    call(http, job)
                    local.append(time.perf_counter() - start)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=worker, args=(jobs[i::clients],)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise errors[0]
    return wall, latencies


def report(name: str, wall: float, latencies: list[float]) -> None:
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    print(f"| {name} | {len(ordered)} | {len(ordered) / wall:,.0f}/s | {p50:.1f} ms | {p99:.1f} ms |")


def upload(http: httpx.Client, job: object) -> None:
    data = job if isinstance(job, bytes) else b""
    resp = http.post(
        "/images",
        data={"url": f"https://bench.example/{uuid.uuid4().hex}.jpg", "client_name": "bench"},
        files={"file": ("b.jpg", data)},
    )
    if resp.status_code != 201 or resp.json()["content_hash"] != content_hash(data):
        raise AssertionError(f"upload answered {resp.status_code}: {resp.text[:200]}")


def query(distance: int) -> Callable[[httpx.Client, object], None]:
    def call(http: httpx.Client, job: object) -> None:
        resp = http.get("/images/similar", params={"perceptual_hash": job, "max_hamming_distance": distance})
        hits = resp.json()
        if resp.status_code != 200 or not hits or hits[0]["hamming_distance"] != 0:
            raise AssertionError(f"similar answered {resp.status_code}: {resp.text[:200]}")
        dists = [h["hamming_distance"] for h in hits]
        if dists != sorted(dists):
            raise AssertionError("similar results are not nearest first")

    return call


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="SQLAlchemy URL (default: a fresh SQLite file)")
    parser.add_argument("--server", default=None, help="benchmark a running server instead of starting one")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--uploads", type=int, default=400)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--distance", type=int, default=8)
    args = parser.parse_args(argv)

    photos = make_uploads(args.uploads)
    with ExitStack() as stack:
        url = args.server
        if url is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-server-")))
            db = args.db or f"sqlite:///{workdir / 'cache.sqlite3'}"
            url = stack.enter_context(imgcache_server(db, workdir)).url
        else:
            db = "(running server)"
        print(
            f"Server benchmark: {platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, {platform.platform()}"
        )
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"database {db.split('?')[0]}, {args.clients} concurrent clients, loopback HTTP/1.1 keep-alive, "
            f"load average before: {load}\n"
        )
        print("| operation | requests | throughput | p50 | p99 |")
        print("|---|---|---|---|---|")
        wall, lat = run_concurrently(url, args.clients, photos, upload)
        report(f"POST /images (new {len(photos[0]) // 1024} KiB JPEGs)", wall, lat)
        with httpx.Client(base_url=url) as http:
            stored = [
                e["perceptual_hash"]
                for e in http.get("/images/search", params={"url_contains": "bench.example", "limit": 1000}).json()
            ]
        probes = [stored[i % len(stored)] for i in range(args.queries)]
        wall, lat = run_concurrently(url, args.clients, probes, query(args.distance))
        report(f"GET /images/similar (d<={args.distance}, {len(stored)} images)", wall, lat)


if __name__ == "__main__":
    main()
