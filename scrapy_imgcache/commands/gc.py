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

from scrapy.exceptions import UsageError

from . import EXIT_OK, ImgCacheCommand, human_size


class Command(ImgCacheCommand):
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
        from ..store.base import utcnow

        if args:
            raise UsageError(f"unexpected argument(s): {' '.join(args)}", print_help=False)
        if opts.older_than is not None and not opts.older_than >= 0:
            raise UsageError("--older-than: a number of days of at least 0 is expected", print_help=False)
        config = self.config()
        cutoff = None if opts.older_than is None else utcnow() - timedelta(days=opts.older_than)
        store = self.open_store(config)
        try:
            report = store.collect_garbage(grace_seconds=config.gc_grace, older_than=cutoff, dry_run=opts.dry_run)
        finally:
            store.close()
        verb = "Would remove" if opts.dry_run else "Removed"
        if report.missing:
            print(f"{len(report.missing)} row(s) whose bytes are missing:")
            for entry in report.missing:
                print(f"  bucket {entry.bucket!r} {entry.content_hash} ({entry.path}), last seen at {entry.url}")
        print(f"{verb} {len(report.missing)} row(s) whose bytes are missing.")
        if cutoff is not None:
            print(
                f"{verb} {len(report.expired)} image(s) not seen since {cutoff:%Y-%m-%d %H:%M} UTC "
                f"({human_size(report.expired_bytes)})."
            )
        print(
            f"{verb} {report.orphans} blob(s) no row references, older than {config.gc_grace:g} s "
            f"({human_size(report.orphan_bytes)})."
        )
        print(f"{'Would free' if opts.dry_run else 'Freed'} {human_size(report.freed)} ({report.freed} bytes).")
        return EXIT_OK
