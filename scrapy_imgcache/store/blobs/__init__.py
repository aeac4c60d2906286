"""Blob storage: the bytes of each distinct image, once, under its content hash; and the
file trees (``IMAGES_STORE``) the pipeline writes beside the cache.

- ``base``: the :class:`BlobStore` interface, the keys, the probe every store runs
- ``local``: files under a folder (:class:`LocalBlobStore`)
- ``objects``: object storage and FTP through fsspec (:class:`FsspecBlobStore`), and the
  options Scrapy's settings give it (:func:`storage_options`)
- ``ownership``: a blob store serves one cache (:func:`claim`)

Imports go one way: the siblings import ``base``; this module imports them all. No
object-storage library is imported until an object store is opened.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .base import OWNER_KEY, TEMP_PREFIX, BlobStore, blob_key, hash_of_key, is_image_blob, is_temporary
from .local import LocalBlobStore
from .objects import FsspecBlobStore, storage_options
from .ownership import claim

__all__ = [
    "OWNER_KEY",
    "TEMP_PREFIX",
    "BlobStore",
    "FsspecBlobStore",
    "LocalBlobStore",
    "blob_key",
    "claim",
    "hash_of_key",
    "is_image_blob",
    "is_temporary",
    "open_blob_store",
    "storage_options",
]


def open_blob_store(
    location: str | os.PathLike[str],
    options: Mapping[str, Any] | None = None,
    create: bool = True,
    durable: bool = True,
) -> BlobStore:
    """A folder path (or ``file://``) gives local files; any other URL scheme goes to fsspec.
    ``create=False``: a local folder that does not exist is an error; ``durable``: see
    :class:`LocalBlobStore` (object stores are durable once a PUT returns)."""
    text = os.fspath(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" not in text:
        return LocalBlobStore(text, create, durable)
    return FsspecBlobStore(text, **(options or {}))
