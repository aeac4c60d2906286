"""Crawl benchmark: ImgCachePipeline against Scrapy's ImagesPipeline and a download-only crawl, by size class.

Not a test: it prints figures for docs/crawl-benchmark.md. Run from the repository root:

    ./dev bench crawl                              # thumb, everyday, large; 2 rounds (~10-15 minutes)
    ./dev bench crawl --quick                      # a few hundred images a class, one round: a smoke run
    ./dev bench crawl --sizes everyday --rounds 3  # one class

Each size class is its own site (benchmarks/crawl_dataset.py: thumbnails, everyday
640-1024 px JPEG/WebP/PNG photos, large 1600x1200 JPEGs; each with 20 % exact copies under
second URLs and 10 % near-duplicates), served from memory by benchmarks/crawl_server.py in
its own process. On each site, in every round, interleaved, each a real ``scrapy crawl``
process in a fresh generated project:

- ``download_only``: the spider requests every image itself, no pipeline: Scrapy's own pace;
- ``images``: Scrapy's ImagesPipeline, IMAGES_STORE a fresh folder;
- ``imgcache``: ImgCachePipeline (the add-on) with its defaults: a fresh SQLite cache in the
  project, IMAGES_STORE a fresh folder;
- ``second``: right after it, the same project again, IMAGES_STORE another fresh folder:
  every image must come from the cache (0 image bytes downloaded, counted at the server);
- ``imgcache_fast``: as ``imgcache`` with ``IMGCACHE_FAST_HASH = True``, its own fresh cache.

A crawl is timed by benchmarks/crawl_spider.py from spider_opened to spider_closed, which
also counts the image results, the CPU of the crawl process, of each of its threads and of
its child processes (the plugin's hashing workers). Each side's best round counts. Every
ratio compares two crawls of the same run against the same server process.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.crawl_dataset import CLASSES, MEMORY, OUT, SizeClass, build, log, summary  # noqa: E402
from benchmarks.machine import git_state, machine, machine_line  # noqa: E402

POSTGRES_URL = os.environ.get("IMGCACHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

#: the settings every crawl runs with (documented in docs/crawl-benchmark.md)
COMMON_SETTINGS: dict[str, Any] = {
    "SPIDER_MODULES": ["benchmarks.crawl_spider"],
    "BOT_NAME": "crawlbench",
    "ROBOTSTXT_OBEY": False,
    "LOG_LEVEL": "INFO",
    "TELNETCONSOLE_ENABLED": False,
    "CONCURRENT_REQUESTS": 32,
    "CONCURRENT_REQUESTS_PER_DOMAIN": 32,
    "CONCURRENT_ITEMS": 100,
    "REACTOR_THREADPOOL_MAXSIZE": 10,
    "DOWNLOAD_DELAY": 0,
    "AUTOTHROTTLE_ENABLED": False,
    "HTTPCACHE_ENABLED": False,
    "EXTENSIONS": {"benchmarks.crawl_spider.BenchStats": 0},
}
IMAGES_PIPELINE = {"ITEM_PIPELINES": {"scrapy.pipelines.images.ImagesPipeline": 1}}
IMGCACHE = {"ADDONS": {"scrapy_imgcache.Addon": 0}}

#: the crawls of a class, in the order of the report
SIDES = ("download_only", "images", "imgcache", "imgcache_fast", "second")
LABELS = {
    "download_only": "download only (spider fetches, no pipeline)",
    "images": "ImagesPipeline",
    "imgcache": "ImgCache, defaults",
    "imgcache_fast": "ImgCache, `IMGCACHE_FAST_HASH`",
    "second": "ImgCache, second crawl",
    "imgcache_threads": "ImgCache, `IMGCACHE_HASH_PROCESSES = 0`",
}
#: what --extras may add; the default run has revalidation only
EXTRAS = ("revalidation", "threads", "limit", "sharing", "memory")
DEFAULT_EXTRAS = "revalidation"

#: the issue's targets: (key, label, target, classes it applies to)
TARGET_FIRST = 1.3
TARGET_FAST = 1.6
TARGET_DOWNLOAD = 0.65
TARGET_SECOND = 0.15
FAST_CLASSES = ("everyday", "large")
DOWNLOAD_CLASSES = ("everyday",)


# -- the server ---------------------------------------------------------------------------------


class Server:
    def __init__(self, data: Path, workdir: Path) -> None:
        port_file = workdir / f"port-{uuid.uuid4().hex[:6]}"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.crawl_server", str(data), str(port_file)], cwd=REPO, env=env
        )
        deadline = time.time() + 120
        while not port_file.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the benchmark server did not start")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        self.base = f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> dict[str, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", path)
        out = json.loads(conn.getresponse().read())
        conn.close()
        return out

    def stats(self) -> dict[str, Any]:
        return self.get("/_stats")

    def reset(self) -> dict[str, Any]:
        return self.get("/_reset")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def raw_throughput(server: Server, paths: list[str], threads: int = 8) -> dict[str, float]:
    """A plain keep-alive client fetching every image URL once: what the server can do."""
    chunks = [paths[i::threads] for i in range(threads)]
    got = [0] * threads

    def run(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        for p in chunks[k]:
            conn.request("GET", p)
            got[k] += len(conn.getresponse().read())
        conn.close()

    workers = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    server.reset()
    return {"images_per_s": len(paths) / elapsed, "mb_per_s": sum(got) / elapsed / 1e6, "elapsed": elapsed}


# -- crawls -------------------------------------------------------------------------------------


def make_project(root: Path, settings: dict[str, Any]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "scrapy.cfg").write_text("[settings]\ndefault = benchsettings\n")
    lines = [f"{k} = {v!r}" for k, v in {**COMMON_SETTINGS, **settings}.items()]
    (root / "benchsettings.py").write_text("\n".join(lines) + "\n")
    return root


def start_crawl(
    project: Path, server: Server, label: str, share: str = "0/1", *extra: str
) -> tuple[subprocess.Popen, Path]:
    out = project / f"bench-{label}.json"
    cmd = [
        sys.executable,
        "-m",
        "scrapy",
        "crawl",
        "bench",
        "-a",
        f"start={server.base}/",
        "-a",
        f"share={share}",
        "-s",
        f"BENCH_OUT={out}",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(project)])}
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    logf = open(project / f"crawl-{label}.log", "w")  # noqa: SIM115 - closed by finish_crawl
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=logf, stderr=subprocess.STDOUT)
    proc._bench_log = logf  # type: ignore[attr-defined]
    proc._bench_t0 = time.perf_counter()  # type: ignore[attr-defined]
    return proc, out


def finish_crawl(proc: subprocess.Popen, out: Path, timeout: float = 3600) -> dict[str, Any]:
    try:
        proc.wait(timeout)
    except BaseException:  # interrupted (Ctrl-C, SIGTERM) or too slow: the crawl does not outlive the run
        proc.terminate()
        proc.wait(60)
        raise
    wall = time.perf_counter() - proc._bench_t0  # type: ignore[attr-defined]
    proc._bench_log.close()  # type: ignore[attr-defined]
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"crawl failed ({proc.returncode}); see {out.parent}/crawl-*.log")
    result = json.loads(out.read_text())
    result["wall"] = wall
    result["rate"] = result["images"] / result["elapsed"]
    return result


def crawl(project: Path, server: Server, label: str, *extra: str) -> dict[str, Any]:
    os.sync()  # what the previous crawl (or its clean-up) left dirty is not this crawl's fsyncs' to flush
    server.reset()
    cpu0 = server.stats()["cpu_seconds"]
    result = finish_crawl(*start_crawl(project, server, label, "0/1", *extra))
    served = server.stats()
    result["server"] = {**served, "cpu_seconds": served["cpu_seconds"] - cpu0}
    result["project"] = str(project)
    n = max(result["images"], 1)
    log(
        f"  {label}: {result['images']} images in {result['elapsed']:.2f}s = {result['rate']:.1f}/s; CPU an image "
        f"{1000 * result['crawl_cpu_seconds'] / n:.2f} ms crawl process + "
        f"{1000 * result['workers_cpu_seconds'] / n:.2f} ms workers; {served['image_200']} image 200s "
        f"({served['image_bytes'] / 1e6:.1f} MB), {served['image_304']} 304s"
    )
    return result


def files_under(folder: Path) -> int:
    """Files in an IMAGES_STORE (hidden markers aside)."""
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")) if folder.exists() else 0


def check(result: dict[str, Any], manifest: dict[str, Any], side: str, store: Path | None) -> list[str]:
    """What is wrong with a crawl's outcome (an empty list: nothing)."""
    problems = []
    n_routes = len(manifest["routes"])
    if result["images"] != n_routes:
        problems.append(f"{result['images']} image results for {n_routes} URLs")
    if result.get("finish_reason") != "finished":
        problems.append(f"finish reason {result.get('finish_reason')!r}")
    if store is not None:
        result["store_files"] = files_under(store)
        if result["store_files"] != n_routes:
            problems.append(f"{result['store_files']} files in IMAGES_STORE for {n_routes} URLs")
    stats = result["stats"]
    n_exact = sum(r["kind"] == "exact" for r in manifest["routes"])
    if side in ("imgcache", "imgcache_fast", "imgcache_threads"):
        if stats.get("imgcache/stored", 0) != n_routes - n_exact:
            problems.append(f"imgcache/stored {stats.get('imgcache/stored', 0)}, expected {n_routes - n_exact}")
        if stats.get("imgcache/duplicate/exact", 0) != n_exact:
            problems.append(f"imgcache/duplicate/exact {stats.get('imgcache/duplicate/exact', 0)}, expected {n_exact}")
        result["similar_found"] = stats.get("imgcache/duplicate/similar", 0)
        result["similar_expected"] = sum(r["kind"] == "near" for r in manifest["routes"])
    if side == "second":
        hits = stats.get("imgcache/hit", 0)
        if hits != n_routes:
            problems.append(f"imgcache/hit {hits} for {n_routes} URLs")
    return problems


