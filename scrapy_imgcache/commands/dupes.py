"""``scrapy imgcache-dupes``: the groups of near-duplicate images in a bucket, largest first.

Groups are the connected components of "within N bits" (union-find over ``store.similar``
of every image), so a group may chain: A~B and B~C puts A and C together even when they are
further apart. The distances shown are to the group's reference image, the one with the
most pixels (the likely original; the earliest cached among equals), so such chains are visible.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from . import (
    EXIT_NOTHING,
    EXIT_OK,
    ImgCacheCommand,
    Sighting,
    add_search_options,
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
            "Group the images of a bucket whose perceptual hashes are within --max-distance bits "
            "of each other (transitively) and list the groups, largest first, each with its "
            "reference image (the one with the most pixels, then the one cached first) first and "
            "every other image's distance to it. Exit code 1 when there is no group."
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
            cards = [s.card(store, "reference" if i == 0 else f"distance {d}") for i, (d, s) in enumerate(group)]
            cards[0].query = True
            sections.append(Section(f"Group {number}: {len(group)} images", cards))
        intro = [
            f"{len(shown)} group(s) of near-duplicates within {distance} bits in bucket {bucket!r}, largest first."
        ]
        write_page(path, "imgcache: near-duplicate groups", intro, sections)
        print(f"Gallery written to {path}", file=sys.stderr)


def clusters(store: Store, bucket: str, distance: int, min_size: int = 2) -> list[Cluster]:
    """Connected components of "within ``distance`` bits", largest first."""
    from ..hashing import hamming

    images = {e.content_hash: e for e in store.images(bucket) if e.perceptual_hash and not e.flat}
    parent = {h: h for h in images}

    def find(h: str) -> str:
        while parent[h] != h:
            parent[h] = parent[parent[h]]  # path halving
            h = parent[h]
        return h

    for entry in progress(list(images.values()), len(images), "comparing"):
        assert entry.perceptual_hash is not None
        for hit in store.similar(entry.perceptual_hash, distance, bucket, len(images), entry.hash_algorithm):
            if hit.content_hash in parent:
                a, b = find(entry.content_hash), find(hit.content_hash)
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[str, list[Entry]] = {}
    for h, entry in images.items():
        groups.setdefault(find(h), []).append(entry)
    out: list[Cluster] = []
    for members in groups.values():
        if len(members) < min_size:
            continue
        # the most pixels; among equals the one stored first (the original, more likely)
        ref = min(members, key=lambda e: (-(e.width or 0) * (e.height or 0), e.created_at, e.content_hash))
        rest = sorted(
            ((hamming(ref.perceptual_hash or "", e.perceptual_hash or ""), e) for e in members if e is not ref),
            key=lambda pair: (pair[0], pair[1].content_hash),
        )
        out.append([(0, ref), *rest])
    out.sort(key=lambda c: (-len(c), c[0][1].created_at, c[0][1].content_hash))
    return out
