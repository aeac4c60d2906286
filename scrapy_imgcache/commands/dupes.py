"""``scrapy imgcache-dupes``: the groups of near-duplicate images in a bucket, largest first.

Each group is a reference image (the one with the most pixels, the likely original) and the
images that matched it, with their distance to it and how they matched: groups never chain
unrelated pictures together through a series of small steps.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from typing import TYPE_CHECKING

from . import (
    EXIT_NOTHING,
    EXIT_OK,
    ImgCacheCommand,
    Sighting,
    add_search_options,
    match_title,
    positive_int,
    print_json,
    progress,
    sightings_table,
)

if TYPE_CHECKING:
    from ..store.base import Entry, Store

Cluster = list[tuple[int, "Entry"]]  # (distance to the reference, image); the reference first


class Command(ImgCacheCommand):
    def short_desc(self) -> str:
        return "List groups of near-duplicate images in a bucket, largest first"

    def long_desc(self) -> str:
        return (
            "Group the near-duplicate images of a bucket around reference images and list the "
            "groups, largest first. References are taken by pixels (then the one cached first); "
            "each gathers the images not yet in a group that match it as imgcache-similar would "
            "find them (--max-distance bits), with their distance to it and how they matched. "
            "Exit code 1 when there is no group."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument(
            "--min-size", metavar="N", type=positive_int, default=2, help="show groups of at least N images (default 2)"
        )
        add_search_options(parser, "examine", None, "a gallery of the groups (a stand-alone HTML page)")

    def execute(self, args: list[str], opts: argparse.Namespace) -> int:
        config, bucket, distance = self.search_scope(opts)
        store = self.open_store(config)
        try:
            found = clusters(store, bucket, distance, max(opts.min_size, 2))[: opts.limit]
            shown = [[(d, Sighting.of(store, e)) for d, e in cluster] for cluster in found]
            if opts.html:
                self._gallery(opts.html, store, shown, distance, bucket)
        finally:
            store.close()
        if not shown:
            print(f"No group of {max(opts.min_size, 2)} or more images within {distance} bits in bucket {bucket!r}.")
            return EXIT_NOTHING
        for number, group in enumerate(shown, 1):
            if opts.json:
                size = sum(s.entry.file_size_bytes for _, s in group)
                images = [s.to_json(distance=d) for d, s in group]
                print_json({"cluster": number, "size": len(group), "bytes": size, "images": images})
            else:
                print(f"Group {number}: {len(group)} images, distances to the first:")
                print(sightings_table(group))
                print()
        if not opts.json:
            print(f"{len(shown)} group(s) within {distance} bits in bucket {bucket!r}.")
        return EXIT_OK

    def _gallery(
        self, path: str, store: Store, shown: list[list[tuple[int, Sighting]]], distance: int, bucket: str
    ) -> None:
        from .sheet import Section, write_page

        sections = []
        for number, group in enumerate(shown, 1):
            cards = [
                s.card(store, "reference" if i == 0 else match_title(d, s.entry)) for i, (d, s) in enumerate(group)
            ]
            cards[0].query = True
            sections.append(Section(f"Group {number}: {len(group)} images", cards))
        intro = [
            f"{len(shown)} group(s) of near-duplicates within {distance} bits in bucket {bucket!r}, largest first."
        ]
        write_page(path, "imgcache: near-duplicate groups", intro, sections)
        print(f"Gallery written to {path}", file=sys.stderr)


def clusters(store: Store, bucket: str, distance: int, min_size: int = 2) -> list[Cluster]:
    """Groups around reference images, largest first; every member matched its reference.

    References are taken in order of pixels (the likely original; the earliest cached among
    equals). Each one not yet in a group gathers the images :meth:`Store.near_cached` finds
    for it that no group holds yet, so A~B and B~C never puts A and C together unless C
    matched A itself.
    """
    images = {e.content_hash: e for e in store.images(bucket) if e.perceptual_hash and not e.flat}
    grouped: set[str] = set()
    out: list[Cluster] = []
    for ref in progress(sorted(images.values(), key=_reference_order), len(images), "comparing"):
        if ref.content_hash in grouped:
            continue
        hits = store.near_cached(ref.content_hash, distance, bucket, len(images)) or []
        members = [h for h in hits if h.content_hash in images and h.content_hash not in grouped]
        if len(members) + 1 < min_size:
            continue
        grouped.add(ref.content_hash)
        grouped.update(h.content_hash for h in members)
        rest = sorted(((h.hamming_distance or 0, h) for h in members), key=lambda pair: (pair[0], pair[1].content_hash))
        out.append([(0, ref), *rest])
    out.sort(key=lambda c: (-len(c), c[0][1].created_at, c[0][1].content_hash))
    return out


def _reference_order(entry: Entry) -> tuple[int, datetime, str]:
    """The most pixels first; among equals the one stored first (the original, more likely)."""
    return -(entry.width or 0) * (entry.height or 0), entry.created_at, entry.content_hash
