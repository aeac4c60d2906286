"""Real photographs for the demo and the tests, built reproducibly from scikit-image's sample data.

Distinct images are crops (with flips) of different photos; near-duplicates are the usual
ways the same photo reappears on the web: resized, recompressed, slightly cropped,
brightened. Everything is deterministic, so hashes are stable across runs and machines
with the same Pillow/libjpeg.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "hubble_deep_field", "immunohistochemistry")


@functools.cache
def photo(name: str) -> Image.Image:
    import skimage.data

    arr = getattr(skimage.data, name)()
    img = Image.fromarray(arr)
    return img.convert("RGB")


def encode(img: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        params.setdefault("quality", 90)
        img = img.convert("RGB")
    img.save(buf, fmt, **params)
    return buf.getvalue()


def distinct_images(n: int, size: tuple[int, int] = (320, 240)) -> list[Image.Image]:
    """``n`` visually distinct photos: crops of different regions of different photos."""
    out: list[Image.Image] = []
    variant = 0
    while len(out) < n:
        for name in PHOTO_NAMES:
            src = photo(name)
            w, h = src.size
            cw, ch = w // 2, h // 2
            quadrant = variant % 4
            x = (quadrant % 2) * (w - cw)
            y = (quadrant // 2) * (h - ch)
            img = src.crop((x, y, x + cw, y + ch)).resize(size, Image.Resampling.LANCZOS)
            if (variant // 4) % 2:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if (variant // 8) % 2:
                img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
            if (variant // 16) % 2:
                img = img.transpose(Image.Transpose.ROTATE_90).resize(size, Image.Resampling.LANCZOS)
            out.append(img)
            if len(out) == n:
                break
        variant += 1
    return out


def distinct_jpegs(n: int, size: tuple[int, int] = (320, 240)) -> list[bytes]:
    return [encode(img) for img in distinct_images(n, size)]


def near_duplicates(img: Image.Image) -> dict[str, bytes]:
    """The same photo as it reappears elsewhere: each is a few pHash bits from the original."""
    w, h = img.size
    return {
        "resized": encode(img.resize((w * 3 // 4, h * 3 // 4), Image.Resampling.LANCZOS)),
        "recompressed": encode(img, quality=55),
        "cropped": encode(img.crop((w // 100, h // 100, w - w // 100, h - h // 100))),
        "brightened": encode(ImageEnhance.Brightness(img).enhance(1.15)),
        "png": encode(img, "PNG"),
    }


def solid(color: tuple[int, ...], size: tuple[int, int] = (64, 64), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    return encode(Image.new(mode, size, color), fmt)


def noise_bytes(n: int = 4096, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def watermarked(img: Image.Image, text: str = "(c) imgcache demo") -> bytes:
    """A corner watermark, as image hosts add them."""
    marked = img.convert("RGB").copy()
    draw = ImageDraw.Draw(marked)
    w, h = marked.size
    draw.rectangle((w - w // 4, h - h // 12, w - 4, h - 4), fill=(255, 255, 255))
    draw.text((w - w // 4 + 4, h - h // 12 + 2), text, fill=(0, 0, 0))
    return encode(marked)


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A PNG whose header claims width x height pixels over one tiny IDAT: a bomb by its header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bar_chart(colours: tuple[tuple[int, int, int], ...], size: tuple[int, int] = (480, 360)) -> Image.Image:
    """A flat graphic (a diagram): four bars, in the second and third colours in turn, on the
    first. Turned a quarter, in other colours, it is a different picture of the same structure."""
    img = Image.new("RGB", size, colours[0])
    w, h = size
    draw = ImageDraw.Draw(img)
    for k, f in enumerate((0.5, 0.8, 0.35, 0.65)):
        draw.rectangle(
            (w * (0.1 + 0.2 * k), h * (0.9 - 0.8 * f), w * (0.25 + 0.2 * k), h * 0.9), fill=colours[1 + k % 2]
        )
    return img
