"""``scrapy imgcache-verify``: check that every blob still holds the bytes of its content hash.

A blob is stored under the BLAKE2b of its bytes, and a cache hit serves it as that image: a
blob changed on disk (edited through a hard link an earlier version placed in IMAGES_STORE,
a failing disk, a hand-made "fix") would be served as the original everywhere. A cache hit
re-hashes what it reads and refuses a mismatch; this command checks the whole cache (or a
sample, or a bucket) ahead of that, and finds blobs still hard-linked from elsewhere.
"""

from __future__ import annotations

import argparse
import os
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scrapy.exceptions import UsageError

from . import EXIT_FAILED, EXIT_OK, ImgCacheCommand, human_size, positive_int, progress

if TYPE_CHECKING:
    from ..store.sql import SqlStore


@dataclass
class Findings:
    checked: int = 0
    checked_bytes: int = 0
    #: blobs whose bytes no longer match their hash
    damaged: list[str] = field(default_factory=list)
    #: blobs that are also another file's (hard links an earlier version made)
    linked: list[str] = field(default_factory=list)


class Command(ImgCacheCommand):
    needs_database = True

    def syntax(self) -> str:
        return "[--bucket NAME] [--sample N] [--repair]"

    def short_desc(self) -> str:
        return "Re-hash the cached images and report (or remove) those whose bytes changed"

    def long_desc(self) -> str:
        return (
            "Read every cached image (or a random --sample of them, or those of one --bucket) and "
            "check that its bytes still have the content hash they are stored under; report the "
            "ones that do not, and the ones still hard-linked from another file (an IMAGES_STORE "
            "placed by scrapy-imgcache 0.x, where editing that file changed the cache). With "
            "--repair, a damaged image's bytes and its rows are deleted, so the next crawl fetches "
            "it again, and linked files get bytes of their own. Exit code 3 when damage is left."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--bucket", metavar="NAME", default=None, help="only the images of this bucket")
        parser.add_argument("--sample", metavar="N", type=positive_int, default=None, help="only N images at random")
        parser.add_argument(
            "--repair",
            action="store_true",
            help="delete damaged images (bytes and rows, to be fetched again); give linked blobs their own file",
        )

    def execute(self, args: list[str], opts: argparse.Namespace) -> int:
        from ..store.sql import SqlStore

        if args:
            raise UsageError(f"unexpected argument(s): {' '.join(args)}", print_help=False)
        config = self.config()
        if opts.bucket is not None:
            from . import bucket_of

            bucket_of(opts, config)  # checked: a usage error for a bad name
        store = self.open_store(config)
        try:
            assert isinstance(store, SqlStore)  # needs_database: never a remote service
            findings = verify(store, opts.bucket, opts.sample, opts.repair)
        finally:
            store.close()
        return report(findings, opts.repair)


def verify(store: SqlStore, bucket: str | None, sample: int | None, repair: bool) -> Findings:
    """Re-hash the chosen blobs; with ``repair``, remove the damaged and unshare the linked."""
    from ..store.blobs import is_image_blob

    blobs = store.blobs
    if bucket is not None:
        keys = sorted({e.path for e in store.images(bucket) if e.path})
    else:
        keys = [key for key, _mtime, _size in blobs.iter_keys() if is_image_blob(key)]
    if sample is not None and sample < len(keys):
        keys = random.sample(keys, sample)
    found = Findings()
    for key in progress(keys, len(keys), "verifying"):
        data = blobs.get(key)
        if data is None:  # deleted meanwhile (gc): nothing to check
            continue
        found.checked += 1
        found.checked_bytes += len(data)
        if not _matches(key, data):
            found.damaged.append(key)
            if repair:
                _remove_damaged(store, key)
        elif _linked(store, key):
            found.linked.append(key)
            if repair:
                blobs.replace(key, data)  # a new file: the other name keeps the old one
    return found


def _matches(key: str, data: bytes) -> bool:
    from ..hashing import content_hash
    from ..store.blobs import hash_of_key

    return content_hash(data) == hash_of_key(key)


def _linked(store: SqlStore, key: str) -> bool:
    from ..store.blobs import LocalBlobStore

    blobs = store.blobs
    return isinstance(blobs, LocalBlobStore) and os.stat(blobs.path(key)).st_nlink > 1


def _remove_damaged(store: SqlStore, key: str) -> None:
    """The damaged image's rows in every bucket, and its bytes: it is fetched again when next seen."""
    from ..store.blobs import hash_of_key

    chash = hash_of_key(key)
    for bucket in store.buckets():
        store.delete(chash, bucket)
    store.blobs.delete(key)  # (gone already when a delete above was the last row)


def report(found: Findings, repair: bool) -> int:
    for key in found.damaged:
        print(f"damaged: {key} does not hold the bytes of its hash{' (removed)' if repair else ''}")
    for key in found.linked:
        print(f"linked: {key} is also another file{' (now a file of its own)' if repair else ''}")
    print(f"Checked {found.checked} image(s) ({human_size(found.checked_bytes)}).")
    print(f"{len(found.damaged)} damaged{', removed: they are fetched again when next seen' if repair else ''}.")
    if found.linked:
        done = "; each has its own now" if repair else ""
        print(f"{len(found.linked)} shared with another file by a hard link{done}.")
    if found.damaged and not repair:
        print("Run with --repair to remove them (their URLs are then fetched again).")
        return EXIT_FAILED
    return EXIT_OK
