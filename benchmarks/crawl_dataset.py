"""The crawl benchmark's sites: one per size class, built reproducibly and cached under benchmarks/out/.

Every image is a photo made from scikit-image's bundled photographs (``example_project.photos``):
a seeded random crop of one of them (30-95 % of its short side, a quarter of them a portrait
region turned a quarter), flips, per-channel gain and offset (a colour shift) and a little
sensor grain, scaled to the class's size and encoded in the class's formats. A candidate is
kept only if its pHash is at least ``min_distance`` bits from every photo kept so far, so
the distinct photos are distinct for the plugin too (its near-duplicate threshold is 8).

On top of the N distinct photos each site has 20 % more URLs serving exact copies of some of
them and 10 % more serving near-duplicates of others (3/4-size, recompressed, 1 % cropped,
brightened 15 %), all shuffled, 10 ``<img>`` a page; except ``neardup``, where 70 % of the
URLs are near-duplicates. The classes:

- ``thumb``: thumbnails, 240-300 px on the long side, JPEG quality 88 (~15 KB);
- ``everyday``: 640-1024 px on the long side, 70 % JPEG (quality 85), 15 % WebP (quality 80)
  and 15 % PNG (a 256-colour palette, as pngquant-style tools publish photos, 640-800 px:
  a true-colour PNG photo of that size is 0.5-1.2 MB);
- ``neardup``: everyday's photos (its first N), and for 70 % of the URLs near-duplicates of
  them: each drawn from the N at random (some have none, some several), each its own seeded
  variant (resized to 60-90 %, recompressed at a lower quality, cropped 1-5 % a side,
  brightened 8-25 %, or given a border of 2-6 %), no exact copies: a crawl where most images
  are near-duplicates of earlier ones (or of later ones: the URLs are shuffled);
- ``large``: 1600x1200 JPEG, quality 88 (~215 KB): the photos of the first crawl benchmark.

The pHashes of the candidates are ``imagehash.phash`` (which the plugin's pHash equals), so
building a site does not depend on the package under test.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import signal
import statistics
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from example_project.photos import PHOTO_NAMES, photo

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out"
VERSION = 2
PER_PAGE = 10
EXACT_SHARE = 0.20
NEAR_SHARE = 0.10
NEAR_KINDS = ("resized", "recompressed", "cropped", "brightened")
#: the kinds of the ``varied`` near-duplicates (neardup), each with seeded parameters
VARIED_KINDS = ("resized", "recompressed", "cropped", "brightened", "bordered")
#: portrait and landscape shapes of the variable-size classes (width, height)
ASPECTS = ((4, 3), (3, 2), (1, 1), (3, 4), (2, 3), (16, 9))
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


@dataclass(frozen=True)
class SizeClass:
    name: str
    title: str
    #: distinct photos of a full run and of --quick
    n: int
    quick_n: int
    #: the long side's range in pixels, or a fixed (width, height)
    long_side: tuple[int, int] = (0, 0)
    fixed: tuple[int, int] | None = None
    jpeg_quality: int = 85
    #: share of each format among the distinct photos, in twentieths: JPEG, WEBP, PNG
    twentieths: tuple[int, int, int] = (20, 0, 0)
    #: the long side's range of the PNGs (palette PNG photos are large: kept at the low end)
    png_long_side: tuple[int, int] = (640, 800)
    #: URLs serving exact copies and near-duplicates, as shares of the distinct photos
    exact_share: float = EXACT_SHARE
    near_share: float = NEAR_SHARE
    #: ``classic``: one fixed variant of each of some photos (a kind in turn); ``varied``: each
    #: near-duplicate of a photo drawn at random (with repeats), its kind's parameters seeded
    near_style: str = "classic"
    #: the class whose candidate photos this one uses (its first N are this one's photos)
    photos_of: str = ""

    def describe(self) -> str:
        size = f"{self.fixed[0]}x{self.fixed[1]}" if self.fixed else f"{self.long_side[0]}-{self.long_side[1]} px"
        shares = [f"{5 * t} % {fmt}" for t, fmt in zip(self.twentieths, ("JPEG", "WebP", "PNG"), strict=True) if t]
        return f"{size}, {', '.join(shares)}"


CLASSES = {
    c.name: c
    for c in (
        SizeClass("thumb", "thumbnails", n=3000, quick_n=300, long_side=(240, 300), jpeg_quality=88),
        SizeClass("everyday", "everyday", n=1500, quick_n=200, long_side=(640, 1024), twentieths=(14, 3, 3)),
        SizeClass(
            "neardup",
            "everyday, mostly near-duplicates",
            n=600,
            quick_n=60,
            long_side=(640, 1024),
            twentieths=(14, 3, 3),
            exact_share=0.0,
            near_share=7 / 3,  # 70 % of the URLs
            near_style="varied",
            photos_of="everyday",
        ),
        SizeClass("large", "large", n=800, quick_n=100, fixed=(1600, 1200), jpeg_quality=88),
    )
}
#: the memory crawl's many small photos (--extras memory)
MEMORY = SizeClass("memory", "memory", n=10000, quick_n=1000, fixed=(400, 300), jpeg_quality=85)
_ALL = {**CLASSES, MEMORY.name: MEMORY}


def log(*args: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


# -- one photo ----------------------------------------------------------------------------------


def _phash(img: Image.Image) -> int:
    import imagehash

    return int(str(imagehash.phash(img)), 16)


def _encode(img: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, "JPEG", quality=quality)
    elif fmt == "WEBP":
        img.convert("RGB").save(buf, "WEBP", quality=quality)
    else:  # a 256-colour palette PNG, dithered
        (img if img.mode == "P" else img.convert("RGB").quantize(256)).save(buf, "PNG")
    return buf.getvalue()


def _format_of(cls: SizeClass, seed: int) -> str:
    jpeg, webp, _ = cls.twentieths
    slot = seed % 20
    return "JPEG" if slot < jpeg else "WEBP" if slot < jpeg + webp else "PNG"


def _size_of(cls: SizeClass, seed: int, fmt: str) -> tuple[int, int]:
    if cls.fixed:
        return cls.fixed
    rng = np.random.default_rng([seed, 1])  # apart from the crop's draws, so `large` stays as it was
    low, high = cls.png_long_side if fmt == "PNG" else cls.long_side
    long_side = int(rng.integers(low, high + 1))
    aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
    if aw >= ah:
        return long_side, max(1, round(long_side * ah / aw))
    return max(1, round(long_side * aw / ah)), long_side


def _candidate(job: tuple[str, int]) -> tuple[int, int, bytes, str]:
    """One photo from a seed: (seed, pHash as an int, encoded bytes, format)."""
    name, seed = job
    cls = _ALL[name]
    cls = _ALL[cls.photos_of] if cls.photos_of else cls
    fmt = _format_of(cls, seed)
    width, height = _size_of(cls, seed, fmt)
    rng = np.random.default_rng(seed)
    src = photo(PHOTO_NAMES[int(rng.integers(len(PHOTO_NAMES)))])
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
    img = img.resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(img, dtype=np.float32)
    gain = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    offset = rng.uniform(-12, 12, 3).astype(np.float32)
    grain = rng.standard_normal(pixels.shape, dtype=np.float32) * 2.0
    pixels = pixels * gain + offset + (0 if fmt == "PNG" else grain)  # grain would double a PNG
    data = _encode(Image.fromarray(pixels.clip(0, 255).astype(np.uint8)), fmt, cls.jpeg_quality)
    return seed, _phash(Image.open(io.BytesIO(data))), data, fmt


def _near(job: tuple[str, bytes, str, str]) -> tuple[bytes, str]:
    """The ways a photo reappears elsewhere (as tests/photos.near_duplicates), in its own format,
    except that a PNG recompressed is republished as a JPEG."""
    name, data, fmt, kind = job
    cls = _ALL[name]
    src = Image.open(io.BytesIO(data))
    img = src.convert("RGB")
    w, h = img.size
    if kind == "resized":
        return _encode(img.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.LANCZOS), fmt, cls.jpeg_quality), fmt
    if kind == "recompressed":
        if fmt == "PNG":
            return _encode(img, "JPEG", 80), "JPEG"
        return _encode(img, fmt, 55), fmt
    if kind == "cropped":
        return _encode(img.crop((w // 100, h // 100, w - w // 100, h - h // 100)), fmt, cls.jpeg_quality), fmt
    return _encode(ImageEnhance.Brightness(img).enhance(1.15), fmt, cls.jpeg_quality), fmt


def _varied(job: tuple[str, bytes, str, str, int]) -> tuple[bytes, str]:
    """One seeded near-duplicate of a photo (the ``varied`` style), in its original's format,
    except that a PNG recompressed is republished as a JPEG."""
    name, data, fmt, kind, seed = job
    cls = _ALL[name]
    rng = np.random.default_rng([seed, 7])
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    quality = cls.jpeg_quality
    if kind == "resized":
        scale = rng.uniform(0.6, 0.9)
        img = img.resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
    elif kind == "recompressed":
        quality = int(rng.integers(45, 76))
        fmt = "JPEG" if fmt == "PNG" else fmt
    elif kind == "cropped":
        left, top, right, bottom = (rng.uniform(0.01, 0.05, 4) * (w, h, w, h)).round().astype(int)
        img = img.crop((int(left), int(top), w - int(right), h - int(bottom)))
    elif kind == "brightened":
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(1.08, 1.25))
    else:  # bordered: a plain frame of 2-6 % of the short side, white, black or a grey
        border = max(1, round(min(w, h) * rng.uniform(0.02, 0.06)))
        grey = int(rng.choice([255, 0, int(rng.integers(60, 200))]))
        img = ImageOps.expand(img, border=border, fill=(grey, grey, grey))
    return _encode(img, fmt, quality), fmt


# -- the site -----------------------------------------------------------------------------------


def _popcount(values: np.ndarray) -> np.ndarray:
    return (
        np.bitwise_count(values)
        if hasattr(np, "bitwise_count")
        else np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
    )


def _pairwise_min(hashes: np.ndarray) -> int:
    best = 64
    for i in range(len(hashes) - 1):
        best = min(best, int(_popcount(hashes[i + 1 :] ^ hashes[i]).min()))
    return best


def _default_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _distinct_photos(
    pool: Any, cls: SizeClass, n: int, min_distance: int, tmp: Path
) -> tuple[list[str], list[str], np.ndarray, int]:
    """The class's first ``n`` candidates at least ``min_distance`` pHash bits from each other,
    written to ``tmp``: their files, formats and pHashes, and how many candidates were tried."""
    files: list[str] = []
    formats: list[str] = []
    hashes = np.zeros(0, dtype=np.uint64)
    seed, tried = 0, 0
    while len(files) < n:
        batch = [(cls.name, s) for s in range(seed, seed + 64)]
        seed += 64
        for _, phash, data, fmt in pool.map(_candidate, batch, chunksize=4):
            tried += 1
            if len(files) == n:
                break
            value = np.uint64(phash)
            if min_distance and len(hashes) and int(_popcount(hashes ^ value).min()) < min_distance:
                continue
            file = f"d{len(files):05d}.{EXTENSIONS[fmt]}"
            (tmp / file).write_bytes(data)
            files.append(file)
            formats.append(fmt)
            hashes = np.append(hashes, value)
    return files, formats, hashes, tried


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _near_duplicates(
    pool: Any, cls: SizeClass, tmp: Path, files: list[str], formats: list[str], rng: np.random.Generator
) -> tuple[list[int], list[str], list[str]]:
    """The class's near-duplicates, written to ``tmp``: the photo each is of, its kind, its file."""
    n = len(files)
    n_near = round(n * cls.near_share)
    kinds = VARIED_KINDS if cls.near_style == "varied" else NEAR_KINDS
    near_kinds = [kinds[k % len(kinds)] for k in range(n_near)]
    if cls.near_style == "varied":  # photos drawn with repeats: some have several copies, some none
        near_of = [int(i) for i in rng.integers(n, size=n_near)]
        jobs = [(cls.name, (tmp / files[i]).read_bytes(), formats[i], near_kinds[k], k) for k, i in enumerate(near_of)]
        results = pool.map(_varied, jobs, chunksize=4)
        seen = {_digest((tmp / f).read_bytes()) for f in files}
        for k, job in enumerate(jobs):
            retry = 0
            # one photo drawn twice for one kind with the same parameters (a recompression at
            # the same quality) gives the same bytes: that copy is drawn again with another seed
            while _digest(results[k][0]) in seen:
                retry += 1
                results[k] = _varied((*job[:4], k + 100_000 * retry))
            seen.add(_digest(results[k][0]))
    else:
        near_of = [int(i) for i in rng.choice(n, n_near, replace=False)]
        jobs_classic = [
            (cls.name, (tmp / files[i]).read_bytes(), formats[i], near_kinds[k]) for k, i in enumerate(near_of)
        ]
        results = pool.map(_near, jobs_classic, chunksize=4)
    near_files = []
    for k, (data, fmt) in enumerate(results):
        near_files.append(f"n{k:05d}.{EXTENSIONS[fmt]}")
        (tmp / near_files[-1]).write_bytes(data)
    return near_of, near_kinds, near_files


