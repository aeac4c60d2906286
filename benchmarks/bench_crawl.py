"""Crawl benchmark: ImgCachePipeline against Scrapy's ImagesPipeline and the physical limit.

Not a test: it prints figures for docs/crawl-benchmark.md. Run from the repository root:

    python -m benchmarks.bench_crawl            # 1,000 distinct 1600x1200 photos (~15 minutes)
    python -m benchmarks.bench_crawl --quick    # 200 photos, a smoke run

Every figure is a ratio of two measurements taken in the same run, on the same site served
by the same server process, so a noisy machine moves both sides together. The site: N
distinct JPEG photos (pairwise at least --min-distance pHash bits apart), 20% more URLs
serving exact copies of some of them, 10% more serving near-duplicates (resized,
recompressed, 1%-cropped, brightened), 10 images a page, served from memory by
benchmarks/crawl_server.py in its own process. Each crawl is a real ``scrapy crawl``
process in a generated project; benchmarks/crawl_spider.py times it from spider_opened to
spider_closed and counts the image results the items come back with.

The photos are built reproducibly from scikit-image's bundled photographs (random 4:3 crops,
flips, quarter turns, per-channel colour shifts, a little sensor grain) and cached under
benchmarks/out/, so a rerun starts at once.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from example_project.photos import PHOTO_NAMES, encode, photo  # noqa: E402
from scrapy_imgcache.hashing import Inspector, content_hash  # noqa: E402

OUT = REPO / "benchmarks" / "out"
POSTGRES_URL = os.environ.get("IMGCACHE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DATASET_VERSION = 1
PER_PAGE = 10
EXACT_SHARE = 0.20
NEAR_SHARE = 0.10
NEAR_KINDS = ("resized", "recompressed", "cropped", "brightened")

#: the settings both pipelines crawl with (documented in docs/crawl-benchmark.md)
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


def log(*args: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


# -- the photos --------------------------------------------------------------------------------


def _candidate(job: tuple[int, tuple[int, int], int]) -> tuple[int, int, bytes]:
    """One photo from a seed: (seed, pHash as an int, JPEG bytes)."""
    seed, size, quality = job
    rng = np.random.default_rng(seed)
    src = photo(PHOTO_NAMES[int(rng.integers(len(PHOTO_NAMES)))])
    width, height = size
    turn = rng.random() < 0.25  # crop a portrait region and turn it a quarter
    aspect = height / width if turn else width / height
    sw, sh = src.size
    cw = min(sw, sh * aspect) * rng.uniform(0.3, 0.95)
    ch = cw / aspect
    x, y = rng.uniform(0, sw - cw), rng.uniform(0, sh - ch)
    img = src.crop((round(x), round(y), round(x + cw), round(y + ch)))
    if turn:
        img = img.transpose(Image.Transpose.ROTATE_90)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.25:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    img = img.resize(size, Image.Resampling.BICUBIC)
    pixels = np.asarray(img, dtype=np.float32)
    gain = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    offset = rng.uniform(-12, 12, 3).astype(np.float32)
    grain = rng.standard_normal(pixels.shape, dtype=np.float32) * 2.0
    pixels = pixels * gain + offset + grain
    data = encode(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), quality=quality)
    return seed, int(Inspector().inspect(data).perceptual_hash, 16), data


def _near(job: tuple[bytes, str]) -> bytes:
    """The ways a photo reappears elsewhere (as tests/photos.near_duplicates, without PNG)."""
    data, kind = job
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    if kind == "resized":
        return encode(img.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.LANCZOS))
    if kind == "recompressed":
        return encode(img, quality=55)
    if kind == "cropped":
        return encode(img.crop((w // 100, h // 100, w - w // 100, h - h // 100)))
    return encode(ImageEnhance.Brightness(img).enhance(1.15))


def _popcount(values: np.ndarray) -> np.ndarray:
    return (
        np.bitwise_count(values)
        if hasattr(np, "bitwise_count")
        else np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
    )


def build_dataset(n: int, size: tuple[int, int], min_distance: int, quality: int = 88) -> Path:
    """N distinct photos + 20% exact copies + 10% near-duplicates under their own URLs (cached)."""
    name = f"crawl-v{DATASET_VERSION}-{n}-{size[0]}x{size[1]}-q{quality}-d{min_distance}"
    folder = OUT / name
    if (folder / "manifest.json").exists():
        return folder
    log(f"building {name} (once; cached under benchmarks/out/)")
    tmp = OUT / f".{name}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    accepted: list[int] = []
    hashes = np.zeros(0, dtype=np.uint64)
    seed, tried = 0, 0
    with multiprocessing.Pool(os.cpu_count() or 2) as pool:
        while len(accepted) < n:
            batch = [(s, size, quality) for s in range(seed, seed + 64)]
            seed += 64
            for s, phash, data in pool.map(_candidate, batch, chunksize=4):
                tried += 1
                if len(accepted) == n:
                    break
                value = np.uint64(phash)
                if min_distance and len(hashes) and int(_popcount(hashes ^ value).min()) < min_distance:
                    continue
                (tmp / f"d{len(accepted):05d}.jpg").write_bytes(data)
                accepted.append(s)
                hashes = np.append(hashes, value)
        rng = np.random.default_rng(12345)
        n_exact, n_near = round(n * EXACT_SHARE), round(n * NEAR_SHARE)
        exact_of = rng.choice(n, n_exact, replace=False)
        near_of = rng.choice(n, n_near, replace=False)
        jobs = [((tmp / f"d{i:05d}.jpg").read_bytes(), NEAR_KINDS[k % len(NEAR_KINDS)]) for k, i in enumerate(near_of)]
        for k, data in enumerate(pool.map(_near, jobs, chunksize=4)):
            (tmp / f"n{k:05d}.jpg").write_bytes(data)
    routes = []

    def path(kind: str, k: int) -> str:
        return f"/img/{hashlib.blake2b(f'{kind}{k}'.encode(), digest_size=6).hexdigest()}.jpg"

    for i in range(n):
        routes.append({"path": path("d", i), "file": f"d{i:05d}.jpg", "kind": "distinct", "of": i})
    for k, i in enumerate(exact_of):
        routes.append({"path": path("e", k), "file": f"d{int(i):05d}.jpg", "kind": "exact", "of": int(i)})
    for k, i in enumerate(near_of):
        routes.append(
            {
                "path": path("n", k),
                "file": f"n{k:05d}.jpg",
                "kind": "near",
                "of": int(i),
                "variant": NEAR_KINDS[k % len(NEAR_KINDS)],
            }
        )
    order = rng.permutation(len(routes))
    pages = [[routes[j]["path"] for j in order[s : s + PER_PAGE]] for s in range(0, len(order), PER_PAGE)]
    sizes = [(tmp / f"d{i:05d}.jpg").stat().st_size for i in range(n)]
    pairwise = _pairwise_min(hashes)
    manifest = {
        "n": n,
        "size": size,
        "quality": quality,
        "min_distance": min_distance,
        "seeds": accepted,
        "candidates_tried": tried,
        "routes": routes,
        "pages": pages,
        "mean_bytes": statistics.mean(sizes),
        "pairwise_min_distance": pairwise,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    tmp.rename(folder)
    return folder


def _pairwise_min(hashes: np.ndarray) -> int:
    best = 64
    for i in range(len(hashes) - 1):
        best = min(best, int(_popcount(hashes[i + 1 :] ^ hashes[i]).min()))
    return best


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
    proc.wait(timeout)
    wall = time.perf_counter() - proc._bench_t0  # type: ignore[attr-defined]
    proc._bench_log.close()  # type: ignore[attr-defined]
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"crawl failed ({proc.returncode}); see {out.parent}/crawl-*.log")
    result = json.loads(out.read_text())
    result["wall"] = wall
    result["rate"] = result["images"] / result["elapsed"]
    return result


def crawl(project: Path, server: Server, label: str, *extra: str) -> dict[str, Any]:
    server.reset()
    cpu0 = server.stats()["cpu_seconds"]
    result = finish_crawl(*start_crawl(project, server, label, "0/1", *extra))
    served = server.stats()
    result["server"] = {**served, "cpu_seconds": served["cpu_seconds"] - cpu0}
    log(
        f"  {label}: {result['images']} images in {result['elapsed']:.2f}s = {result['rate']:.1f}/s "
        f"(crawler CPU {result['cpu_seconds']:.1f}s, server CPU {result['server']['cpu_seconds']:.1f}s, "
        f"{served['image_200']} image 200s, {served['image_304']} 304s)"
    )
    return result


def check_imgcache(result: dict[str, Any], manifest: dict[str, Any]) -> None:
    """The plugin's stats must show the dataset: every distinct content stored once."""
    n_routes = len(manifest["routes"])
    n_exact = sum(r["kind"] == "exact" for r in manifest["routes"])
    n_near = sum(r["kind"] == "near" for r in manifest["routes"])
    stats = result["stats"]
    assert result["images"] == n_routes, (result["images"], n_routes)
    assert stats.get("imgcache/stored", 0) == n_routes - n_exact, stats
    assert stats.get("imgcache/duplicate/exact", 0) == n_exact, stats
    result["similar_found"] = stats.get("imgcache/duplicate/similar", 0)
    result["similar_expected"] = n_near