def remove(*folders: Path) -> None:
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def cpu_per_image(result: dict[str, Any]) -> dict[str, Any]:
    """Milliseconds of CPU an image: the crawl process, its threads by group, its children."""
    n = max(result["images"], 1)
    return {
        "crawl_ms": 1000 * result["crawl_cpu_seconds"] / n,
        "workers_ms": 1000 * result["workers_cpu_seconds"] / n,
        "threads_ms": {
            k: 1000 * v / n for k, v in sorted(result["threads_cpu_seconds"].items(), key=lambda kv: -kv[1])
        },
        "server_ms": 1000 * result["server"]["cpu_seconds"] / n,
    }


# -- the physical limit (--extras limit) --------------------------------------------------------

_BODIES: list[bytes] = []


def _load_bodies(files: list[str]) -> None:
    _BODIES.extend(Path(f).read_bytes() for f in files)


def _hash_one(job: tuple[bool, int, bool]) -> int:
    from scrapy_imgcache.hashing import Inspector, content_hash

    fast, i, copy = job
    if copy:  # an exact copy is known by its BLAKE2b alone
        content_hash(_BODIES[i])
    else:
        Inspector(fast=fast).inspect(_BODIES[i])
    return 1


def _noop(_: int) -> int:
    return len(_BODIES)