def build(cls: SizeClass, n: int, min_distance: int = 12) -> Path:
    """The site of ``n`` distinct photos of class ``cls`` (built once, in parallel, then cached)."""
    name = f"crawl-v{VERSION}-{cls.name}-{n}-d{min_distance}"
    folder = OUT / name
    if (folder / "manifest.json").exists():
        return folder
    log(f"building {name} (once; cached under benchmarks/out/)")
    t0 = time.perf_counter()
    tmp = OUT / f".{name}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    # the workers are forked from a run whose SIGTERM handler raises SystemExit: a worker taking
    # that at Pool.terminate() while it holds the task queue's lock left its sibling blocked on
    # the lock for ever (the run hung after building); workers get the default handler back
    with multiprocessing.Pool(os.cpu_count() or 2, initializer=_default_sigterm) as pool:
        files, formats, hashes, tried = _distinct_photos(pool, cls, n, min_distance, tmp)
        rng = np.random.default_rng(12345)
        exact_of = [int(i) for i in rng.choice(n, round(n * cls.exact_share), replace=False)]
        near_of, near_kinds, near_files = _near_duplicates(pool, cls, tmp, files, formats, rng)
    _check_distinct(tmp, files + near_files)

    def path(kind: str, k: int, file: str) -> str:
        ext = file.rsplit(".", 1)[1]
        return f"/img/{hashlib.blake2b(f'{kind}{k}'.encode(), digest_size=6).hexdigest()}.{ext}"

    routes: list[dict[str, Any]] = []
    for i, file in enumerate(files):
        routes.append({"path": path("d", i, file), "file": file, "kind": "distinct", "of": i})
    for k, i in enumerate(exact_of):
        routes.append({"path": path("e", k, files[i]), "file": files[i], "kind": "exact", "of": i})
    for k, i in enumerate(near_of):
        file = near_files[k]
        routes.append({"path": path("n", k, file), "file": file, "kind": "near", "of": i, "variant": near_kinds[k]})
    order = rng.permutation(len(routes))
    pages = [[routes[j]["path"] for j in order[s : s + PER_PAGE]] for s in range(0, len(order), PER_PAGE)]
    manifest = {
        "class": cls.name,
        "describe": cls.describe(),
        "n": n,
        "urls": len(routes),
        "min_distance": min_distance,
        "candidates_tried": tried,
        "routes": routes,
        "pages": pages,
        **_sizes(tmp, routes, files, formats),
        "pairwise_min_distance": _pairwise_min(hashes),
        "build_seconds": time.perf_counter() - t0,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    tmp.rename(folder)
    log(f"built {name} in {manifest['build_seconds']:.0f}s: {summary(manifest)}")
    return folder


def _sizes(tmp: Path, routes: list[dict[str, Any]], files: list[str], formats: list[str]) -> dict[str, Any]:
    """What a site's manifest says of its images: kinds, formats, bytes, pixels."""
    served = [(tmp / r["file"]).stat().st_size for r in routes]
    by_format: dict[str, list[int]] = {}
    for fmt, file in zip(formats, files, strict=True):
        by_format.setdefault(fmt, []).append((tmp / file).stat().st_size)
    dims = [Image.open(tmp / f).size for f in files]
    return {
        "kinds": dict(Counter(r["kind"] for r in routes)),
        "formats": dict(Counter(formats)),
        "mean_bytes": statistics.mean(served),
        "mean_bytes_distinct": {fmt: statistics.mean(v) for fmt, v in by_format.items()},
        "total_bytes": sum(served),
        "mean_megapixels": statistics.mean(w * h for w, h in dims) / 1e6,
        "long_side": [min(max(d) for d in dims), max(max(d) for d in dims)],
    }


def _check_distinct(folder: Path, files: list[str]) -> None:
    """Every file's bytes differ from every other's: the exact copies are the only URLs that
    serve the same bytes, which the benchmark's checks count on."""
    seen: dict[str, str] = {}
    for file in files:
        digest = hashlib.blake2b((folder / file).read_bytes(), digest_size=16).hexdigest()
        if digest in seen:
            raise RuntimeError(f"{file} and {seen[digest]} have the same bytes")
        seen[digest] = file


def summary(manifest: dict[str, Any]) -> str:
    fmts = ", ".join(
        f"{count} {fmt} ({manifest['mean_bytes_distinct'][fmt] / 1024:.0f} KB)"
        for fmt, count in sorted(manifest["formats"].items(), key=lambda kv: -kv[1])
    )
    kinds = manifest.get("kinds") or {}
    copies = f" ({kinds.get('exact', 0)} exact copies, {kinds.get('near', 0)} near-duplicates)" if kinds else ""
    return (
        f"{manifest['n']} distinct ({fmts}), {manifest['urls']} URLs{copies}, "
        f"mean {manifest['mean_bytes'] / 1024:.0f} KB "
        f"a URL, {manifest['mean_megapixels']:.2f} MP, long side {manifest['long_side'][0]}-"
        f"{manifest['long_side'][1]} px, closest pair {manifest['pairwise_min_distance']} bits"
    )


if __name__ == "__main__":  # python -m benchmarks.crawl_dataset CLASS N: build one site
    import sys

    build(CLASSES[sys.argv[1]], int(sys.argv[2]))