# -- the physical limit -------------------------------------------------------------------------

_BODIES: list[bytes] = []


def _load_bodies(files: list[str]) -> None:
    _BODIES.extend(Path(f).read_bytes() for f in files)


def _hash_one(job: tuple[bool, int, bool]) -> int:
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
    body, except those marked in ``copies``, which get only their BLAKE2b.

    With no body marked this is the issue's bare loop (BLAKE2b + pHash of the same bytes);
    with the exact copies marked it is the least hashing the crawl's job takes, since the
    plugin itself recognises an exact copy by its BLAKE2b without decoding it."""
    with multiprocessing.Pool(workers, initializer=_load_bodies, initargs=(files,)) as pool:
        assert all(pool.map(_noop, range(workers * 4), chunksize=1))  # bodies loaded before timing
        cpu0 = os.times()
        t0 = time.perf_counter()
        done = sum(pool.imap_unordered(_hash_one, [(fast, i, copies[i]) for i in range(len(files))], chunksize=8))
        elapsed = time.perf_counter() - t0
    cpu1 = os.times()  # the workers are reaped now: their CPU is counted
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    kind = ("fast" if fast else "default") + (", copies not decoded" if any(copies) else ", every body")
    log(f"  bare loop ({kind}): {done} images in {elapsed:.2f}s = {done / elapsed:.1f}/s")
    return {"images": done, "elapsed": elapsed, "rate": done / elapsed, "cpu_seconds": cpu}


# -- sharing one PostgreSQL store ---------------------------------------------------------------


def sharing(processes: int, server: Server, run: Path, manifest: dict[str, Any], data: Path) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    schema = f"imgcache_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    try:
        project = make_project(
            run / f"share-{processes}",
            {**IMGCACHE, "IMGCACHE_URL": url, "IMGCACHE_FILES_STORE": str(run / f"share-{processes}-files")},
        )
        # the schema is created once, before the clock: N processes racing to migrate is not the point
        from scrapy_imgcache.store.sql import SqlStore

        SqlStore(url, str(run / f"share-{processes}-files")).close()
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
        check = {
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
            "check": check,
            "per_process": [{"images": r["images"], "elapsed": r["elapsed"]} for r in results],
        }
        log(f"  {processes} process(es): {images} images in {elapsed:.2f}s = {out['rate']:.1f}/s; {check}")
        return out
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


# -- the machine --------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    from importlib.metadata import version

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = ["scrapy", "twisted", "pillow", "imagehash", "numpy", "scipy", "sqlalchemy", "psycopg", "aiohttp"]
    info = {
        "cpu": f"{os.cpu_count()} cores, {cpu}",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": ", ".join(f"{lib} {version(lib)}" for lib in libs),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    try:
        from PIL import features

        info["libjpeg"] = str(features.version("jpg"))
    except Exception:  # noqa: BLE001 - a version we cannot read is reported as unknown
        pass
    return info


# -- the run ------------------------------------------------------------------------------------


def best(results: list[dict[str, Any]]) -> dict[str, Any]:
    return max(results, key=lambda r: r["rate"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 photos, 1,000 for memory, one round: a smoke run")
    ap.add_argument("--photos", type=int, help="distinct photos (default 1000; --quick 200)")
    ap.add_argument("--memory-photos", type=int, help="distinct small photos of the memory crawl (default 10000)")
    ap.add_argument("--rounds", type=int, help="first-crawl rounds; the best of each side counts (default 2)")
    ap.add_argument("--min-distance", type=int, default=12, help="pHash bits between any two distinct photos")
    ap.add_argument("--skip", default="", help="comma list of: sharing, memory")
    ap.add_argument("--json", type=Path, help="write every measurement here as well")
    ap.add_argument(
        "--keep-stores", action="store_true", help="keep the crawls' image stores under benchmarks/out/run-*"
    )
    args = ap.parse_args(argv)
    n = args.photos or (200 if args.quick else 1000)
    n_mem = args.memory_photos or (1000 if args.quick else 10000)
    rounds = args.rounds or (1 if args.quick else 2)
    skip = set(filter(None, args.skip.split(",")))

    report: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python -m benchmarks.bench_crawl", *(argv or sys.argv[1:])]),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": COMMON_SETTINGS,
    }
    log("machine:", report["machine"])
    data = build_dataset(n, (1600, 1200), args.min_distance)
    manifest = json.loads((data / "manifest.json").read_text())
    report["dataset"] = {
        k: manifest[k]
        for k in ("n", "size", "quality", "min_distance", "mean_bytes", "pairwise_min_distance", "candidates_tried")
    }
    report["dataset"]["urls"] = len(manifest["routes"])
    log("dataset:", report["dataset"])
    files = [str(data / r["file"]) for r in manifest["routes"]]
    copies = [r["kind"] == "exact" for r in manifest["routes"]]

    run = OUT / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    run.mkdir(parents=True)
    server = Server(data, run)
    try:
        paths = [r["path"] for r in manifest["routes"]]
        raw_throughput(server, paths)  # warm-up
        report["server_raw"] = raw_throughput(server, paths)
        log("server, plain client:", report["server_raw"])

        sides: dict[str, list[dict[str, Any]]] = {
            "images": [],
            "imgcache": [],
            "imgcache_fast": [],
            "limit": [],
            "limit_every_body": [],
            "limit_fast": [],
            "download_only": [],
            "imgcache_threads": [],
        }
        projects: list[Path] = []
        for r in range(rounds):
            log(f"round {r + 1}/{rounds}")
            sides["images"].append(
                crawl(
                    make_project(
                        run / f"images-{r}", {**IMAGES_PIPELINE, "IMAGES_STORE": str(run / f"images-{r}" / "store")}
                    ),
                    server,
                    "first",
                )
            )
            project = make_project(run / f"imgcache-{r}", IMGCACHE)
            projects.append(project)
            sides["imgcache"].append(crawl(project, server, "first"))
            check_imgcache(sides["imgcache"][-1], manifest)
            threads = make_project(run / f"imgcache-threads-{r}", {**IMGCACHE, "IMGCACHE_HASH_PROCESSES": 0})
            sides["imgcache_threads"].append(crawl(threads, server, "first"))
            check_imgcache(sides["imgcache_threads"][-1], manifest)
            fast = make_project(run / f"imgcache-fast-{r}", {**IMGCACHE, "IMGCACHE_FAST_HASH": True})
            sides["imgcache_fast"].append(crawl(fast, server, "first"))
            check_imgcache(sides["imgcache_fast"][-1], manifest)
            sides["download_only"].append(crawl(make_project(run / f"fetch-{r}", {}), server, "first", "-a", "fetch=1"))
            sides["limit"].append(bare_loop(files, copies, fast=False))
            sides["limit_every_body"].append(bare_loop(files, [False] * len(files), fast=False))
            sides["limit_fast"].append(bare_loop(files, copies, fast=True))
        report["first_crawl"] = sides
        b = {k: best(v) for k, v in sides.items()}
        report["ratios"] = {
            "first_crawl": b["imgcache"]["rate"] / b["images"]["rate"],
            "fast_hash": b["imgcache_fast"]["rate"] / b["images"]["rate"],
            "overhead": b["limit"]["rate"] / b["imgcache"]["rate"],
            "overhead_every_body": b["limit_every_body"]["rate"] / b["imgcache"]["rate"],
            "overhead_fast": b["limit_fast"]["rate"] / b["imgcache_fast"]["rate"],
        }

        log("second crawl (the last round's default project, same store)")
        project = projects[-1]
        first = sides["imgcache"][-1]
        second = crawl(project, server, "second")
        report["second_crawl"] = {
            "first_elapsed": first["elapsed"],
            "second_elapsed": second["elapsed"],
            "first_wall": first["wall"],
            "second_wall": second["wall"],
            "ratio": second["elapsed"] / first["elapsed"],
            "wall_ratio": second["wall"] / first["wall"],
            "image_bytes_downloaded": second["server"]["image_bytes"],
            "image_requests": second["server"]["image_requests"],
            "images": second["images"],
            "hits": second["stats"].get("imgcache/hit", 0),
        }
        log("revalidation (IMGCACHE_EXPIRES=1 on the same store)")
        time.sleep(1.5)
        reval = crawl(project, server, "revalidate", "-s", "IMGCACHE_EXPIRES=1")
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
        if "sharing" not in skip:
            log("sharing one PostgreSQL store")
            report["sharing"] = [sharing(p, server, run, manifest, data) for p in (1, 2, 4)]
    finally:
        server.stop()

    if "memory" not in skip:
        log(f"memory: {n_mem} small photos")
        mdata = build_dataset(n_mem, (400, 300), 0, quality=85)
        mmanifest = json.loads((mdata / "manifest.json").read_text())
        mserver = Server(mdata, run)
        try:
            result = crawl(make_project(run / "memory", IMGCACHE), mserver, "memory")
        finally:
            mserver.stop()
        total = len(mmanifest["routes"])
        mark = max(n_mem // 5, 1)
        samples = result["samples"]
        at_mark = next((s for s in samples if s[0] >= mark), samples[-1])
        report["memory"] = {
            "photos": n_mem,
            "urls": total,
            "mean_bytes": mmanifest["mean_bytes"],
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
        log("memory:", {k: v for k, v in report["memory"].items() if k != "curve"})

    if not args.keep_stores:  # each crawl's blobs are a copy of the site: ~4 GB a full run
        for folder in [*run.glob("*/.scrapy/imgcache-files"), *run.glob("*/store"), *run.glob("share-*-files")]:
            shutil.rmtree(folder, ignore_errors=True)
    text = render(report)
    (run / "report.md").write_text(text)
    (run / "report.json").write_text(json.dumps(report, indent=1, default=str))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    print(text)
    log(f"kept under {run}")
    return 0


def render(rep: dict[str, Any]) -> str:
    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    r = rep["ratios"]
    b = {k: best(v) for k, v in rep["first_crawl"].items()}
    lines = [
        f"Run {rep['started']}: `{rep['command']}`",
        "",
        "| figure | measured | target | |",
        "|---|---|---|---|",
        (
            "| first-crawl throughput, ImgCache / ImagesPipeline | "
            f"{b['imgcache']['rate']:.1f} / {b['images']['rate']:.1f} "
            f"images/s = **{r['first_crawl']:.2f}** | >= 1.0 | {mark(r['first_crawl'] >= 1.0)} |"
        ),
        (
            f"| fast-hash mode / ImagesPipeline | {b['imgcache_fast']['rate']:.1f} / {b['images']['rate']:.1f} "
            f"= **{r['fast_hash']:.2f}** | >= 2.0 | {mark(r['fast_hash'] >= 2.0)} |"
        ),
        (
            f"| overhead over the limit, the issue's bare loop (BLAKE2b + pHash of every body) / crawl | "
            f"{b['limit_every_body']['rate']:.1f} / {b['imgcache']['rate']:.1f} "
            f"= **{r['overhead_every_body']:.2f}** | <= 1.5 | {mark(r['overhead_every_body'] <= 1.5)} |"
        ),
        (
            "| overhead over the limit, stricter bare loop"
            " (exact copies only BLAKE2b'd, as the plugin does) / crawl | "
            f"{b['limit']['rate']:.1f} / {b['imgcache']['rate']:.1f} "
            f"= **{r['overhead']:.2f}** | (<= 1.5) | {mark(r['overhead'] <= 1.5)} |"
        ),
        (
            f"| (context) overhead over the limit in fast-hash mode (copies not decoded) | "
            f"{b['limit_fast']['rate']:.1f} / {b['imgcache_fast']['rate']:.1f} = {r['overhead_fast']:.2f} | | |"
        ),
    ]
    lines.append(
        f"| (context) ImgCache hashing in Scrapy's threads (IMGCACHE_HASH_PROCESSES=0) / ImagesPipeline | "
        f"{b['imgcache_threads']['rate']:.1f} / {b['images']['rate']:.1f} = "
        f"{b['imgcache_threads']['rate'] / b['images']['rate']:.2f} | | |"
    )
    lines.append(
        f"| (context) Scrapy downloading the same images in the spider, no pipeline | "
        f"{b['download_only']['rate']:.1f} images/s | | |"
    )
    s = rep["second_crawl"]
    lines.append(
        f"| second crawl / first crawl | {s['second_elapsed']:.2f}s / {s['first_elapsed']:.2f}s = "
        f"**{s['ratio']:.3f}** (process wall {s['wall_ratio']:.3f}); image bytes downloaded: "
        f"**{s['image_bytes_downloaded']}** | <= 0.2 and 0 bytes | "
        f"{mark(s['ratio'] <= 0.2 and s['image_bytes_downloaded'] == 0)} |"
    )
    v = rep["revalidation"]
    lines.append(
        f"| revalidation: 304s / image requests | {v['answered_304']} / {v['image_requests']} = "
        f"**{100 * v['share_304']:.1f}%** | 100% | {mark(v['share_304'] == 1.0)} |"
    )
    if "sharing" in rep:
        base = rep["sharing"][0]["rate"]
        ok = all(
            x["check"]["duplicate_image_rows"] == 0
            and x["check"]["urls_missing"] == 0
            and x["check"]["urls_wrong_content"] == 0
            and x["check"]["urls_with_several_records"] == 0
            and x["check"]["image_rows"] == x["check"]["distinct_contents_expected"]
            for x in rep["sharing"]
        )
        scaling = ", ".join(f"{x['processes']}: {x['rate']:.1f}/s ({x['rate'] / base:.2f}x)" for x in rep["sharing"])
        lines.append(f"| sharing one PostgreSQL store | {scaling} | no duplicates, no lost URL records | {mark(ok)} |")
    if "memory" in rep:
        m = rep["memory"]
        grow = m["rss_at_end"] / m["rss_at_mark"]
        lines.append(
            f"| peak memory, {m['urls']} image URLs ({m['photos']} distinct 400x300, mean "
            f"{m['mean_bytes'] / 1024:.0f} KB) | RSS {m['rss_at_mark'] / 2**20:.0f} MiB at {m['mark']} images, "
            f"{m['rss_at_end'] / 2**20:.0f} MiB at {m['images']} (x{grow:.2f}); peak {m['peak_rss'] / 2**20:.0f} MiB; "
            f"its {m['workers']} hashing workers {m['workers_rss_at_mark'] / 2**20:.0f} and "
            f"{m['workers_rss_at_end'] / 2**20:.0f} MiB "
            f"| flat | {mark(grow < 1.15)} |"
        )
    lines += [
        "",
        "Details:",
        "",
        "```",
        json.dumps({k: rep[k] for k in ("machine", "dataset", "server_raw")}, indent=1, default=str),
        "```",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
