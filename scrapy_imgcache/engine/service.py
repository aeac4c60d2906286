"""The cache's per-image work, behind one small interface, wherever it runs.

:class:`CacheService` does everything the cache does for one image request but what needs
the crawl's objects (the request, the item, the user's ``file_path``/``thumb_path`` hooks):
the URL lookup and the check of the bytes it serves, the exact-copy lookup, decoding and
hashing, the near-duplicate search and decision, the row and blob writes, the ``IMAGES_STORE``
file and the thumbnails. The crawl process runs it in worker processes
(:mod:`scrapy_imgcache.engine.client`), or in its own threads where those cannot start.
Everything here blocks: it runs in a worker's threads or in an executor thread.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..hashing import md5_hex
from ..ingest import Ingestor, Outcome, record_urls
from ..store import open_store
from ..store.blobs import BlobStore, open_blob_store
from ..view import ScrapyConverter, place_file, thumbnails

if TYPE_CHECKING:
    from ..config import ImgCacheConfig
    from ..store.base import Entry, Store

#: thumbnails' size by id (``IMAGES_THUMBS``)
ThumbSizes = Mapping[str, tuple[int, int]]


@dataclass(frozen=True)
class ViewSpec:
    """An ``IMAGES_STORE`` a worker can write: its URI and its fsspec options."""

    uri: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Placement:
    """Where one image goes beyond the cache: ``path`` in the view ``view`` (its key in the
    service's views), and thumbnails ``thumbs`` (id -> path, in the view; without a view,
    beside the cache's blobs). ``refresh``: the bytes may differ from what is there (a
    download); else an existing file is taken as current (a cache hit)."""

    view: str | None = None
    path: str | None = None
    thumbs: Mapping[str, str] = field(default_factory=dict)
    sizes: ThumbSizes = field(default_factory=dict)
    refresh: bool = False
    #: the extension ``path`` was made with, guessed from the bytes before they were stored:
    #: nothing is placed when the stored image's differs (the crawl asks again, with its path)
    extension: str | None = None
    #: ``IMAGES_MIN_WIDTH``/``HEIGHT``: a smaller image is cached but not placed (it fails)
    min_size: tuple[int, int] = (0, 0)
    #: ``path`` lacks its extension: the stored image's is added (the pipeline's own file_path())
    stem: bool = False


@dataclass(frozen=True)
class Download:
    """A downloaded image's particulars (its bytes travel beside, not pickled)."""

    url: str
    client_name: str
    etag: str | None = None
    last_modified: str | None = None
    #: the URLs it was asked for before redirects brought it here (recorded too)
    also: Sequence[str] = ()
    on_similar: str | None = None
    placement: Placement | None = None


@dataclass(frozen=True)
class Stored:
    """What became of a download: the outcome, the bytes' MD5, its thumbnails' paths."""

    outcome: Outcome
    checksum: str
    thumbs: Mapping[str, str] = field(default_factory=dict)
    #: False: the placement asked for was not made (see :attr:`Placement.extension`)
    placed: bool = True


@dataclass(frozen=True)
class Found:
    """What the cache has for a URL: its entry, whether it is fresh (answered without the
    network), the bytes when asked for, their MD5, and what a placement made."""

    entry: Entry
    fresh: bool
    body: bytes | None = None
    checksum: str | None = None
    #: fresh, but the bytes are gone or no longer match their hash: to be fetched again
    damaged: bool = False
    thumbs: Mapping[str, str] = field(default_factory=dict)


