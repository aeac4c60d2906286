"""The blob store interface: what the cache asks of the place its bytes live, and the keys
they live under. The implementations are its siblings: ``local`` (files under a folder),
``objects`` (object storage and FTP through fsspec); ``ownership`` claims a store for one
cache; ``open_blob_store`` (in the package) picks one for a location.

Keys are paths like ``ab/cd/abcd…ef.jpg`` derived from the content hash, so the same bytes
always land at the same key and "already exists" is success (as in git's object store).

A store that fails (a full disk, refused credentials, an FTP server gone) raises
:class:`~scrapy_imgcache.errors.StoreError`, so ``IMGCACHE_ON_STORE_ERROR`` decides.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Protocol

from ...errors import StoreError

#: the marker naming the cache a blob store belongs to (written on first use)
OWNER_KEY = ".imgcache-owner"
#: the prefix of a local write's temporary file (left behind only by a crash)
TEMP_PREFIX = ".tmp-"


def blob_key(content_hash: str, extension: str = "") -> str:
    return f"{content_hash[:2]}/{content_hash[2:4]}/{content_hash}{extension}"


def hash_of_key(key: str) -> str:
    """The content hash a key was made from (its file name without extension)."""
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


class BlobStore(Protocol):
    """Where files live. Implementations are blocking and thread-safe."""

    def read_marker(self, key: str) -> bytes | None:
        """A small file the store keeps for itself (not a blob), or None."""
        ...

    def create_marker(self, key: str, data: bytes) -> bool:
        """Write a marker unless one is there already; True when this call wrote it."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Store content-addressed bytes: a key already there holds them already."""
        ...

    def replace(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` whatever is there (atomically where the store allows)."""
        ...

    def other_markers(self, key: str, below: bool) -> list[tuple[str, bytes | None]]:
        """Markers named ``key`` in the folders above this store's and, with ``below`` (a
        listing of everything), under it: (where, contents)."""
        ...

    def hold(self, key: str, data: bytes) -> contextlib.AbstractContextManager[None]:
        """:meth:`put`, and keep the blob from :meth:`remove_if` until the block ends (while
        the row that records it is written)."""
        ...

    def remove_if(self, key: str, unused: Callable[[], bool]) -> bool:
        """Delete ``key`` when ``unused()`` says nothing needs it, never one a :meth:`hold`
        keeps; True when it was deleted."""
        ...

    def copy_from(self, source: BlobStore, source_key: str, key: str) -> bool:
        """Make ``key`` a copy of what ``source`` holds at ``source_key`` without moving the
        bytes through here (a copy-on-write clone, a server-side copy); False when that is
        not possible. Never a link: what is written here may be changed without changing the
        source."""
        ...

    def get(self, key: str) -> bytes | None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> bool: ...
    def iter_keys(self) -> Iterator[tuple[str, float, int]]:
        """Every (key, modification time, size) held, markers aside."""
        ...

    def describe(self, key: str) -> str:
        """Where a key is, for people (a path or URL)."""
        ...

    def probe(self) -> None:
        """Write, read and delete a probe file: a StoreError now, in one line, rather than
        with every image later."""
        ...


def is_temporary(key: str) -> bool:
    """A local write's temporary file, which only an interrupted write leaves behind."""
    return key.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)


def is_image_blob(key: str) -> bool:
    """A key of :func:`blob_key`'s shape (``ab/cd/abcd….ext``), named by its bytes' hash
    (thumbnails, also named by a hash, are not: theirs is the image's)."""
    parts = key.split("/")
    chash = hash_of_key(key)
    return len(parts) == 3 and parts[0] == chash[:2] and parts[1] == chash[2:4] and len(chash) == 64


def probe_store(store: BlobStore) -> None:
    """Write, read back and delete a probe file (what every store's :meth:`~BlobStore.probe` does)."""
    key = f".imgcache-probe-{uuid.uuid4().hex}"
    data = b"imgcache probe\n"
    store.replace(key, data)
    try:
        if store.get(key) != data:
            raise StoreError(f"{store.describe(key)} does not read back what was written")
    finally:
        store.delete(key)
