"""The one-command demo: ``./dev demo`` (or ``python -m example_project.demo``).

Serves a small shop and blog on 127.0.0.1 (real photographs from scikit-image, offline),
crawls both with the shared cache, crawls them again, asks ``scrapy imgcache-similar``
for one photo, and prints a summary a person can check at a glance.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from example_project.photos import (
    distinct_images,
    encode,
    near_duplicates,
    png_bomb,
    watermarked,
)
from example_project.webserver import Site

PROJECT = Path(__file__).resolve().parent
REPO = PROJECT.parent
STATE = PROJECT / ".scrapy"
CHANGING = "/shop/img/deal-of-the-day.jpg"


@dataclass
class DemoSite:
    """The site, and what a correct run must find in it."""

    site: Site
    image_urls: int = 0
    invalid: list[str] = field(default_factory=list)
    near: list[str] = field(default_factory=list)
    exact: list[str] = field(default_factory=list)
    distinct: int = 0
    later_version: bytes = b""
    query: bytes = b""


def build_site(site: Site) -> DemoSite:
    photos = distinct_images(12, (800, 600))
    shop = [encode(p) for p in photos[:8]]
    demo = DemoSite(site)
    # the shop: eight products; product 3 shows its photo twice; product 7 has the daily deal
    links = []
    for i, data in enumerate(shop):
        site.image(f"/shop/img/{i}.jpg", data)
        imgs = [f"/shop/img/{i}.jpg"]
        if i == 3:
            site.image("/shop/img/3-zoom.jpg", data)
            imgs.append("/shop/img/3-zoom.jpg")
            demo.exact.append("/shop/img/3-zoom.jpg")
        if i == 7:
            site.image(CHANGING, encode(photos[10]))
            imgs.append(CHANGING)
        site.html(f"/shop/p/{i}.html", _page(f"Product {i}", imgs))
        links.append(f'<a class="product" href="/shop/p/{i}.html">Product {i}</a>')
    site.html("/shop/", _page("Shop", [], links))
    demo.later_version = encode(photos[11])
    # the blog: the shop's photos again (exact), edited copies (near), and bad images
    variants = {
        "/blog/media/a.jpg": shop[0],
        "/blog/media/b.jpg": shop[1],
        "/blog/media/c.jpg": shop[2],
        "/blog/media/own-1.jpg": encode(photos[8]),
        "/blog/media/resized.jpg": near_duplicates(photos[4])["resized"],
        "/blog/media/recompressed.jpg": near_duplicates(photos[5])["recompressed"],
        "/blog/media/brightened.jpg": near_duplicates(photos[6])["brightened"],
        "/blog/media/watermarked.jpg": watermarked(photos[7]),
        "/blog/media/own-2.jpg": encode(photos[9]),
    }
    for path, data in variants.items():
        site.image(path, data)
    demo.exact += ["/blog/media/a.jpg", "/blog/media/b.jpg", "/blog/media/c.jpg"]
    demo.near = [
        "/blog/media/resized.jpg",
        "/blog/media/recompressed.jpg",
        "/blog/media/brightened.jpg",
        "/blog/media/watermarked.jpg",
    ]
    site.image("/blog/media/broken.jpg", encode(photos[9])[:5000])  # truncated download
    site.image("/blog/media/banner.jpg", b"<html><body>ad server error</body></html>")  # not an image
    site.image("/blog/media/huge.png", png_bomb(), "image/png")  # a decompression bomb
    demo.invalid = ["/blog/media/broken.jpg", "/blog/media/banner.jpg", "/blog/media/huge.png"]
    posts = [
        ["/blog/media/a.jpg", "/blog/media/b.jpg"],
        ["/blog/media/c.jpg", "/blog/media/own-1.jpg"],
        ["/blog/media/resized.jpg", "/blog/media/recompressed.jpg"],
        ["/blog/media/brightened.jpg", "/blog/media/watermarked.jpg", "/blog/media/own-2.jpg"],
        demo.invalid,
    ]
    links = []
    for i, imgs in enumerate(posts):
        site.html(f"/blog/post/{i}.html", _page(f"Post {i}", imgs))
        links.append(f'<a class="post" href="/blog/post/{i}.html">Post {i}</a>')
    site.html("/blog/", _page("Blog", [], links))
    demo.image_urls = sum(1 for r in site.routes.values() if r.is_image)
    demo.distinct = 8 + 1 + 2 + len(demo.near)  # shop, the deal, the blog's own photos, the edited copies
    demo.query = near_duplicates(photos[4])["cropped"]
    return demo


def _page(title: str, images: list[str], links: list[str] = ()) -> str:  # type: ignore[assignment]
    body = "".join(f'<img src="{src}" alt="">' for src in images) + "".join(links)
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>"


def scrapy(
    *args: str, stats: Path | None = None, site: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a ``scrapy`` command in the example project, as a user would."""
    cmd = [sys.executable, "-m", "scrapy", *args]
    if site:
        cmd += ["-s", f"IMGDEMO_SITE={site}"]
    if stats is not None:
        cmd += ["-s", f"IMGDEMO_STATS_FILE={stats}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT), str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    done = subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True)
    if check and done.returncode not in (0, 1):
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"demo: `scrapy {' '.join(args)}` failed with exit code {done.returncode}")
    return done


