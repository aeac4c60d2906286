"""``scrapy imgcache-stats``: what the cache holds and what deduplication saved, per bucket and client."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from . import EXIT_NOTHING, EXIT_OK, ImgCacheCommand, human_size, print_json, table

if TYPE_CHECKING:
    from ..store.base import Usage

HEADERS = ("BUCKET", "CLIENT", "IMAGES", "URLS", "BYTES", "EXACT DUPES", "EXACT SAVED", "NEAR DUPES", "NEAR SAVED")


class Command(ImgCacheCommand):
    def short_desc(self) -> str:
        return "Show images, URLs, bytes and duplicates saved, per bucket and client"

    def long_desc(self) -> str:
        return (
            "Show, for each bucket and for each client name (spider) within it: the images stored, "
            "the URLs recorded, the bytes stored, and how many exact and near-duplicate downloads "
            "the cache recognised with the bytes they saved. Client rows count the images that "
            "client stored first. Exit code 1 when the cache is empty."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "--json",
            action="store_true",
            help="one JSON object a line, for each bucket (client null) and each client in it",
        )

    def execute(self, args: list[str], opts: argparse.Namespace) -> int:
        store = self.open_store(self.config())
        try:
            usages = store.usage()
        finally:
            store.close()
        if not usages:
            print("The cache is empty.")
            return EXIT_NOTHING
        rows: list[tuple[str, str | None, Usage]] = []
        for u in usages:  # the bucket, then each client in it
            rows.append((u.bucket, None, u))
            rows.extend((u.bucket, client, u.clients[client]) for client in sorted(u.clients))
        if opts.json:
            for bucket, client, usage in rows:
                print_json(_figures(bucket, client, usage))
            return EXIT_OK
        print(
            table(
                HEADERS,
                [
                    (
                        repr(bucket) if client is None else "",
                        "(all)" if client is None else client,
                        u.images,
                        u.urls,
                        human_size(u.bytes),
                        u.exact_duplicates,
                        human_size(u.exact_bytes_saved),
                        u.similar_duplicates,
                        human_size(u.similar_bytes_saved),
                    )
                    for bucket, client, u in rows
                ],
                right=range(2, len(HEADERS)),
            )
        )
        total = sum(u.exact_bytes_saved + u.similar_bytes_saved for u in usages)
        images = sum(u.images for u in usages)
        print(f"{images} image(s) in {len(usages)} bucket(s); duplicates saved {human_size(total)}.")
        return EXIT_OK


def _figures(bucket: str, client: str | None, usage: Usage) -> dict[str, Any]:
    return {
        "bucket": bucket,
        "client": client,
        "images": usage.images,
        "urls": usage.urls,
        "bytes": usage.bytes,
        "exact_duplicates": usage.exact_duplicates,
        "exact_bytes_saved": usage.exact_bytes_saved,
        "similar_duplicates": usage.similar_duplicates,
        "similar_bytes_saved": usage.similar_bytes_saved,
    }
