"""Test photographs: the same reproducible set the demo uses (see example_project/photos.py),
and the same photo in every pixel mode and file format Pillow writes."""

from __future__ import annotations

import io

from PIL import Image

from example_project.photos import *  # noqa: F401,F403
from example_project.photos import PHOTO_NAMES, distinct_images, distinct_jpegs, encode, near_duplicates  # noqa: F401

#: every pixel mode an image file can decode to
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "F")
FORMATS = ("PNG", "JPEG", "TIFF", "WEBP", "BMP", "GIF")


def in_mode(img: Image.Image, mode: str, transparent: bool = False) -> Image.Image:
    """``img`` converted to ``mode``; ``transparent`` gives a P image a transparent colour."""
    if mode == "PA":
        return img.convert("P").convert("PA")
    if mode in ("I;16", "I;16B"):
        return img.convert("L").convert("I").point(lambda v: v * 200).convert(mode)
    out = img.convert(mode)
    if transparent and mode == "P":
        out.info["transparency"] = 0
    return out


def encoded_in_mode(img: Image.Image, mode: str, fmt: str, transparent: bool = False) -> bytes | None:
    """The file bytes of ``img`` in ``mode`` written as ``fmt``, or None where Pillow cannot write it."""
    buf = io.BytesIO()
    try:
        in_mode(img, mode, transparent).save(buf, fmt)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return buf.getvalue()


def every_mode_and_format(img: Image.Image) -> dict[tuple[str, str], bytes]:
    """``img`` in each (mode, format) pair Pillow can write, with a transparent P image too."""
    out: dict[tuple[str, str], bytes] = {}
    for mode in MODES:
        for fmt in FORMATS:
            data = encoded_in_mode(img, mode, fmt)
            if data is not None:
                out[mode, fmt] = data
    for fmt in ("PNG", "GIF"):
        data = encoded_in_mode(img, "P", fmt, transparent=True)
        if data is not None:
            out["P+transparency", fmt] = data
    return out
