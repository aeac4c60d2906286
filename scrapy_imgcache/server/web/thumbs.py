"""Thumbnails for the web page: made once per content, kept, and served from then on.

The first view of an image decodes it (JPEGs at a reduced scale) and writes a small JPEG
(PNG where it has transparency) into the cache's own blob store at
``thumbs/web/<hash[:2]>/<hash>.<ext>``; every later view reads those few KiB. They are keyed
by content hash like the blobs, so ``imgcache-gc`` removes a thumbnail with the last image
that had its bytes. A store without blobs of its own (a ``RemoteStore``) keeps them in a
bounded in-memory cache instead.

Everything here blocks (Pillow, disk, the store): the web routes that call it are plain
``def`` routes, which FastAPI runs in its thread pool, never on the event loop's thread.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ...imaging import thumbnail
from ...store.base import Entry, Store

SIZE = 240
PREFIX = "thumbs/web"
EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png"}
MEMORY_BYTES = 64 * 1024 * 1024


class Thumbnails:
    def __init__(self, store: Store, size: int = SIZE, memory_bytes: int = MEMORY_BYTES) -> None:
        self.store = store
        self.size = size
        self.max_pixels = store.inspector.limits.max_pixels
        self._memory: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._memory_bytes = memory_bytes
        self._held = 0
        self._lock = threading.Lock()
        #: how many thumbnails this process made (decoded an image for): tests and metrics
        self.made = 0
        #: the thread that made the last one (tests: never the event loop's)
        self.last_maker: int | None = None

    def get(self, entry: Entry) -> tuple[bytes, str] | None:
        """The thumbnail of a cached image as (bytes, MIME type); made now if it is the first
        view; None when the image's bytes are gone or cannot be decoded."""
        found = self._read(entry.content_hash)
        if found is not None:
            return found
        data = self.store.get_bytes(entry.content_hash, entry.bucket)
        if data is None:
            return None
        made = thumbnail(data, self.size, self.max_pixels)
        if made is None:
            return None
        self.made += 1
        self.last_maker = threading.get_ident()
        self._write(entry.content_hash, *made)
        return made

    def _key(self, content_hash: str, mime: str) -> str:
        return f"{PREFIX}/{content_hash[:2]}/{content_hash}{EXTENSIONS[mime]}"

    def _read(self, content_hash: str) -> tuple[bytes, str] | None:
        blobs = self.store.blobs
        if blobs is None:
            with self._lock:
                if content_hash in self._memory:
                    self._memory.move_to_end(content_hash)
                    return self._memory[content_hash]
            return None
        for mime in EXTENSIONS:
            data = blobs.get(self._key(content_hash, mime))
            if data is not None:
                return data, mime
        return None

    def _write(self, content_hash: str, data: bytes, mime: str) -> None:
        blobs = self.store.blobs
        if blobs is not None:
            blobs.put(self._key(content_hash, mime), data)
            return
        with self._lock:
            if content_hash not in self._memory:
                self._memory[content_hash] = (data, mime)
                self._held += len(data)
            while self._held > self._memory_bytes and self._memory:
                _, (old, _mime) = self._memory.popitem(last=False)
                self._held -= len(old)
