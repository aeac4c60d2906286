"""``scrapy imgcache-gc``: give back space the cache no longer needs, and repair rows without bytes.

Three kinds of leftovers, handled in this order: rows whose bytes were deleted by hand
(reported first: they are damage, not garbage), images no URL has been seen at for
--older-than days, and blobs no row points at (what an interrupted write or a deletion
leaves). Blobs younger than IMGCACHE_GC_GRACE are kept, because a writer puts the bytes
before the row that points at them.
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import TYPE_CHECKING

from scrapy.exceptions import UsageError

from . import EXIT_OK, ImgCacheCommand, human_size

if TYPE_CHECKING:
    from ..store import Entry, SqlStore


class Command(ImgCacheCommand):
    needs_database = True

    def syntax(self) -> str:
        return "[--dry-run] [--older-than DAYS]"

    def short_desc(self) -> str:
        return "Remove orphan blobs, rows whose bytes are missing, and old entries"

    def long_desc(self) -> str:
        return (
            "Remove the rows whose image bytes are missing (listed first), the images no URL was "
            "seen at for --older-than DAYS (only when given), and the blobs no row references that "
            "are older than IMGCACHE_GC_GRACE seconds; then say what was removed and the bytes freed. "
            "With --dry-run nothing is removed."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
        parser.add_argument(
            "--older-than",
            metavar="DAYS",
            type=float,
            default=None,
            help="also remove images no URL was seen at for DAYS days, in every bucket (default keep them)",
        )

    def execute(self, args: list[str], opts: argparse.Namespace) -> int:
        from ..store import utcnow

        if args:
            raise UsageError(f"unexpected argument(s): {' '.join(args)}", print_help=False)
        if opts.older_than is not None and not opts.older_than >= 0:
            raise UsageError("--older-than: a number of days of at least 0 is expected", print_help=False)
        config = self.config()
        store: SqlStore = self.open_store(config)  # type: ignore[assignment]
        verb = "Would remove" if opts.dry_run else "Removed"
        freed = 0
        try:
            missing = store.missing_blobs()
            if missing:
                print(f"{len(missing)} row(s) whose bytes are missing:")
                for entry in missing:
                    print(f"  bucket {entry.bucket!r} {entry.content_hash} ({entry.path}), last seen at {entry.url}")
            _remove(store, missing, opts.dry_run)
            print(f"{verb} {len(missing)} row(s) whose bytes are missing.")

            if opts.older_than is not None:
                cutoff = utcnow() - timedelta(days=opts.older_than)
                expired = store.expired(cutoff)
                size = _remove(store, expired, opts.dry_run)
                freed += size
                print(
                    f"{verb} {len(expired)} image(s) not seen since {cutoff:%Y-%m-%d %H:%M} UTC ({human_size(size)})."
                )

            orphans = store.orphan_blobs(config.gc_grace)
            size = sum(s for _, s in orphans)
            if not opts.dry_run:
                size = sum(s for key, s in orphans if store.remove_blob(key))
            freed += size
            print(
                f"{verb} {len(orphans)} blob(s) no row references, older than {config.gc_grace:g} s "
                f"({human_size(size)})."
            )
        finally:
            store.close()
        print(f"{'Would free' if opts.dry_run else 'Freed'} {human_size(freed)} ({freed} bytes).")
        return EXIT_OK


def _remove(store: SqlStore, entries: list[Entry], dry_run: bool) -> int:
    """Delete these images; the bytes actually freed (a blob shared with another bucket stays)."""
    freed = 0
    for entry in entries:
        key = entry.path or ""
        present = store.blobs.exists(key)
        if dry_run:
            freed += entry.file_size_bytes if present else 0
            continue
        if store.delete(entry.content_hash, entry.bucket) and present and not store.blobs.exists(key):
            freed += entry.file_size_bytes
    return freed