def bare_loop(files: list[str], copies: list[bool], fast: bool, workers: int = 2) -> dict[str, float]:
    """Hashing alone, in 2 processes: ``Inspector.inspect`` (decode, BLAKE2b, pHash) of every
    body except the exact copies, which get only their BLAKE2b (as the plugin does)."""
    with multiprocessing.Pool(workers, initializer=_load_bodies, initargs=(files,)) as pool:
        assert all(pool.map(_noop, range(workers * 4), chunksize=1))  # bodies loaded before timing
        cpu0 = os.times()
        t0 = time.perf_counter()
        done = sum(pool.imap_unordered(_hash_one, [(fast, i, copies[i]) for i in range(len(files))], chunksize=8))
        elapsed = time.perf_counter() - t0
    cpu1 = os.times()  # the workers are reaped now: their CPU is counted
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    log(f"  bare loop ({'fast' if fast else 'default'}): {done} images in {elapsed:.2f}s = {done / elapsed:.1f}/s")
    return {"images": done, "elapsed": elapsed, "rate": done / elapsed, "cpu_seconds": cpu}


# -- sharing one PostgreSQL store (--extras sharing) --------------------------------------------


def sharing(processes: int, server: Server, run: Path, manifest: dict[str, Any], data: Path) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    from scrapy_imgcache.store.sql import SqlStore

    schema = f"imgcache_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    files = run / f"share-{processes}-files"
    try:
        project = make_project(
            run / f"share-{processes}",
            {**IMGCACHE, "IMGCACHE_URL": url, "IMGCACHE_FILES_STORE": str(files)},
        )
        # the schema is created once, before the clock: N processes racing to migrate is not the point
        SqlStore(url, str(files)).close()
        server.reset()
        cpu0 = server.stats()["cpu_seconds"]
        procs = [start_crawl(project, server, f"p{i}", f"{i}/{processes}") for i in range(processes)]
        results = [finish_crawl(p, out) for p, out in procs]
        served = server.stats()
        images = sum(r["images"] for r in results)
        elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
        expected = {
            r["path"]: hashlib.blake2b((data / r["file"]).read_bytes(), digest_size=32).hexdigest()
            for r in manifest["routes"]
        }
        engine = create_engine(url)
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT u.url, i.content_hash FROM imgcache_urls u JOIN imgcache_images i ON i.id = u.image_id")
            ).all()
            n_images, n_hashes = conn.execute(
                text("SELECT count(*), count(DISTINCT content_hash) FROM imgcache_images")
            ).one()
        engine.dispose()
        by_path: dict[str, list[str]] = {}
        for u, h in rows:
            by_path.setdefault(urlsplit(u).path, []).append(h)
        checks = {
            "image_rows": n_images,
            "distinct_contents_expected": len(set(expected.values())),
            "duplicate_image_rows": n_images - n_hashes,
            "url_records": len(rows),
            "urls_expected": len(expected),
            "urls_missing": sum(p not in by_path for p in expected),
            "urls_with_several_records": sum(len(v) > 1 for v in by_path.values()),
            "urls_wrong_content": sum(by_path.get(p, [h])[0] != h for p, h in expected.items()),
            "image_downloads": served["image_200"],
        }
        out = {
            "processes": processes,
            "images": images,
            "elapsed": elapsed,
            "rate": images / elapsed,
            "server_cpu_seconds": served["cpu_seconds"] - cpu0,
            "check": checks,
            "per_process": [{"images": r["images"], "elapsed": r["elapsed"]} for r in results],
        }
        log(f"  {processes} process(es): {images} images in {elapsed:.2f}s = {out['rate']:.1f}/s; {checks}")
        return out
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
        remove(files)


