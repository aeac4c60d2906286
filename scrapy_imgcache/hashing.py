"""What identifies an image: its content hash, and the inspector that reads the rest from its bytes.

The content hash (BLAKE2b-256 of the raw bytes) is the storage key everywhere. The
:class:`Inspector` turns bytes into an :class:`ImageInfo` (format, size, perceptual hash) or a
typed :class:`~scrapy_imgcache.errors.InvalidImage`; the Pillow work itself is in
:mod:`scrapy_imgcache.imaging`, imported on first use, so that reading settings or listing
commands loads no imaging library.

Inspecting is CPU-bound and blocking: callers on the reactor run it in a thread.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

ALGORITHMS = ("phash", "dhash", "average_hash", "whash")
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 25_000_000  # Pillow's own bomb limit is ~89.5M


def md5_hex(data: bytes | memoryview) -> str:
    """MD5, the ``checksum`` Scrapy's FilesPipeline/ImagesPipeline put in their results."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def content_hash(data: bytes) -> str:
    """BLAKE2b-256 of the raw bytes, 64 lowercase hex digits (the imgcache storage key)."""
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def hamming(a: str, b: str) -> int:
    """Bits that differ between two 16-hex-digit hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class ImageInfo:
    """What one image's bytes are. ``flat`` images never count as near-duplicates."""

    content_hash: str
    format: str
    content_type: str
    extension: str
    width: int
    height: int
    size: int
    perceptual_hash: str
    algorithm: str
    flat: bool
    #: robust near-duplicate data (``IMGCACHE_SIMILARITY = "robust"``, see :mod:`.nearsig`): the
    #: verification signature, the extra hashes the index keeps, the extra hashes a search probes
    signature: bytes | None = None
    index_hashes: tuple[tuple[str, int], ...] = ()
    query_hashes: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Inspector:
    """Turns bytes into an :class:`ImageInfo`, or raises a typed :class:`InvalidImage`.

    Nothing trusts a Content-Type or a file name: the format comes from Pillow's parser over
    an allowlist of raster formats, and bombs are refused from their header. ``fast``
    decodes JPEGs at reduced scale (libjpeg's DCT scaling) before hashing: several times
    faster, at the cost of a few pHash bits (docs/hashing-accuracy.md), so it is opt-in.
    """

    limits: ImageLimits = ImageLimits()
    algorithm: str = "phash"
    fast: bool = False
    #: also compute the robust near-duplicate data (pHash only; see :mod:`.nearsig`)
    robust: bool = True

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown hash algorithm {self.algorithm!r}; use one of {ALGORITHMS}")

    def inspect(self, data: bytes, known_hash: str | None = None) -> ImageInfo:
        """``known_hash``: the :func:`content_hash` of ``data`` when the caller has it already."""
        from .imaging import inspect

        fields = inspect(self, data)
        return ImageInfo(content_hash=known_hash or content_hash(data), **fields)
