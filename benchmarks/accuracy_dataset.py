"""The near-duplicate accuracy benchmark's labelled set, built reproducibly and cached under benchmarks/out/.

Every *base picture* comes from the photos this repository already uses (scikit-image's
bundled sample images, among them ``example_project.photos.PHOTO_NAMES``) and scikit-learn's
two sample photos, in one of four ways:

- ``photo``: a whole photo;
- ``tile``: one of the non-overlapping tiles of a photo (tiles of one photo are DIFFERENT
  pictures: hard negatives that share the look, texture and colours);
- ``scene``: one of two different photos of the same scene: two framings of one photo, each
  62 % of its width, the second shifted by 35 % of a window (so 65 % of each is shared), or
  the two views of scikit-image's real stereo pair (``motorcycle_left`` / ``motorcycle_right``);
- ``catalogue``: an object cut out of a photo and centred on plain white (12 coins cut out of
  ``coins`` with their masks, the ``horse`` silhouette, the scikit-image logo, the colour wheel);
- ``flat``: a flat graphic (logo, banner, icon, diagram): a two- or three-colour geometric
  picture drawn here. They come in pairs of one geometry, the second rotated 90 degrees,
  mirrored, zoomed or framed and in other colours: different pictures that only colour tells
  apart (issue 19: such a pair was taken as a ``rotated`` copy).

Windows of one photo never overlap, so no base picture is a copy of another. A base is
scaled to a long side of 640-1024 px (upscaled at most 2.5x where the window allows) and
stored as JPEG quality 85: its ``original``. Each original then gets the 19 kinds of copies
of issue 14 (``KINDS``), made from the stored JPEG as a site re-publishing it would.

Crops: "X % cropped" removes X % of the width and X % of the height (a 20 % crop keeps 64 %
of the area), off-centre: 3/4 of it from one side (a random side per axis), 1/4 from the other.

Everything is seeded by the base's name, so a base renders the same whether it is built for a
full run or for ``--quick``; the bytes depend on Pillow's codecs, whose versions are recorded.
Adapted from the research prototype's labelled-set builder (issue 14).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import multiprocessing
import random
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from example_project.photos import PHOTO_NAMES

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "benchmarks" / "out"
VERSION = 1
DATA = OUT / f"accuracy-v{VERSION}"


@dataclass(frozen=True)
class Kind:
    key: str
    label: str
    #: the ``match`` values a robust mode may fairly report for this kind
    expected: tuple[str, ...]


#: issue 14's kinds of copies, in the issue's order (easiest first)
KINDS = (
    Kind("resized50", "resized 50 %", ("resized",)),
    Kind("thumb300", "thumbnail 300 px", ("resized",)),
    Kind("jpeg30", "JPEG q30", ("resized", "edited")),
    Kind("webp50", "WebP q50", ("resized", "edited")),
    Kind("png", "PNG", ("resized", "edited")),
    Kind("bright15", "brightness +15 %", ("resized", "edited")),
    Kind("contrast-15", "contrast -15 %", ("resized", "edited")),
    Kind("blur", "blur (Gaussian r 1.5)", ("resized", "edited")),
    Kind("grey", "greyscale", ("resized", "edited")),
    Kind("stretch15", "stretched 15 % horizontally", ("resized",)),
    Kind("watermark", "text watermark", ("edited",)),
    Kind("crop5", "5 % cropped", ("cropped",)),
    Kind("logo", "logo covering ~10 %", ("edited",)),
    Kind("crop10", "10 % cropped", ("cropped",)),
    Kind("rot3", "rotated 3°", ("rotated",)),
    Kind("border4", "white border 4 % each side", ("bordered",)),
    Kind("crop20", "20 % cropped", ("cropped",)),
    Kind("mirror", "mirrored left-right", ("mirrored",)),
    Kind("rot90", "rotated 90°", ("rotated",)),
)
KIND_KEYS = tuple(k.key for k in KINDS)


@dataclass(frozen=True)
class Base:
    name: str
    source: str
    kind: str  # photo, tile, scene, catalogue
    #: the set of bases it must stay apart from although they look alike (for the negatives table)
    family: str
    window: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # fractions x0, y0, x1, y1
    coin: int = -1  # catalogue: the index of the coin cut out of `coins`


def _tiles(src: str, nx: int, ny: int) -> list[Base]:
    return [
        Base(f"{src}_t{j}{i}", src, "tile", f"tiles of {src}", (i / nx, j / ny, (i + 1) / nx, (j + 1) / ny))
        for j in range(ny)
        for i in range(nx)
    ]


def _scene_pair(src: str, width: float = 0.62, shift: float = 0.35) -> list[Base]:
    """Two framings of one scene: windows of ``width``, the second shifted by ``shift`` of a window."""
    x1 = shift * width
    family = f"scene pair {src}"
    return [
        Base(f"{src}_sA", src, "scene", family, (0.0, 0.0, width, 1.0)),
        Base(f"{src}_sB", src, "scene", family, (x1, 0.0, x1 + width, 1.0)),
    ]


def bases() -> list[Base]:
    """The full set (84 bases)."""
    b = [Base(s, s, "photo", "photos") for s in ("chelsea", "page", "text", "clock", "shepp_logan_phantom")]
    for src, nx, ny in (
        ("cell", 2, 1),
        ("coffee", 2, 1),
        ("hubble_deep_field", 4, 2),
        ("immunohistochemistry", 2, 2),
        ("moon", 2, 2),
        ("brick", 2, 2),
        ("grass", 2, 2),
        ("gravel", 2, 2),
        ("retina", 2, 2),
        ("flower", 2, 1),
    ):
        b += _tiles(src, nx, ny)
    for src in ("china", "camera", "rocket", "astronaut"):
        b += _scene_pair(src)
    b += [
        Base(f"motorcycle_{side}", f"motorcycle_{side}", "scene", "stereo pair motorcycle")
        for side in ("left", "right")
    ]
    b += [Base(f"coin{k:02d}", "coins", "catalogue", "catalogue", coin=k) for k in range(12)]
    b += [Base(s, s, "catalogue", "catalogue") for s in ("horse", "logo", "colorwheel")]
    b += [Base(f"flat_{g}_{v}", g, "flat", "flat graphics") for g in FLAT_GEOMETRIES for v in "ab"]
    assert set(PHOTO_NAMES) <= {x.source for x in b}, "every photo of example_project.photos is used"
    return b


#: the --quick subset (25 bases): every kind of base and of negative
QUICK = (
    "chelsea",
    "page",
    "clock",
    "coffee_t00",
    "coffee_t01",
    "hubble_deep_field_t00",
    "hubble_deep_field_t01",
    "moon_t00",
    "moon_t01",
    "gravel_t00",
    "gravel_t01",
    "china_sA",
    "china_sB",
    "motorcycle_left",
    "motorcycle_right",
    "coin00",
    "coin01",
    "coin02",
    "coin03",
    "horse",
    "logo",
    "flat_stripes_a",
    "flat_stripes_b",
    "flat_shapes_a",
    "flat_shapes_b",
)


# -- sources ------------------------------------------------------------------------------------


def _to_rgb(arr: np.ndarray) -> Image.Image:
    if arr.dtype == bool:
        arr = np.where(arr, 255, 0).astype(np.uint8)
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-9) * 255
        arr = a.astype(np.uint8)
    img = Image.fromarray(arr)
    if img.mode == "RGBA":  # composite on white
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


@functools.cache
def source(name: str) -> Image.Image:
    import skimage.data as sd

    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(name + ".jpg")).convert("RGB")
    if name in ("motorcycle_left", "motorcycle_right"):
        return _to_rgb(sd.stereo_motorcycle()[0 if name.endswith("left") else 1])
    return _to_rgb(getattr(sd, name)())


@functools.cache
def _coin_boxes() -> list[tuple[int, int, int, int]]:
    import scipy.ndimage as ndi
    import skimage.data as sd
    from skimage.filters import threshold_otsu
    from skimage.measure import label, regionprops

    a = sd.coins()
    lab = label(ndi.binary_fill_holes(a > threshold_otsu(a)))
    rp = sorted(regionprops(lab), key=lambda r: (-r.area, r.bbox))
    return [tuple(int(v) for v in r.bbox) for r in rp[1:13]]  # [0] is the merged top row


def _seed(name: str, salt: int) -> int:
    return zlib.crc32(f"{name}/{salt}".encode())


#: flat graphics: geometry -> how the "b" picture's geometry is the "a" one's (its colours differ)
FLAT_GEOMETRIES = {
    "stripes": "r90",
    "shapes": "mirror",
    "diagonal": "r90",
    "checks": "mirror",
    "rings": "zoom",
    "banner": "frame",
    "cross": "r90",
    "bars": "zoom",
}
#: (background, first, second colour) of the "a" and the "b" picture of each geometry, in turn
FLAT_PALETTES = (
    ((250, 250, 250), (200, 30, 30), (30, 110, 40)),
    ((30, 40, 150), (250, 220, 40), (0, 190, 210)),
    ((255, 240, 200), (120, 40, 150), (240, 120, 20)),
    ((20, 20, 20), (60, 200, 90), (230, 230, 230)),
)


def _flat_geometry(kind: str, w: int, h: int) -> Image.Image:
    """The geometry as a 3-level mask (0 background, 1 and 2 the two colours)."""
    img = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(img)
    if kind == "stripes":
        for k in range(5):
            d.rectangle((round((2 * k + 0.5) * w / 10), 0, round((2 * k + 1.5) * w / 10), h), fill=1 + k % 2)
    elif kind == "shapes":
        d.ellipse((w * 0.08, h * 0.2, w * 0.45, h * 0.75), fill=1)
        d.polygon([(w * 0.55, h * 0.85), (w * 0.92, h * 0.85), (w * 0.7, h * 0.15)], fill=2)
    elif kind == "diagonal":
        d.polygon([(0, 0), (w, 0), (0, h)], fill=1)
        d.ellipse((w * 0.55, h * 0.5, w * 0.85, h * 0.9), fill=2)
    elif kind == "checks":
        for i in range(4):
            for j in range(3):
                if (i + j) % 2 == 0 or (i == 3 and j == 0):
                    d.rectangle((i * w // 4, j * h // 3, (i + 1) * w // 4, (j + 1) * h // 3), fill=1 + (i == 3))
    elif kind == "rings":
        for k, f in enumerate((0.45, 0.33, 0.2, 0.08)):
            d.ellipse((w / 2 - f * h, h / 2 - f * h, w / 2 + f * h, h / 2 + f * h), fill=(1, 0, 2, 1)[k])
    elif kind == "banner":
        d.rectangle((0, h * 0.3, w, h * 0.7), fill=1)
        d.rectangle((w * 0.08, h * 0.38, w * 0.3, h * 0.62), fill=2)
    elif kind == "cross":
        d.rectangle((w * 0.4, h * 0.1, w * 0.55, h * 0.9), fill=1)
        d.rectangle((w * 0.15, h * 0.35, w * 0.85, h * 0.5), fill=2)
    else:  # bars: a bar chart
        for k, f in enumerate((0.5, 0.8, 0.35, 0.65)):
            d.rectangle((w * (0.1 + 0.2 * k), h * (0.9 - 0.8 * f), w * (0.25 + 0.2 * k), h * 0.9), fill=1 + k % 2)
    return img


def render_flat(base: Base, rng: random.Random) -> Image.Image:
    """A flat graphic: its geometry (the "b" one transformed as FLAT_GEOMETRIES says) in its palette."""
    long_side = rng.choice([640, 720, 800])
    aspect = 3.0 if base.source == "banner" else rng.choice([1.0, 4 / 3])
    w, h = long_side, round(long_side / aspect)
    second = base.name.endswith("_b")
    change = FLAT_GEOMETRIES[base.source] if second else ""
    mask = _flat_geometry(base.source, *((h, w) if change == "r90" else (w, h)))
    if change == "r90":
        mask = mask.transpose(Image.Transpose.ROTATE_90)
    elif change == "mirror":
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    elif change == "zoom":
        mask = mask.crop((w // 10, h // 10, w - w // 10, h - h // 10)).resize((w, h), Image.Resampling.NEAREST)
    elif change == "frame":
        mask = ImageOps.expand(
            mask.resize((w * 9 // 10, h * 8 // 10), Image.Resampling.NEAREST), (w // 20, h // 10), fill=1
        )
    order = list(FLAT_GEOMETRIES).index(base.source)
    palette = FLAT_PALETTES[(2 * order + second) % len(FLAT_PALETTES)]
    lut = np.array(palette + ((0, 0, 0),) * 253, np.uint8)
    return Image.fromarray(lut[np.asarray(mask)])


def render_base(base: Base) -> Image.Image:
    rng = random.Random(_seed(base.name, 1))
    if base.kind == "flat":
        return render_flat(base, rng)
    src = source(base.source)
    sides = [640, 720, 800, 900, 1024]
    if base.kind == "catalogue":
        long_side = rng.choice(sides)
        if base.coin >= 0:  # cut out with its mask, pasted on white
            import scipy.ndimage as ndi
            from skimage.filters import threshold_otsu

            y0, x0, y1, x1 = _coin_boxes()[base.coin]
            a = np.asarray(src.convert("L"))
            m = 6
            y0, x0, y1, x1 = max(y0 - m, 0), max(x0 - m, 0), min(y1 + m, a.shape[0]), min(x1 + m, a.shape[1])
            patch = a[y0:y1, x0:x1]
            mask = ndi.binary_fill_holes(patch > threshold_otsu(a))
            parts, n = ndi.label(mask)
            if n > 1:  # the coin alone, not the edges of its neighbours in the box
                mask = parts == 1 + int(np.argmax(ndi.sum(mask, parts, range(1, n + 1))))
            mask = ndi.binary_dilation(mask, iterations=2)
            obj = Image.fromarray(np.where(mask, patch, 255).astype(np.uint8)).convert("RGB")
        else:
            obj = src
        # a 4:3 or square canvas, the object 55-70 % of its height, centred on white
        aspect = rng.choice([1.0, 4 / 3])
        w, h = long_side, round(long_side / aspect)
        frac = rng.uniform(0.55, 0.7)
        ow, oh = obj.size
        s = min(frac * h / oh, 0.85 * w / ow)
        obj = obj.resize((max(1, int(ow * s)), max(1, int(oh * s))), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (w, h), (255, 255, 255))
        canvas.paste(obj, ((w - obj.width) // 2, (h - obj.height) // 2))
        return canvas
    w, h = src.size
    x0, y0, x1, y1 = base.window
    img = src.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h)))
    cw, ch = img.size
    fitting = [s for s in sides if s <= max(640, 2.5 * max(cw, ch))]
    long_side = rng.choice(fitting)
    s = long_side / max(cw, ch)
    return img.resize((max(1, round(cw * s)), max(1, round(ch * s))), Image.Resampling.LANCZOS)


# -- copies -------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str = "JPEG", **params: Any) -> bytes:
    buf = io.BytesIO()
    if fmt in ("JPEG", "WEBP") and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    if fmt == "JPEG":
        params.setdefault("quality", 85)
    img.save(buf, fmt, **params)
    return buf.getvalue()


def _logo(w: int, h: int) -> Image.Image:
    """A site's stamp: a solid rounded badge with a disc and text, the same on every picture."""
    img = Image.new("RGB", (w, h), (20, 60, 160))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle(
        (2, 2, w - 3, h - 3), radius=max(2, h // 6), fill=(230, 60, 30), outline=(255, 255, 255), width=max(2, h // 30)
    )
    r = int(h * 0.3)
    d.ellipse((w // 6 - r // 2, h // 2 - r, w // 6 - r // 2 + 2 * r, h // 2 + r), fill=(255, 230, 0))
    font = ImageFont.load_default(size=max(8, int(h * 0.32)))
    d.text((int(w * 0.45), int(h * 0.3)), "SHOP", fill=(255, 255, 255), font=font)
    return img


def _crop(img: Image.Image, frac: float, rng: random.Random) -> Image.Image:
    """Remove ``frac`` of the width and of the height, 3/4 of it from one side (per axis), 1/4 from the other."""
    w, h = img.size
    rx, ry = frac * w, frac * h
    ax, ay = rng.choice([0.25, 0.75]), rng.choice([0.25, 0.75])
    left, top = round(rx * ax), round(ry * ay)
    return img.crop((left, top, left + round(w - rx), top + round(h - ry)))


def copies(img: Image.Image, name: str) -> dict[str, bytes]:
    """Every kind of copy of one base picture (decoded from its stored JPEG), as file bytes."""
    rng = random.Random(_seed(name, 2))
    w, h = img.size
    out: dict[str, bytes] = {}
    out["resized50"] = encode(img.resize((w // 2, h // 2), Image.Resampling.LANCZOS))
    t = img.copy()
    t.thumbnail((300, 300), Image.Resampling.LANCZOS)
    out["thumb300"] = encode(t)
    out["jpeg30"] = encode(img, quality=30)
    out["webp50"] = encode(img, "WEBP", quality=50)
    out["png"] = encode(img, "PNG")
    out["bright15"] = encode(ImageEnhance.Brightness(img).enhance(1.15))
    out["contrast-15"] = encode(ImageEnhance.Contrast(img).enhance(0.85))
    out["blur"] = encode(img.filter(ImageFilter.GaussianBlur(1.5)))
    out["grey"] = encode(img.convert("L"))
    out["stretch15"] = encode(img.resize((round(w * 1.15), h), Image.Resampling.LANCZOS))
    # a text watermark: one line across the lower part, white with a dark outline
    wm = img.copy()
    d = ImageDraw.Draw(wm)
    fs = max(10, h // 10)
    font = ImageFont.load_default(size=fs)
    text = "(c) example-photos.com"
    tw = d.textlength(text, font=font)
    d.text(
        ((w - tw) / 2, h * 0.78),
        text,
        fill=(255, 255, 255),
        font=font,
        stroke_width=max(1, fs // 12),
        stroke_fill=(0, 0, 0),
    )
    out["watermark"] = encode(wm)
    out["crop5"] = encode(_crop(img, 0.05, rng))
    lg = img.copy()
    lw, lh = round(w * 0.38), round(h * 0.263)  # 0.38 x 0.263 = 10 % of the area, bottom right
    lg.paste(_logo(lw, lh), (w - lw - round(w * 0.02), h - lh - round(h * 0.02)))
    out["logo"] = encode(lg)
    out["crop10"] = encode(_crop(img, 0.10, rng))
    deg = rng.choice([-3.0, 3.0])  # same frame, white corners
    out["rot3"] = encode(img.rotate(deg, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=(255, 255, 255)))
    bw, bh = round(w * 0.04), round(h * 0.04)
    bordered = Image.new("RGB", (w + 2 * bw, h + 2 * bh), (255, 255, 255))
    bordered.paste(img, (bw, bh))
    out["border4"] = encode(bordered)
    out["crop20"] = encode(_crop(img, 0.20, rng))
    out["mirror"] = encode(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    out["rot90"] = encode(img.transpose(rng.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270])))
    assert tuple(out) == KIND_KEYS
    return out


# -- building and caching -----------------------------------------------------------------------


def stamp() -> dict[str, str]:
    """What the bytes depend on: a cached base built under another stamp is built again."""
    from importlib.metadata import version

    from PIL import features

    return {
        "version": str(VERSION),
        "builder": hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12],
        "pillow": version("pillow"),
        "libjpeg": str(features.version("jpg")),
        "libwebp": str(features.version("webp")),
        "scikit-image": version("scikit-image"),
        "scikit-learn": version("scikit-learn"),
    }


def _ext(blob: bytes) -> str:
    return {b"\x89P": "png", b"RI": "webp"}.get(blob[:2], "jpg")


def build_base(base: Base, want: dict[str, str]) -> list[dict[str, Any]]:
    """Write one base's original and copies under DATA/<name>/ (unless cached); their records."""
    folder = DATA / base.name
    done = folder / "images.json"
    if done.exists():
        cached = json.loads(done.read_text())
        if cached.get("stamp") == want and all((DATA / r["file"]).exists() for r in cached["images"]):
            return cached["images"]
    folder.mkdir(parents=True, exist_ok=True)
    data = encode(render_base(base))
    blobs = {"original": data, **copies(Image.open(io.BytesIO(data)).convert("RGB"), base.name)}
    records = []
    for kind, blob in blobs.items():
        path = folder / f"{kind}.{_ext(blob)}"
        path.write_bytes(blob)
        records.append(
            {
                "file": str(path.relative_to(DATA)),
                "base": base.name,
                "kind": kind,
                "base_kind": base.kind,
                "family": base.family,
                "source": base.source,
                "bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest(),
            }
        )
    done.write_text(json.dumps({"stamp": want, "base": asdict(base), "images": records}, indent=1))
    return records


def _build_one(args: tuple[Base, dict[str, str]]) -> list[dict[str, Any]]:
    return build_base(*args)


def build(chosen: list[Base], jobs: int = 2) -> list[dict[str, Any]]:
    """The records of every image of the chosen bases (building what is not cached), in base order."""
    want = stamp()
    DATA.mkdir(parents=True, exist_ok=True)
    todo = [(b, want) for b in chosen]
    if jobs > 1 and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(jobs) as pool:
            parts = pool.map(_build_one, todo, chunksize=1)
    else:
        parts = [_build_one(t) for t in todo]
    return [r for part in parts for r in part]


def choose(quick: bool) -> list[Base]:
    every = bases()
    if not quick:
        return every
    by_name = {b.name: b for b in every}
    return [by_name[n] for n in QUICK]
