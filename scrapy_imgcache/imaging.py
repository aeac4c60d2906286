"""Image inspection with Pillow: what the bytes are, read from the bytes alone.

Nothing here trusts a Content-Type or a file name. The format, MIME type and size come from
Pillow's parser, restricted to an allowlist of raster formats so that plugins which run
external programs (EPS through Ghostscript) or parse non-web formats (PSD, PDF) are never
even tried. The pixel limit is checked on the header, before a single pixel is decoded, so
a decompression bomb costs nothing.

Everything here is CPU-bound and blocking: callers on the reactor run it in a thread.
"""

from __future__ import annotations

import io
import warnings
from typing import Any, Protocol

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import (
    EmptyImage,
    InvalidImage,
    NotAnImage,
    TooManyBytes,
    TooManyPixels,
    TruncatedImage,
    UnsupportedFormat,
    UnsupportedMode,
)


class Limits(Protocol):
    @property
    def max_bytes(self) -> int: ...
    @property
    def max_pixels(self) -> int: ...


class Inspection(Protocol):
    """What :func:`inspect` reads of a :class:`~scrapy_imgcache.hashing.Inspector`."""

    @property
    def limits(self) -> Limits: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def fast(self) -> bool: ...
    @property
    def robust(self) -> bool: ...


#: Pillow format name -> (MIME type, file extension). Only these are ever opened.
ALLOWED_FORMATS: dict[str, tuple[str, str]] = {
    "JPEG": ("image/jpeg", ".jpg"),
    "PNG": ("image/png", ".png"),
    "GIF": ("image/gif", ".gif"),
    "WEBP": ("image/webp", ".webp"),
    "BMP": ("image/bmp", ".bmp"),
    "TIFF": ("image/tiff", ".tif"),
}
if "AVIF" in Image.registered_extensions().values():  # Pillow >= 11.3 built with libavif
    ALLOWED_FORMATS["AVIF"] = ("image/avif", ".avif")

_PHASH_SIZE = 32  # pHash reduces to 32x32 before its DCT; draft decoding may stop above it
_FLAT_RANGE = 2  # grey levels; a 32x32 reduction spanning no more than this is "flat"


def inspect(inspector: Inspection, data: bytes) -> dict[str, Any]:
    """What :meth:`Inspector.inspect` does (see there): the fields of its ``ImageInfo`` but the
    content hash (the records live in :mod:`.hashing`, which imports this module on first use)."""
    size = len(data)
    limits = inspector.limits
    if size == 0:
        raise EmptyImage("empty body: zero bytes")
    if size > limits.max_bytes:
        raise TooManyBytes(f"{size} bytes is over the limit of {limits.max_bytes}")
    img = open_image(data, limits.max_pixels)
    fmt = img.format or ""
    mime, ext = ALLOWED_FORMATS[fmt]
    width, height = img.size
    if inspector.fast and fmt == "JPEG":  # (YCbCr: the same Y plane as "L", and the colours the
        # robust signature's colour check reads)
        img.draft("YCbCr" if inspector.robust else "L", (_PHASH_SIZE * 4, _PHASH_SIZE * 4))
    try:
        img.load()  # the first frame only: animated images are never iterated
    except Image.DecompressionBombError as exc:  # pragma: no cover - header check runs first
        raise TooManyPixels(str(exc)) from exc
    except Exception as exc:
        raise TruncatedImage(f"{fmt} image cannot be decoded: {exc}") from exc
    try:
        grey = greyscale(img)
        phash, flat = perceptual_hash(img, inspector.algorithm, grey)
    except InvalidImage:
        raise
    except Exception as exc:
        raise UnsupportedMode(f"{fmt} image in mode {img.mode} cannot be hashed: {exc}") from exc
    signature, index_hashes, query_hashes = _robust(img, grey, inspector) if not flat else (None, (), ())
    return {
        "format": fmt,
        "content_type": mime,
        "extension": ext,
        "width": width,
        "height": height,
        "size": size,
        "perceptual_hash": phash,
        "algorithm": inspector.algorithm,
        "flat": flat,
        "signature": signature,
        "index_hashes": index_hashes,
        "query_hashes": query_hashes,
    }


Hashes = tuple[tuple[str, int], ...]


def _robust(img: Image.Image, grey: Image.Image, inspector: Inspection) -> tuple[bytes | None, Hashes, Hashes]:
    """The robust near-duplicate data of a decoded image (nothing when it is not asked for, or
    when the image defeats it: the plain pHash still works for such an image). It starts from
    the greyscale image the pHash used (converting a large photo again cost ~2 ms), except
    where transparency is composited on white first."""
    if not inspector.robust or inspector.algorithm != "phash":
        return None, (), ()
    from . import nearsig

    orientation = nearsig.exif_orientation(img)
    try:
        if nearsig.has_transparency(img):
            index, query, signature = nearsig.compute(img)
        else:
            index, query, signature = nearsig.compute(grey, orientation=orientation)
    except Exception:  # noqa: BLE001 - an odd image loses only its robust search, never its place
        return None, (), ()
    return (
        _coloured(signature, img, orientation),
        tuple((k, int(v)) for k, v in index),
        tuple((k, int(v)) for k, v in query),
    )