def sharing_ok(rows: list[dict[str, Any]]) -> bool:
    return all(
        x["check"]["duplicate_image_rows"] == 0
        and x["check"]["urls_missing"] == 0
        and x["check"]["urls_wrong_content"] == 0
        and x["check"]["urls_with_several_records"] == 0
        and x["check"]["image_rows"] == x["check"]["distinct_contents_expected"]
        for x in rows
    )


# -- memory (--extras memory) -------------------------------------------------------------------


def memory(n: int, run: Path, keep: bool) -> dict[str, Any]:
    log(f"memory: {n} distinct small photos")
    data = build(MEMORY, n, min_distance=0)
    manifest = json.loads((data / "manifest.json").read_text())
    server = Server(data, run)
    project = make_project(run / "memory", {**IMGCACHE, "IMAGES_STORE": str(run / "memory" / "store")})
    try:
        result = crawl(project, server, "memory")
    finally:
        server.stop()
        if not keep:
            remove(project / ".scrapy", project / "store")
    mark = max(n // 5, 1)
    samples = result["samples"]
    at_mark = next((s for s in samples if s[0] >= mark), samples[-1])
    out = {
        "photos": n,
        "urls": len(manifest["routes"]),
        "mean_bytes": manifest["mean_bytes"],
        "mark": mark,
        "rss_at_mark": at_mark[1],
        "rss_at_end": samples[-1][1],
        "peak_rss": result["maxrss"],
        "workers_rss_at_mark": at_mark[2],
        "workers_rss_at_end": samples[-1][2],
        "workers": result["workers"],
        "images": result["images"],
        "rate": result["rate"],
        "curve": [samples[min(len(samples) - 1, round(k * (len(samples) - 1) / 10))] for k in range(11)],
    }
    log("memory:", {k: v for k, v in out.items() if k != "curve"})
    return out


# -- one size class -----------------------------------------------------------------------------


def run_class(cls: SizeClass, n: int, rounds: int, run: Path, args: argparse.Namespace) -> dict[str, Any]:
    data = build(cls, n, args.min_distance)
    manifest = json.loads((data / "manifest.json").read_text())
    log(f"{cls.name}: {summary(manifest)}")
    report: dict[str, Any] = {
        "class": cls.name,
        "title": cls.title,
        "dataset": {k: v for k, v in manifest.items() if k not in ("routes", "pages")},
        "problems": [],
    }
    here = run / cls.name
    here.mkdir()
    server = Server(data, here)
    keep = args.keep_stores
    try:
        paths = [r["path"] for r in manifest["routes"]]
        raw_throughput(server, paths)  # warm-up
        report["server_raw"] = raw_throughput(server, paths)
        log(f"{cls.name}: server, plain client: {report['server_raw']['images_per_s']:.0f} images/s")
        sides: dict[str, list[dict[str, Any]]] = {k: [] for k in SIDES}

        def side(name: str, r: int, project: Path, label: str, store: Path | None, *extra: str) -> None:
            result = crawl(project, server, f"{label}", *extra)
            result["round"] = r
            result["problems"] = check(result, manifest, name, store)
            for problem in result["problems"]:
                report["problems"].append(f"{name}, round {r + 1}: {problem}")
                log(f"  PROBLEM: {report['problems'][-1]}")
            sides.setdefault(name, []).append(result)

        last_default: Path | None = None
        for r in range(rounds):
            log(f"{cls.name}: round {r + 1}/{rounds}")
            order = ["download_only", "images", "imgcache", "imgcache_fast"]
            if r % 2:
                order.reverse()
            for name in order:
                if name == "download_only":
                    project = make_project(here / f"fetch-{r}", {})
                    side(name, r, project, "first", None, "-a", "fetch=1")
                elif name == "images":
                    project = here / f"images-{r}"
                    make_project(project, {**IMAGES_PIPELINE, "IMAGES_STORE": str(project / "store")})
                    side(name, r, project, "first", project / "store")
                    if not keep:
                        remove(project / "store")
                elif name == "imgcache":
                    project = here / f"imgcache-{r}"
                    make_project(project, {**IMGCACHE, "IMAGES_STORE": str(project / "store")})
                    side(name, r, project, "first", project / "store")
                    second = project / "store-second"
                    side("second", r, project, "second", second, "-s", f"IMAGES_STORE={second}")
                    if last_default is not None and not keep:
                        remove(last_default / ".scrapy", last_default / "store", last_default / "store-second")
                    last_default = project
                else:
                    project = here / f"imgcache-fast-{r}"
                    make_project(
                        project, {**IMGCACHE, "IMGCACHE_FAST_HASH": True, "IMAGES_STORE": str(project / "store")}
                    )
                    side(name, r, project, "first", project / "store")
                    if not keep:
                        remove(project / ".scrapy", project / "store")
        assert last_default is not None
        if "revalidation" in args.extras:
            log(f"{cls.name}: revalidation (IMGCACHE_EXPIRES=1 on the last defaults' cache)")
            time.sleep(1.5)
            reval = crawl(last_default, server, "revalidate", "-s", "IMGCACHE_EXPIRES=1")
            served = reval["server"]
            report["revalidation"] = {
                "image_requests": served["image_requests"],
                "answered_304": served["image_304"],
                "share_304": served["image_304"] / max(served["image_requests"], 1),
                "image_bytes_downloaded": served["image_bytes"],
                "images": reval["images"],
                "revalidated": reval["stats"].get("imgcache/revalidated", 0),
                "elapsed": reval["elapsed"],
            }
        if not keep:
            remove(last_default / ".scrapy", last_default / "store", last_default / "store-second")
        if "threads" in args.extras:
            log(f"{cls.name}: hashing in Scrapy's threads (IMGCACHE_HASH_PROCESSES=0)")
            for r in range(rounds):
                project = here / f"imgcache-threads-{r}"
                make_project(
                    project, {**IMGCACHE, "IMGCACHE_HASH_PROCESSES": 0, "IMAGES_STORE": str(project / "store")}
                )
                side("imgcache_threads", r, project, "first", project / "store")
                if not keep:
                    remove(project / ".scrapy", project / "store")
        if "limit" in args.extras:
            log(f"{cls.name}: the hashing alone (bare loops, 2 processes)")
            files = [str(data / r["file"]) for r in manifest["routes"]]
            copies = [r["kind"] == "exact" for r in manifest["routes"]]
            report["limit"] = [bare_loop(files, copies, fast=False) for _ in range(rounds)]
            report["limit_fast"] = [bare_loop(files, copies, fast=True) for _ in range(rounds)]
        if "sharing" in args.extras and cls.name == args.sharing_class:
            log(f"{cls.name}: sharing one PostgreSQL store")
            report["sharing"] = [sharing(p, server, here, manifest, data) for p in (1, 2, 4)]
    finally:
        server.stop()
    report["crawls"] = sides
    report["figures"] = figures(report)
    return report


def valid(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The crawls whose checks passed (all of them when none did, so that the report still says something)."""
    return [r for r in results if not r.get("problems")] or results


def best(results: list[dict[str, Any]]) -> dict[str, Any]:
    return max(valid(results), key=lambda r: r["rate"])


def figures(rep: dict[str, Any]) -> dict[str, Any]:
    """The best round of each side, its CPU an image, the ratios and the targets of one class."""
    b = {k: best(v) for k, v in rep["crawls"].items() if v}
    first, second = b["imgcache"], min(valid(rep["crawls"]["second"]), key=lambda r: r["elapsed"])
    bytes_second = max(r["server"]["image_bytes"] for r in rep["crawls"]["second"])
    ratios = {
        "imgcache_vs_images": first["rate"] / b["images"]["rate"],
        "fast_vs_images": b["imgcache_fast"]["rate"] / b["images"]["rate"],
        "imgcache_vs_download_only": first["rate"] / b["download_only"]["rate"],
        "fast_vs_download_only": b["imgcache_fast"]["rate"] / b["download_only"]["rate"],
        "second_vs_first": second["elapsed"] / first["elapsed"],
        "second_vs_first_process_wall": second["wall"] / first["wall"],
    }
    name = rep["class"]
    targets = {
        "imgcache_vs_images": {"target": f">= {TARGET_FIRST}", "met": ratios["imgcache_vs_images"] >= TARGET_FIRST},
        "second_vs_first": {
            "target": f"<= {TARGET_SECOND} and 0 image bytes",
            "met": ratios["second_vs_first"] <= TARGET_SECOND and bytes_second == 0,
        },
    }
    if name in FAST_CLASSES:
        targets["fast_vs_images"] = {"target": f">= {TARGET_FAST}", "met": ratios["fast_vs_images"] >= TARGET_FAST}
    if name in DOWNLOAD_CLASSES:
        targets["imgcache_vs_download_only"] = {
            "target": f">= {TARGET_DOWNLOAD}",
            "met": ratios["imgcache_vs_download_only"] >= TARGET_DOWNLOAD,
        }
    return {
        "best": {
            k: {
                "rate": v["rate"],
                "elapsed": v["elapsed"],
                "wall": v["wall"],
                "round": v["round"],
                "cores": v["cpu_seconds"] / v["elapsed"],
                **cpu_per_image(v),
            }
            for k, v in b.items()
        },
        "second": {
            "elapsed": second["elapsed"],
            "wall": second["wall"],
            "first_elapsed": first["elapsed"],
            "first_wall": first["wall"],
            "image_bytes_downloaded": bytes_second,
            "image_requests": max(r["server"]["image_requests"] for r in rep["crawls"]["second"]),
            "pairs": [
                {"first": f["elapsed"], "second": s["elapsed"], "ratio": s["elapsed"] / f["elapsed"]}
                for f, s in zip(rep["crawls"]["imgcache"], rep["crawls"]["second"], strict=True)
            ],
        },
        "rates": {k: [r["rate"] for r in v] for k, v in rep["crawls"].items() if v},
        "ratios": ratios,
        "targets": targets,
    }


# -- the machine and the code -------------------------------------------------------------------


def code_version() -> str:
    """The commit measured, whether the package had uncommitted changes, and a digest of its sources
    (compared at the end of the run: the package may be edited while a run goes on)."""
    digest = hashlib.blake2b(digest_size=6)
    for path in sorted((REPO / "scrapy_imgcache").rglob("*.py")):
        digest.update(path.read_bytes())
    state = git_state(REPO)
    if state is None:
        return "unknown"
    head, changed = state
    return (
        head
        + (f" + uncommitted changes in {', '.join(changed)}" if changed else "")
        + f" (package sources {digest.hexdigest()})"
    )


# -- the run ------------------------------------------------------------------------------------


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM ends the run as Ctrl-C does: the server and the crawl in progress are stopped."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few hundred images a class, one round: a smoke run")
    ap.add_argument(
        "--sizes", default=",".join(CLASSES), help=f"comma list of size classes (default {','.join(CLASSES)})"
    )
    ap.add_argument("--photos", type=int, help="distinct photos of every class (default: the class's own)")
    ap.add_argument("--rounds", type=int, help="rounds, interleaved; the best of each crawl counts (default 2)")
    ap.add_argument("--min-distance", type=int, default=12, help="pHash bits between any two distinct photos")
    ap.add_argument(
        "--extras",
        default=DEFAULT_EXTRAS,
        help=f"comma list of {', '.join(EXTRAS)}, 'all' or 'none' (default {DEFAULT_EXTRAS})",
    )
    ap.add_argument("--sharing-class", default="everyday", help="the class the sharing crawls use (default everyday)")
    ap.add_argument("--memory-photos", type=int, help="distinct small photos of the memory crawl (default 10000)")
    ap.add_argument("--json", type=Path, help="write the report here as well")
    ap.add_argument("--keep-stores", action="store_true", help="keep the crawls' caches and IMAGES_STOREs")
    ap.add_argument("--render", type=Path, metavar="REPORT_JSON", help="print the report of an earlier run, and stop")
    args = ap.parse_args(argv)
    if args.render:
        earlier = json.loads(args.render.read_text())
        for c in earlier["classes"].values():
            c["figures"] = figures(c)
        print(render(earlier))
        return 0
    signal.signal(signal.SIGTERM, _stop)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in CLASSES]
    if unknown or not sizes:
        ap.error(f"--sizes: choose among {', '.join(CLASSES)}")
    extras = {"all": set(EXTRAS), "none": set()}.get(args.extras, set(filter(None, args.extras.split(","))))
    if extras - set(EXTRAS):
        ap.error(f"--extras: choose among {', '.join(EXTRAS)}")
    args.extras = extras
    rounds = args.rounds or (1 if args.quick else 2)

    t0 = time.perf_counter()
    report: dict[str, Any] = {
        "machine": machine(
            ("scrapy", "twisted", "pillow", "imagehash", "numpy", "scipy", "sqlalchemy", "psycopg", "aiohttp")
        ),
        "code": code_version(),
        "command": " ".join(["./dev bench crawl", *(argv if argv is not None else sys.argv[1:])]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rounds": rounds,
        "settings": COMMON_SETTINGS,
        "extras": sorted(extras),
        "classes": {},
    }
    log("machine:", machine_line(report["machine"]))
    log("code:", report["code"])
    # every site first, so that building one does not share the CPU with a crawl
    counts = {s: args.photos or (CLASSES[s].quick_n if args.quick else CLASSES[s].n) for s in sizes}
    for s in sizes:
        build(CLASSES[s], counts[s], args.min_distance)
    run = OUT / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    run.mkdir(parents=True)
    t_crawls = time.perf_counter()
    for s in sizes:
        report["classes"][s] = run_class(CLASSES[s], counts[s], rounds, run, args)
    if "memory" in extras:
        report["memory"] = memory(args.memory_photos or (1000 if args.quick else 10000), run, args.keep_stores)
    report["machine"]["load_average_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report["code_at_end"] = code_version()
    if report["code_at_end"] != report["code"]:
        log("WARNING: the package changed during the run:", report["code_at_end"])
    report["seconds"] = {"total": time.perf_counter() - t0, "crawls": time.perf_counter() - t_crawls}

    text = render(report)
    (run / "report.md").write_text(text)
    blob = json.dumps(report, indent=1, default=str)
    (run / "report.json").write_text(blob)
    (OUT / "crawl-report.json").write_text(blob)
    if args.json:
        args.json.write_text(blob)
    print(text)
    log(f"kept under {run} (report.md, report.json; also benchmarks/out/crawl-report.json)")
    return 0


# -- the report ---------------------------------------------------------------------------------


def render(rep: dict[str, Any]) -> str:
    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        (
            f"Run {rep['started']}: `{rep['command']}` ({rep['rounds']} round(s), best of each; "
            f"{rep['seconds']['total'] / 60:.1f} min in all, {rep['seconds']['crawls'] / 60:.1f} min of it crawling)"
        ),
        "",
        f"Machine: {machine_line(rep['machine'])}, at end {rep['machine']['load_average_at_end']}",
        "",
        f"Code: {rep['code']}"
        + (
            ""
            if rep.get("code_at_end", rep["code"]) == rep["code"]
            else f"; **changed during the run**, at the end: {rep['code_at_end']}"
        ),
        "",
        (
            "| class | download only | ImagesPipeline | ImgCache | fast hash | second crawl "
            "| ImgCache / IP | fast / IP | ImgCache / download | second / first | bytes, 2nd |"
        ),
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, c in rep["classes"].items():
        f, b, r = c["figures"], c["figures"]["best"], c["figures"]["ratios"]
        lines.append(
            f"| {name} | {b['download_only']['rate']:.0f} | {b['images']['rate']:.0f} | {b['imgcache']['rate']:.0f} "
            f"| {b['imgcache_fast']['rate']:.0f} | {b['second']['rate']:.0f} | {r['imgcache_vs_images']:.2f} "
            f"| {r['fast_vs_images']:.2f} | {r['imgcache_vs_download_only']:.2f} | {r['second_vs_first']:.3f} "
            f"| {f['second']['image_bytes_downloaded']} |"
        )
    lines += ["", "(images/s, best round of each; ratios of those)", ""]
    lines += ["| target | class | measured | |", "|---|---|---|---|"]
    names = {
        "imgcache_vs_images": "first crawl with defaults / ImagesPipeline",
        "fast_vs_images": "fast hash / ImagesPipeline",
        "imgcache_vs_download_only": "ImgCache / download-only",
        "second_vs_first": "second crawl / first crawl, time,",
    }
    for key, label in names.items():
        for name, c in rep["classes"].items():
            t = c["figures"]["targets"].get(key)
            if t:
                value = c["figures"]["ratios"][key]
                extra = (
                    f", {c['figures']['second']['image_bytes_downloaded']} bytes" if key == "second_vs_first" else ""
                )
                lines.append(f"| {label} {t['target']} | {name} | {value:.3f}{extra} | {mark(t['met'])} |")
    for name, c in rep["classes"].items():
        lines += ["", *render_class(name, c)]
    if "memory" in rep:
        m = rep["memory"]
        grow = m["rss_at_end"] / m["rss_at_mark"]
        lines += [
            "",
            (
                f"Memory, {m['urls']} image URLs ({m['photos']} distinct 400x300, mean "
                f"{m['mean_bytes'] / 1024:.0f} KB): RSS {m['rss_at_mark'] / 2**20:.0f} MiB at {m['mark']} images, "
                f"{m['rss_at_end'] / 2**20:.0f} MiB at {m['images']} (x{grow:.2f}); peak {m['peak_rss'] / 2**20:.0f} "
                f"MiB; its {m['workers']} hashing workers {m['workers_rss_at_mark'] / 2**20:.0f} and "
                f"{m['workers_rss_at_end'] / 2**20:.0f} MiB ({m['rate']:.0f} images/s); flat: {mark(grow < 1.15)}"
            ),
        ]
    return "\n".join(lines) + "\n"


def render_class(name: str, c: dict[str, Any]) -> list[str]:
    f = c["figures"]
    d = c["dataset"]
    b = f["best"]
    groups: list[str] = []
    for side in b.values():
        for g, ms in side["threads_ms"].items():
            if g not in groups and ms >= 0.05:
                groups.append(g)
    lines = [
        f"### {name}: {summary(d)}",
        "",
        f"Server with a plain client: {c['server_raw']['images_per_s']:.0f} images/s.",
        "",
        "| crawl | images/s (rounds) | s | cores busy | crawl process CPU ms/image | hashing workers ms/image | "
        + " | ".join(f"`{g}` ms" for g in groups)
        + " |",
        "|---|--:|--:|--:|--:|--:|" + "--:|" * len(groups),
    ]
    for side, v in b.items():
        rates = ", ".join(f"{x:.0f}" for x in f["rates"][side])
        lines.append(
            f"| {LABELS[side]} | **{v['rate']:.1f}** ({rates}) | {v['elapsed']:.2f} | {v['cores']:.2f} "
            f"| {v['crawl_ms']:.2f} | {v['workers_ms']:.2f} | "
            + " | ".join(f"{v['threads_ms'].get(g, 0.0):.2f}" for g in groups)
            + " |"
        )
    s = f["second"]
    r = f["ratios"]
    lines += [
        "",
        (
            f"Ratios: ImgCache / ImagesPipeline **{r['imgcache_vs_images']:.2f}**, fast / ImagesPipeline "
            f"**{r['fast_vs_images']:.2f}**, ImgCache / download-only **{r['imgcache_vs_download_only']:.2f}** "
            f"(fast {r['fast_vs_download_only']:.2f}), second / first crawl {s['elapsed']:.2f} s / "
            f"{s['first_elapsed']:.2f} s = **{r['second_vs_first']:.3f}** (whole processes {s['wall']:.2f} / "
            f"{s['first_wall']:.2f} s = {r['second_vs_first_process_wall']:.3f}); image bytes downloaded by the "
            f"second crawl: **{s['image_bytes_downloaded']}** ({s['image_requests']} image requests)."
        ),
    ]
    if "revalidation" in c:
        v = c["revalidation"]
        lines.append(
            f"Revalidation after expiry: {v['answered_304']} 304s / {v['image_requests']} image requests "
            f"({100 * v['share_304']:.1f} %), {v['image_bytes_downloaded']} image bytes."
        )
    if "limit" in c:
        lim, limf = best(c["limit"]), best(c["limit_fast"])
        lines.append(
            f"Hashing alone (bare loop, 2 processes, copies only BLAKE2b'd): {lim['rate']:.0f} images/s "
            f"({lim['rate'] / b['imgcache']['rate']:.2f}x the crawl), fast {limf['rate']:.0f} "
            f"({limf['rate'] / b['imgcache_fast']['rate']:.2f}x)."
        )
    if "sharing" in c:
        base = c["sharing"][0]["rate"]
        scaling = ", ".join(f"{x['processes']}: {x['rate']:.1f}/s ({x['rate'] / base:.2f}x)" for x in c["sharing"])
        ok = "no duplicate rows, no lost or doubled URL records" if sharing_ok(c["sharing"]) else "**CHECK FAILED**"
        lines.append(f"Sharing one PostgreSQL store, processes: {scaling}; {ok}.")
    if c["problems"]:
        lines += ["", "**Problems:**", *(f"- {p}" for p in c["problems"])]
    return lines


if __name__ == "__main__":
    sys.exit(main())