class ProcessLock:
    """A lock for the threads of every process that opens ``path`` (flock: one open file per
    process, a thread lock within it). Decisions of one crawl's workers take it, so two
    near-copies arriving at once in different workers still dedupe (one stored, one recorded
    against it), as the per-crawler lock made them in one process."""

    def __init__(self, path: str | None) -> None:
        self._threads = threading.Lock()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600) if path else None

    def __enter__(self) -> None:
        self._threads.acquire()
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                self._threads.release()
                raise

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class CacheService:
    """The per-image work over one store (see the module's docstring)."""

    def __init__(
        self,
        store: Store,
        config: ImgCacheConfig,
        views: Mapping[str, BlobStore] | None = None,
        decide: ProcessLock | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.views = dict(views or {})
        self.ingestor = Ingestor(store, replace(config, hash_processes=0), decide=decide)

    @classmethod
    def open(cls, config: ImgCacheConfig, views: Mapping[str, ViewSpec], lock_path: str | None) -> CacheService:
        """The service of a worker process: its own store, views and the crawl's decision lock."""
        opened = {key: open_blob_store(v.uri, v.options, create=True, durable=False) for key, v in views.items()}
        return cls(open_store(config), config, opened, ProcessLock(lock_path))

    def close(self) -> None:
        self.store.close()

    # -- the operations (each one request of the crawl) -------------------------------------

    def store_download(self, body: bytes, download: Download) -> Stored:
        """Dedupe and record a download (a typed InvalidImage for bad bytes, StoreError when
        the store fails), record its earlier URLs, place it and its thumbnails."""
        outcome = self.ingestor.ingest(
            body,
            url=download.url,
            client_name=download.client_name,
            etag=download.etag,
            last_modified=download.last_modified,
            on_similar=download.on_similar,
        )
        record_urls(self.store, outcome.entry, download.also, download.client_name, known=download.url)
        if outcome.duplicate == "similar" and not outcome.stored:
            # skipped: the result describes the copy kept (path, size, hashes), so its checksum,
            # IMAGES_STORE file and thumbnails come from that copy's bytes too (the downloaded
            # ones when the cache cannot read them)
            body = self.store.get_bytes(outcome.entry.content_hash, outcome.entry.bucket) or body
        thumbs = self._place(download.placement, body, outcome.entry)
        return Stored(outcome, md5_hex(body), thumbs or {}, thumbs is not None)

    def answer(
        self, url: str, fresh_since: datetime, client_name: str, body: bool, placement: Placement | None = None
    ) -> Found | None:
        """What the cache has for ``url``; a fresh one's bytes are read (and checked against
        their hash), their MD5 computed, sent back when ``body``, placed by ``placement``."""
        store, bucket = self.store, self.config.bucket
        found = store.answer(url, bucket=bucket, client_name=client_name, fresh_since=fresh_since)
        if found is None:
            return None
        if found.damaged or found.body is None:
            return Found(found.entry, fresh=False, damaged=found.damaged)
        thumbs = self._place(placement, found.body, found.entry) or {}
        return Found(found.entry, True, found.body if body else None, md5_hex(found.body), thumbs=thumbs)

    def place(self, entry: Entry, placement: Placement) -> Found:
        """A cache hit's ``IMAGES_STORE`` file and thumbnails (its bytes read here again)."""
        data = self.store.get_bytes(entry.content_hash, entry.bucket)
        if data is None:
            return Found(entry, fresh=False, damaged=True)
        return Found(entry, True, None, md5_hex(data), thumbs=self._place(placement, data, entry) or {})

    def refresh(self, entry: Entry, urls: Sequence[str], client_name: str, body: bool) -> Found:
        """A 304 confirmed ``entry`` (its validators possibly new): the URLs still show this
        image; note when we saw them, and read its bytes."""
        record_urls(self.store, entry, urls, client_name, known="")
        data = self.store.get_bytes(entry.content_hash, entry.bucket)
        if data is None:
            return Found(entry, fresh=False, damaged=True)
        return Found(entry, True, data if body else None, md5_hex(data))

    def record_urls(self, entry: Entry, urls: Sequence[str], client_name: str, known: str) -> None:
        record_urls(self.store, entry, urls, client_name, known=known)

    # -- IMAGES_STORE and thumbnails --------------------------------------------------------

    def _place(self, placement: Placement | None, body: bytes, entry: Entry) -> dict[str, str] | None:
        """The thumbnails' paths; None when the placement was not made (see :class:`Placement`)."""
        if placement is None:
            return {}
        if placement.extension is not None and not (entry.path or "").endswith(placement.extension):
            return None
        width, height = placement.min_size
        if (entry.width or 0) < width or (entry.height or 0) < height:
            return {}
        view = self.views[placement.view] if placement.view is not None else None
        if view is not None and placement.path is not None:
            path = placement.path + _extension(entry.path) if placement.stem else placement.path
            place_file(view, self.store, path, body, entry, placement.refresh)
        if not placement.sizes:
            return {}
        wanted = thumb_targets(placement, view, self.store, entry)
        missing = {t: w for t, w in wanted.items() if placement.refresh or not w[0].exists(w[1])}
        if missing:
            render_thumbs(body, {t: (target, path, placement.sizes[t]) for t, (target, path) in missing.items()})
        return {t: path for t, (_, path) in wanted.items()}


def _extension(path: str | None) -> str:
    """A blob key's extension (``.jpg``), or nothing."""
    name = (path or "").rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[1] if "." in name else ""


def thumb_targets(
    placement: Placement, view: BlobStore | None, store: Store, entry: Entry
) -> dict[str, tuple[BlobStore, str]]:
    """Where each thumbnail goes: the view's ``thumb_path()``, else beside the cache's blobs,
    once per content (``thumbs/<id>/<hash[:2]>/<hash>.jpg``)."""
    if view is not None:
        return {t: (view, path) for t, path in placement.thumbs.items()}
    blobs, h = store.blobs, entry.content_hash
    if blobs is None:
        return {}
    return {t: (blobs, f"thumbs/{t}/{h[:2]}/{h}.jpg") for t in placement.sizes}


def render_thumbs(body: bytes, missing: Mapping[str, tuple[BlobStore, str, tuple[int, int]]]) -> None:
    """Thumbnails as Scrapy's ImagesPipeline.convert_image makes them (JPEG, RGB, on white)."""
    for _thumb_id, (target, path, data) in thumbnails(body, missing, ScrapyConverter()):
        target.replace(path, data)
