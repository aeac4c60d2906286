"""Deciding what one fetched image is to the cache: new, an exact duplicate, or a near one.

One path for every way an image arrives: the pipeline's downloads, the image responses the
middleware caches for spiders without the pipeline, ``scrapy imgcache-import``'s files.
It speaks only the :class:`~scrapy_imgcache.store.base.Store` protocol, so a database and a
remote service apply the same policy. Blocking: run it in a thread.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .config import ImgCacheConfig
from .hashing import ImageInfo, Inspector, content_hash, md5_hex
from .store.base import Entry, NearQuery, Store
from .workers import hash_workers

if TYPE_CHECKING:
    from scrapy.http import Response


#: the near-duplicates of a new image looked at to choose the one it is recorded against
NEAR_LIMIT = 8


@dataclass(frozen=True)
class Outcome:
    """What happened to one image; becomes one entry of the item's results field."""

    entry: Entry
    created: bool
    duplicate: str | None = None  # "exact" | "similar" | None
    duplicate_of: str | None = None
    hamming_distance: int | None = None
    #: how a near-duplicate matched (``resized``, ``cropped``...; None: by its pHash alone)
    match: str | None = None
    stored: bool = True  # False: a near-duplicate not stored again (skip/drop)
    size: int = 0
    #: the bytes' MD5 (``checksum``), when ``ingest(checksum=True)`` had a worker compute it
    checksum: str | None = None
    #: the distance of the hash that found the near-duplicate (``hamming_distance`` is the pHashes')
    match_distance: int | None = None


