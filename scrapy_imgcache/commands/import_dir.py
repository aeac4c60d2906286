"""``scrapy imgcache-import DIR``: index an existing folder of images (an old IMAGES_STORE) into the cache.

Each file is recorded at its ``file://`` URL, so a second run finds every file already there
and adds nothing (it only hashes the bytes to notice files that changed). Files that are
not images are skipped and listed with the typed error's reason.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from scrapy.exceptions import UsageError

from . import (
    EXIT_OK,
    ImgCacheCommand,
    add_bucket_option,
    bucket_of,
    human_size,
    progress,
)

if TYPE_CHECKING:
    from ..ingest import Ingestor

DEFAULT_CLIENT = "imgcache-import"


@dataclass
class Tally:
    """What happened to each file, for the closing report."""

    added: int = 0
    added_bytes: int = 0
    exact: int = 0  # same bytes already cached under another path or URL: one more URL record
    unchanged: int = 0  # already imported from this path
    near: int = 0  # stored, and annotated as a near-duplicate of an image already cached
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, reason, message)


class Command(ImgCacheCommand):
    name = "imgcache-import"
    creates_cache = True

    def syntax(self) -> str:
        return "[options] DIR"

    def short_desc(self) -> str:
        return "Index an existing folder of images into the cache"

    def long_desc(self) -> str:
        return (
            "Walk DIR (recursively, in name order) and store every image file in the cache under "
            "its file:// URL, annotating near-duplicates of images already cached; files that are "
            "not images are skipped and listed with the reason. Running it again adds nothing. "
            "A progress bar is shown on stderr when it is a terminal."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        add_bucket_option(parser, "store the images in")
        parser.add_argument(
            "--client-name",
            metavar="NAME",
            default=DEFAULT_CLIENT,
            help=f"the client name recorded with each URL (default {DEFAULT_CLIENT})",
        )

    def execute(self, args: list[str], opts: argparse.Namespace) -> int:
        if len(args) != 1:
            raise UsageError("exactly one DIR is expected", print_help=False)
        root = Path(args[0])
        if not root.is_dir():
            raise UsageError(f"{root} is not a directory", print_help=False)
        if not opts.client_name.strip():
            raise UsageError("--client-name must not be empty", print_help=False)
        from dataclasses import replace

        from ..ingest import Ingestor

        config = self.config()
        config = replace(config, bucket=bucket_of(opts, config), hash_processes=0, on_similar="annotate")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        store = self.open_store(config)
        ingestor = Ingestor(store, config)
        tally = Tally()
        try:
            for path in progress(files, len(files), "importing"):
                _import_file(ingestor, path, opts.client_name, tally)
        finally:
            store.close()
        _report(root, len(files), tally, config.bucket)
        return EXIT_OK


def _import_file(ingestor: Ingestor, path: Path, client: str, tally: Tally) -> None:
    """Store one file through the same ingest path as a crawl's images (near-duplicates annotated)."""
    from ..errors import InvalidImage
    from ..hashing import content_hash

    url = path.resolve().as_uri()
    max_bytes = ingestor.inspector.limits.max_bytes
    try:
        if path.stat().st_size > max_bytes:
            tally.skipped.append((str(path), "too_many_bytes", f"over IMGCACHE_MAX_BYTES ({max_bytes})"))
            return
        data = path.read_bytes()
    except OSError as exc:
        tally.skipped.append((str(path), "unreadable", exc.strerror or str(exc)))
        return
    known = ingestor.store.lookup(url, ingestor.config.bucket)
    if known is not None and known.content_hash == content_hash(data):
        tally.unchanged += 1  # imported before; the cheap hash spares decoding it again
        return
    try:
        outcome = ingestor.ingest(data, url=url, client_name=client, filename=path.name)
    except InvalidImage as exc:  # refused here, or by a remote service with tighter limits
        tally.skipped.append((str(path), exc.reason, exc.message))
        return
    if outcome.duplicate == "exact":
        tally.exact += 1
    else:
        tally.added += 1
        tally.added_bytes += outcome.size
        tally.near += outcome.duplicate == "similar"


def _report(root: Path, total: int, tally: Tally, bucket: str) -> None:
    print(
        f"{root}: {total} file(s); {tally.added} image(s) added to bucket {bucket!r} ({human_size(tally.added_bytes)}"
        f", {tally.near} of them near-duplicates), {tally.exact} exact duplicate(s) of cached images recorded, "
        f"{tally.unchanged} already imported, {len(tally.skipped)} skipped."
    )
    if tally.skipped:
        reasons = Counter(reason for _, reason, _ in tally.skipped)
        print("Skipped (" + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + "):", file=sys.stderr)
        for path, reason, message in tally.skipped:
            print(f"  {path}: {reason}: {message}", file=sys.stderr)