def crawl(spider: str, run: str, site: str, *settings: str) -> dict[str, Any]:
    stats = STATE / "demo" / f"{spider}-{run}.json"
    args = ["crawl", spider, "-O", str(STATE / "demo" / f"{spider}-{run}.jsonl:jsonlines")]
    for s in settings:
        args += ["-s", s]
    done = scrapy(*args, stats=stats, site=site)
    if done.returncode != 0 or not stats.exists():
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit(f"demo: the {spider} crawl failed")
    return json.loads(stats.read_text())


def total(stats: list[dict[str, Any]], key: str) -> int:
    return sum(int(s.get(f"imgcache/{key}", 0)) for s in stats)


def run(verbose: bool = False) -> dict[str, Any]:
    """Run the whole demo; returns the figures the summary prints (the demo's test checks them)."""
    shutil.rmtree(STATE, ignore_errors=True)  # every run starts from an empty cache
    (STATE / "demo").mkdir(parents=True)
    print("demo: building the demo site from scikit-image's photos ...", flush=True)
    site = Site().start()
    demo = build_site(site)
    base = site.url("")
    try:
        print(f"demo: serving it at {base}; first crawl (shop, then blog) ...", flush=True)
        first = [crawl("shop", "1", base), crawl("blog", "1", base)]
        first_bytes = site.image_bytes
        site.image(CHANGING, demo.later_version, mtime=1_800_000_000.0)  # the deal changes overnight
        site.reset_counts()
        print(
            "demo: second crawl (blog from the cache; shop revalidated, as if its entries had expired) ...", flush=True
        )
        second = [crawl("shop", "2", base, "IMGCACHE_EXPIRES=0"), crawl("blog", "2", base)]
        valid_paths = [p for p, r in site.routes.items() if r.is_image and p not in demo.invalid]
        unchanged_bytes = sum(
            len(site.routes[p].body) * site.hits[p] for p in valid_paths if p != CHANGING and site.not_modified[p] == 0
        )
        changed_bytes = len(site.routes[CHANGING].body) * (site.hits[CHANGING] - site.not_modified[CHANGING])
        invalid_bytes = sum(len(site.routes[p].body) * site.hits[p] for p in demo.invalid)
    finally:
        site.stop()
    query = STATE / "demo" / "query.jpg"
    query.write_bytes(demo.query)
    sheet = STATE / "demo" / "contact-sheet.html"
    similar = scrapy("imgcache-similar", str(query), "--html", str(sheet))
    print("\n$ scrapy imgcache-similar .scrapy/demo/query.jpg --html .scrapy/demo/contact-sheet.html")
    print(similar.stdout.rstrip())
    figures = {
        "image_urls": demo.image_urls,
        "stored": total(first, "stored"),
        "exact_duplicates": total(first, "duplicate/exact"),
        "near_duplicates": total(first, "duplicate/similar"),
        "invalid": sum(v for s in first for k, v in s.items() if k.startswith("imgcache/invalid/")),
        "bytes_saved": total(first, "bytes_saved"),
        "first_image_bytes": first_bytes,
        "second_hits": total(second, "hit"),
        "second_revalidated": total(second, "revalidated"),
        "second_changed_stored": total(second, "stored"),
        "second_unchanged_bytes": unchanged_bytes,
        "second_changed_bytes": changed_bytes,
        "second_invalid_bytes": invalid_bytes,
        "similar_exit": similar.returncode,
        "similar_matches": similar.stdout.count("\n"),
        "contact_sheet": str(sheet),
        "expected": {
            "stored": demo.distinct,
            "exact": len(demo.exact),
            "near": len(demo.near),
            "invalid": len(demo.invalid),
            "unchanged": len(valid_paths) - 1,
        },
    }
    print_summary(figures)
    return figures


def print_summary(f: dict[str, Any]) -> None:
    e = f["expected"]
    lines = [
        "",
        "scrapy-imgcache demo: summary",
        "------------------------------",
        f"first crawl   image URLs seen                 {f['image_urls']}",
        f"              stored once (distinct photos)   {f['stored']}   (expected {e['stored']})",
        f"              exact duplicates                {f['exact_duplicates']}   (expected {e['exact']})",
        f"              near-duplicates found           {f['near_duplicates']}   (expected {e['near']})",
        f"              refused (broken/not image/bomb) {f['invalid']}   (expected {e['invalid']})",
        f"              bytes saved by dedupe           {f['bytes_saved']:,}",
        f"              image bytes downloaded          {f['first_image_bytes']:,}",
        f"second crawl  served from the cache (no net)  {f['second_hits']}",
        f"              revalidated with 304            {f['second_revalidated']}",
        (
            f"              unchanged images re-downloaded  {f['second_unchanged_bytes']:,} bytes (expected 0; "
            f"{f['second_hits'] + f['second_revalidated']} of {e['unchanged']} unchanged images from the cache)"
        ),
        (
            f"              the changed image, new version  {f['second_changed_stored']} stored "
            f"({f['second_changed_bytes']:,} bytes)"
        ),
        f"contact sheet {f['contact_sheet']}",
    ]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    figures = run()
    e = figures["expected"]
    ok = (
        figures["stored"] == e["stored"]
        and figures["exact_duplicates"] == e["exact"]
        and figures["near_duplicates"] == e["near"]
        and figures["second_unchanged_bytes"] == 0
        and figures["second_hits"] + figures["second_revalidated"] == e["unchanged"]
    )
    print("demo: OK" if ok else "demo: figures differ from what the demo site should give (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