class Ingestor:
    def __init__(
        self,
        store: Store,
        config: ImgCacheConfig,
        inspector: Inspector | None = None,
        decide: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.inspector = inspector or config.inspector()
        #: held while deciding what an image is (new, or a duplicate of which): a thread lock,
        #: or one shared by the worker processes of a crawl (engine.service.ProcessLock)
        self._decide = decide if decide is not None else threading.Lock()
        processes = config.hash_processes
        self.workers = hash_workers(processes, self.inspector) if processes > 0 else None

    def start(self) -> None:
        """Start the hashing workers now, so the first images do not wait for them (blocking)."""
        if self.workers is not None:
            self.workers.start()

    def ingest(
        self,
        data: bytes,
        *,
        url: str,
        client_name: str,
        lookup_time: datetime | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        filename: str | None = None,
        on_similar: str | None = None,
        checksum: bool = False,
    ) -> Outcome:
        """Inspect (raising a typed InvalidImage for bad bytes), dedupe and record ``data``.
        ``checksum``: a hashing worker that decodes the bytes also sends back their MD5
        (:attr:`Outcome.checksum`; None when no worker read them)."""
        bucket = self.config.bucket
        common: dict[str, Any] = {
            "url": url,
            "client_name": client_name,
            "bucket": bucket,
            "lookup_time": lookup_time,
            "etag": etag,
            "last_modified": last_modified,
        }
        chash = content_hash(data) if 0 < len(data) <= self.inspector.limits.max_bytes else None
        copy = self._exact_copy(data, chash, common)
        if copy is not None:
            return copy
        md5 = None
        if self.workers is not None and chash is not None and checksum:
            info, md5 = self.workers.inspect_with_checksum(data, chash)
        elif self.workers is not None and chash is not None:
            info = self.workers.inspect(data, chash)
        else:
            info = self.inspector.inspect(data, known_hash=chash)
        policy = on_similar or self.config.on_similar
        if policy == "annotate":
            # Whatever the decision (new, exact copy, annotated near-duplicate) these bytes are
            # kept, so their atomic fsync'd write runs here, in parallel with other images,
            # instead of inside the lock below (two fsyncs there capped a crawl at ~100
            # images/s); put() then finds them in place. Bytes still land before the row.
            self.store.put_bytes(data, info)
        with self._decide:  # decoding ran in parallel; check-then-store is one step per crawl
            outcome = self._record(data, info, policy, filename, common)
        return outcome if md5 is None else replace(outcome, checksum=md5)

    def _exact_copy(self, data: bytes, chash: str | None, common: dict[str, Any]) -> Outcome | None:
        """Bytes the bucket already holds: an exact duplicate, recorded without decoding them.

        They were inspected when first stored and their hashes are in the row, so decoding
        them again (most of an image's cost) would only recompute the same answers. Anything
        unusual (a row without its bytes, limits lowered since) takes the full path instead.
        """
        limits = self.inspector.limits
        if chash is None:
            return None
        entry = self.store.get_meta(chash, common["bucket"])
        if (
            entry is None
            or entry.width is None
            or entry.height is None
            or entry.width * entry.height > limits.max_pixels
            or not self.store.has_bytes(entry)
        ):
            return None
        recorded = self.store.record_url(chash, duplicate="exact", saved_bytes=len(data), **common)
        if recorded is None:  # deleted since get_meta
            return None
        return Outcome(recorded, False, duplicate="exact", duplicate_of=chash, stored=False, size=len(data))

    def _record(
        self, data: bytes, info: ImageInfo, policy: str, filename: str | None, common: dict[str, Any]
    ) -> Outcome:
        bucket = self.config.bucket
        if not info.flat:
            hits = self.store.near(NearQuery.of(info), self.config.similarity_threshold, bucket, limit=NEAR_LIMIT)
            near = matched(hits, policy)
            # the same bytes, stored since the exact-copy check by another thread or process,
            # are an exact copy (put() records them as one), not a near-duplicate
            if (
                near is not None
                and near.content_hash != info.content_hash
                and self.store.get_meta(info.content_hash, bucket) is None
            ):
                return self._near_duplicate(data, info, near, policy, filename, common)
        result = self.store.put(data, info=info, filename=filename, **common)
        return Outcome(
            result.entry,
            result.created,
            duplicate=None if result.created else "exact",
            duplicate_of=None if result.created else info.content_hash,
            stored=result.created,
            size=info.size,
        )

    def _near_duplicate(
        self, data: bytes, info: ImageInfo, near: Entry, policy: str, filename: str | None, common: dict[str, Any]
    ) -> Outcome:
        dist, how, found_at = near.hamming_distance, near.match, near.match_distance
        # skip and drop keep the copy with the most pixels: a larger original arriving after a
        # smaller re-encoded copy of it is stored (and later copies point at it), not skipped
        if policy == "annotate" or (info.width * info.height > pixels(near)):
            result = self.store.put(
                data, info=info, filename=filename, similar_to=near.content_hash, similar_distance=dist,
                similar_match=how, **common,
            )  # fmt: skip
            return Outcome(
                result.entry, result.created, "similar", near.content_hash, dist, how, True, info.size,
                match_distance=found_at,
            )  # fmt: skip
        # skip and drop: the bytes are not stored again; the URL points at the image we have
        entry = self.store.record_url(near.content_hash, duplicate="similar", saved_bytes=info.size, **common)
        return Outcome(
            entry or near, False, "similar", near.content_hash, dist, how, False, info.size, match_distance=found_at
        )


def pixels(entry: Entry) -> int:
    return (entry.width or 0) * (entry.height or 0)


def matched(hits: Sequence[Entry], policy: str) -> Entry | None:
    """The near-duplicate a new image is recorded against, among the verified ``hits`` (best
    first): the first that is not a near-duplicate itself (copies point at the original rather
    than at each other); under skip and drop, the one with the most pixels (what the new
    image's URL then points at), that one among equals."""
    if not hits:
        return None
    first = next((h for h in hits if h.similar_to is None), hits[0])
    if policy == "annotate":
        return first
    return max(hits, key=lambda h: (pixels(h), h is first))


def checksum(data: bytes) -> str:
    """MD5, the ``checksum`` Scrapy's FilesPipeline/ImagesPipeline put in their results."""
    return md5_hex(data)


def ingest_response(
    ingestor: Ingestor,
    response: Response,
    client_name: str,
    on_similar: str | None = None,
    also: Sequence[str] = (),
    checksum: bool = False,
) -> Outcome:
    """Store a downloaded image with its validators (blocking: run it in a thread).

    ``also``: the URLs it was asked for when redirects brought it from elsewhere (the
    request's ``redirect_urls`` and URL); the entry is recorded under each of them too, so a
    later crawl answers them from the cache without following the redirect again.
    """
    outcome = ingestor.ingest(
        response.body,
        url=response.url,
        client_name=client_name,
        etag=header(response, b"ETag"),
        last_modified=header(response, b"Last-Modified"),
        on_similar=on_similar,
        checksum=checksum,
    )
    record_urls(ingestor.store, outcome.entry, also, client_name, known=response.url)
    return outcome


def record_urls(store: Store, entry: Entry, urls: Sequence[str], client_name: str, known: str) -> None:
    """Record ``entry`` under each of ``urls`` (a redirect's earlier URLs) but ``known``, the
    URL it is recorded under already (blocking: run it in a thread)."""
    for url in dict.fromkeys(urls):
        if url != known:
            store.record_url(
                entry.content_hash,
                url=url,
                client_name=client_name,
                bucket=entry.bucket,
                etag=entry.etag,
                last_modified=entry.last_modified,
            )


def header(response: Response, name: bytes) -> str | None:
    value = response.headers.get(name)
    return value.decode("latin-1") if value else None
