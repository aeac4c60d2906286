"""``IMAGES_STORE`` as a view of the cache, and the thumbnails ImagesPipeline would make.

The cache stays the deduplicated source of truth; the ``IMAGES_STORE`` tree is where a
project that used ImagesPipeline expects its files: each image at ``file_path()``, its
thumbnails at ``thumb_path()``. Those files are the user's own, to edit or delete without
touching the cache: a copy-on-write clone of the cached blob where the file system offers
one (XFS, Btrfs), a server-side copy (one object store), else the bytes written, never a
hard link; local files are written atomically (a temporary file renamed into place), with
the mode a program's files get (0644 under umask 022). Everything here blocks: the pipeline
calls it in a thread.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .errors import ConfigError, StoreError
from .store.blobs import BlobStore, LocalBlobStore, open_blob_store, storage_options

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.http import Response

    from .store.base import Entry, Store


class ImagesStoreView:
    """The ``IMAGES_STORE`` tree, written through a blob store of its own."""

    def __init__(self, uri: str, target: BlobStore, options: Mapping[str, Any] | None = None) -> None:
        self.uri = uri
        self.target = target
        #: the fsspec options it was opened with (an engine worker opens it again with them)
        self.options = dict(options or {})

    @classmethod
    def open(cls, uri: str, settings: Mapping[str, Any], problem: Callable[[str], None]) -> ImagesStoreView | None:
        """The view of ``IMAGES_STORE=uri`` with Scrapy's ``AWS_*``/``GCS_*``/``FTP_*`` settings;
        a URI it cannot serve is reported to ``problem`` (one line naming the setting)."""
        try:
            options = storage_options(uri, settings, acl_setting="IMAGES_STORE")
            return cls(uri, open_blob_store(uri, options, create=True, durable=False), options)
        except (ConfigError, StoreError, ImportError, ValueError) as exc:
            problem(f"IMAGES_STORE={uri!r}: {exc}")
            return None

    def probe(self) -> None:
        """Write, read and delete a probe file, so a bad location or bad credentials stop the
        crawl at start, in one line, instead of failing every image."""
        self.target.probe()

    def place(self, path: str, body: bytes, entry: Entry | None, store: Store | None, refresh: bool) -> None:
        """Make ``path`` hold the image (see :func:`place_file`)."""
        place_file(self.target, store, path, body, entry, refresh)

    def exists(self, path: str) -> bool:
        return self.target.exists(path)

    def write(self, path: str, data: bytes) -> None:
        self.target.replace(path, data)


def place_file(
    view: BlobStore, store: Store | None, path: str, body: bytes, entry: Entry | None, refresh: bool
) -> None:
    """Make ``path`` hold the image: a clone or copy of the cache's blob where the two file
    systems allow, else the bytes written (atomically). ``refresh``: the bytes may differ from
    what is there (a download); otherwise an existing file is taken as current (a cache hit),
    unless it is a hard link an earlier version made to the cache's blob: then it becomes a copy."""
    if not refresh and (view.own_file(path) if isinstance(view, LocalBlobStore) else view.exists(path)):
        return
    source = store.blobs if store is not None else None
    if source is not None and entry is not None and entry.path and view.copy_from(source, entry.path, path):
        return
    view.replace(path, body)


class ThumbSource(Protocol):
    """What :class:`Thumbnailer` takes from a pipeline: ImagesPipeline's ``thumbs``, its
    ``thumb_path`` and ``convert_image`` (the project's own, when it overrides them), the
    ``IMAGES_STORE`` view and the cache's blob store."""

    thumbs: dict[str, tuple[int, int]]
    view: ImagesStoreView | None

    @property
    def cache_blobs(self) -> BlobStore | None: ...

    def thumb_path(
        self, request: Request, thumb_id: str, response: Response | None = None, info: Any = None, *, item: Any = None
    ) -> str: ...

    def convert_image(
        self, image: Any, size: tuple[int, int] | None = None, *, response_body: io.BytesIO
    ) -> tuple[Any, io.BytesIO]: ...


class Thumbnailer:
    """Thumbnails as ImagesPipeline makes them (the pipeline's own ``convert_image`` and
    ``thumb_path``): in ``IMAGES_STORE`` when it is set, else beside the cache's blobs, once
    per content (``thumbs/<name>/<hash[:2]>/<hash>.jpg``)."""

    def __init__(self, pipeline: ThumbSource) -> None:
        self.pipeline = pipeline

    def make(
        self,
        request: Request,
        response: Response | None,
        body: bytes,
        entry: Entry | None,
        item: Any,
        info: Any,
        refresh: bool,
    ) -> dict[str, str]:
        pipe = self.pipeline
        wanted: dict[str, tuple[BlobStore, str]] = {}
        for thumb_id in pipe.thumbs:
            if pipe.view is not None:
                path = pipe.thumb_path(request, thumb_id, response=response, info=info, item=item)
                wanted[thumb_id] = (pipe.view.target, path)
            else:
                blobs = pipe.cache_blobs
                if blobs is None or entry is None:
                    continue
                h = entry.content_hash
                wanted[thumb_id] = (blobs, f"thumbs/{thumb_id}/{h[:2]}/{h}.jpg")
        missing = {t: (target, path) for t, (target, path) in wanted.items() if refresh or not target.exists(path)}
        if missing:
            self._render(body, missing)
        return {t: path for t, (_, path) in wanted.items()}

    def _render(self, body: bytes, missing: dict[str, tuple[BlobStore, str]]) -> None:
        pipe = self.pipeline
        wanted = {t: (target, path, pipe.thumbs[t]) for t, (target, path) in missing.items()}
        for _thumb_id, (target, path, data) in thumbnails(body, wanted, pipe):
            target.replace(path, data)


def thumbnails(
    body: bytes, wanted: Mapping[str, tuple[BlobStore, str, tuple[int, int]]], converter: Any
) -> Iterator[tuple[str, tuple[BlobStore, str, bytes]]]:
    """Each wanted thumbnail (id -> where, size) made by ``converter.convert_image`` (the
    pipeline's own, or :class:`ScrapyConverter`), from the image upright (EXIF)."""
    from PIL import Image, ImageOps

    from .imaging import greyscale

    original = Image.open(io.BytesIO(body))
    image = ImageOps.exif_transpose(original) or original
    image.format = original.format  # the copy forgets it, and convert_image puts PNG/WebP on white by it
    for thumb_id, (target, path, size) in wanted.items():
        try:
            _thumb, buf = converter.convert_image(image, size, response_body=io.BytesIO(body))
        except (OSError, ValueError):  # a mode convert_image cannot take to RGB (LAB...): grey
            grey = greyscale(image).convert("RGB")
            _thumb, buf = converter.convert_image(grey, size, response_body=io.BytesIO(body))
        yield thumb_id, (target, path, buf.getvalue())


class ScrapyConverter:
    """ImagesPipeline's ``convert_image`` without a pipeline (it reads only ``self._Image``)."""

    def __init__(self) -> None:
        from PIL import Image
        from scrapy.pipelines.images import ImagesPipeline

        self._Image = Image
        self._convert = ImagesPipeline.convert_image

    def convert_image(self, image: Any, size: tuple[int, int], *, response_body: io.BytesIO) -> Any:
        return self._convert(self, image, size, response_body=response_body)  # type: ignore[arg-type]