def _coloured(signature: bytes, img: Image.Image, orientation: int) -> bytes:
    """The signature with the colour bytes of the same trimmed, upright frame appended (the
    greyscale signature alone when the image's colours cannot be read)."""
    from . import nearcolour, nearsig

    box = (signature[1] / 250, signature[2] / 250, signature[3] / 250, signature[4] / 250)
    try:
        colour = nearcolour.of_image(img, box, nearsig.EXIF_OPS.get(orientation, ()))
    except Exception:  # noqa: BLE001 - an odd mode loses only the colour check
        return signature
    return nearsig.with_colour(signature, colour)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header of an allowlisted format and refuse bombs before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooManyPixels(f"decompression bomb refused from its header: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise _not_an_image(data) from exc
    except Exception as exc:
        raise TruncatedImage(f"image header cannot be parsed: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise NotAnImage(f"image claims impossible dimensions {width}x{height}")
    if width * height > max_pixels:
        raise TooManyPixels(
            f"{img.format} image claims {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels}; refused before decoding"
        )
    return img


def _not_an_image(data: bytes) -> InvalidImage:
    """Say which refused format it was where Pillow can tell, without decoding it."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            fmt = other.format
    except Exception:  # noqa: BLE001 - any failure means "not an image we know"
        fmt = None
    if fmt:
        allowed = ", ".join(ALLOWED_FORMATS)
        return UnsupportedFormat(f"{fmt} is not an accepted image format (accepted: {allowed})")
    return NotAnImage("not an image: no accepted image format recognises these bytes")


def perceptual_hash(img: Image.Image, algorithm: str = "phash", grey: Image.Image | None = None) -> tuple[str, bool]:
    """The 16-hex-digit hash ``str(imagehash.<algorithm>(img))`` and whether ``img`` is flat
    (``grey``: ``greyscale(img)`` when the caller has it already).

    For pHash the 32x32 reduction is shared between the hash and the flatness test, and the
    string is identical to ``str(imagehash.phash(img))`` (see ``_phash_bits``).
    """
    grey = greyscale(img) if grey is None else grey
    small = grey.resize((_PHASH_SIZE, _PHASH_SIZE), imagehash.ANTIALIAS)
    pixels = np.asarray(small)
    value = _phash_bits(pixels) if algorithm == "phash" else str(getattr(imagehash, algorithm)(grey))
    flat = _fully_transparent(img) or int(pixels.max()) - int(pixels.min()) <= _FLAT_RANGE
    return value, flat


def greyscale(img: Image.Image) -> Image.Image:
    """``img.convert("L")``, as imagehash does it, for every mode Pillow opens.

    Pillow cannot convert a few modes to ``L`` directly: LAB (whose first channel is the
    lightness, on the same 0-255 scale) and the premultiplied ``La``. Anything else that fails
    raises, and :meth:`Inspector.inspect` refuses the image as :class:`UnsupportedMode`.
    """
    if img.mode == "L":
        return img
    if img.mode == "LAB":
        return img.getchannel(0)
    if img.mode == "La":
        return img.convert("LA").convert("L")
    return img.convert("L")


# pHash keeps the 8x8 low block of the 32x32 reduction's DCT-II, which is D @ P @ D.T with D
# the DCT's first 8 rows (at scipy's scale, nearsig.PHASH_DCT, which computes its window hashes
# the same way): two small matrix products. imagehash computes the whole 32x32 DCT with
# scipy.fftpack, whose import alone cost an engine worker ~0.7 s of CPU at its first image.
# The two differ by rounding only, ~1e-8 at most for 8-bit pixels (the coefficients are below
# 4 * 1024 * 255). A bit can only come out differently where a coefficient lies that close to
# the block's median: flat images, pure gradients, patterns. Within _PHASH_MARGIN of it (10,000
# times that bound), the hash is computed imagehash's way.
_PHASH_MARGIN = 1e-4


def _phash_bits(pixels: np.ndarray) -> str:
    from .nearsig import PHASH_DCT  # numpy only; robust mode imports it anyway

    low = PHASH_DCT @ pixels.astype(np.float64) @ PHASH_DCT.T
    median = np.median(low)
    if np.abs(low - median).min() <= _PHASH_MARGIN:
        return _phash_bits_as_imagehash(pixels)
    return str(imagehash.ImageHash(low > median))


def _phash_bits_as_imagehash(pixels: np.ndarray) -> str:
    """imagehash.phash's own steps, for the reductions whose bits rounding could decide."""
    import scipy.fftpack

    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:8, :8]
    return str(imagehash.ImageHash(low > np.median(low)))


def _fully_transparent(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return img.getchannel("A").getextrema()[1] == 0
    if img.mode == "P" and "transparency" in img.info:
        return img.convert("RGBA").getchannel("A").getextrema()[1] == 0
    return False


def thumbnail(data: bytes, size: int, max_pixels: int, lossless_alpha: bool = True) -> tuple[bytes, str] | None:
    """A picture of the image at most ``size`` pixels a side, upright (EXIF orientation), as
    (bytes, MIME type): JPEG, or PNG where it has transparency (``lossless_alpha``; WebP
    otherwise, which keeps it in a fraction of the bytes). None when it cannot be decoded.

    JPEGs are decoded at a reduced scale (``draft``: 1/2 to 1/8, ~5x faster for a large photo),
    so a thumbnail never costs a full decode of a big JPEG."""
    from PIL import ImageOps

    try:
        img = open_image(data, max_pixels)
        img.draft("RGB", (size, size))
        img = ImageOps.exif_transpose(img) or img
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        transparent = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode == "P" and "transparency" in img.info)
        out = greyscale(img).convert("RGB") if img.mode in ("LAB", "I", "I;16", "I;16B", "F") else img
        buf = io.BytesIO()
        if not transparent:
            out.convert("RGB").save(buf, "JPEG", quality=85)
            return buf.getvalue(), "image/jpeg"
        fmt, mime = ("PNG", "image/png") if lossless_alpha else ("WEBP", "image/webp")
        out.convert("RGBA").save(buf, fmt, **({"optimize": True} if fmt == "PNG" else {"quality": 85}))
        return buf.getvalue(), mime
    except Exception:  # noqa: BLE001 - an image that cannot be shown gets a placeholder
        return None
