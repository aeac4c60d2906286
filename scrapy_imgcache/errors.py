"""Typed errors. Every refusal of input carries a short machine-readable ``reason``.

The reason doubles as the stat key suffix (``imgcache/invalid/<reason>``) and the
``error`` field of the server's JSON answers, so one name follows a bad image everywhere.
"""

from __future__ import annotations


class ImgCacheError(Exception):
    """Base class of every error this package raises on purpose."""


class InvalidImage(ImgCacheError):
    """The bytes are refused; nothing was stored."""

    reason = "invalid"
    http_status = 422

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyImage(InvalidImage):
    reason = "empty"


class NotAnImage(InvalidImage):
    reason = "not_an_image"
    http_status = 415


class UnsupportedFormat(InvalidImage):
    reason = "unsupported_format"
    http_status = 415


class UnsupportedMode(InvalidImage):
    """Decoded, but in a pixel mode that cannot be reduced to grey for hashing."""

    reason = "unsupported_mode"
    http_status = 415


class TruncatedImage(InvalidImage):
    reason = "truncated"


class TooManyBytes(InvalidImage):
    reason = "too_many_bytes"
    http_status = 413


class TooManyPixels(InvalidImage):
    """Over the pixel limit: refused from the header, before any decoding (bombs)."""

    reason = "too_many_pixels"
    http_status = 413


class ImageTooSmall(InvalidImage):
    """Below ``IMAGES_MIN_WIDTH``/``IMAGES_MIN_HEIGHT`` (as Scrapy's ImagesPipeline refuses it)."""

    reason = "too_small"


class StoreError(ImgCacheError):
    """The store cannot be reached or answered something unusable."""


class ConfigError(ImgCacheError):
    """A setting has a bad value; the message names the setting."""
