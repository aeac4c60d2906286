"""``scrapy imgcache-dupes``: the groups of near-duplicate images in a bucket, largest first.

Each group is a reference image (the one that matches the most others, the likely original)
and the images that matched it, with their distance to it and how they matched: groups never chain
unrelated pictures together through a series of small steps.
"""

from __future__ import annotations

import argparse
import heapq
import sys
from datetime import datetime
from typing import TYPE_CHECKING

from . import (
    EXIT_NOTHING,
    EXIT_OK,
    ImgCacheCommand,
    Sighting,
    add_search_options,
    found_distance,
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
            "groups, largest first. Each image is searched as imgcache-similar would search it "
            "(--max-distance bits); the image matching the most images not yet in a group "
            "becomes a reference and takes them (ties: an image not stored as a near-duplicate "
            "itself, then the most pixels, then the one cached first), each shown with its "
            "distance to it and how it matched. "
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

    Every image is searched once (:meth:`Store.near_cached`: verified matches, from what the
    database keeps). Then, greedily, the image that matches the most images not yet in a
    group becomes a reference and takes them: the original of a family matches every copy
    of it, where a bordered or logo-stamped copy matches fewer. Among equals, see
    ``_reference_order``. A~B and B~C never puts A and C together unless C matched A.
    """
    images = {e.content_hash: e for e in store.images(bucket) if e.perceptual_hash and not e.flat}
    matches: dict[str, dict[str, Entry]] = {}
    for entry in progress(list(images.values()), len(images), "comparing"):
        hits = store.near_cached(entry.content_hash, distance, bucket, len(images)) or []
        matches[entry.content_hash] = {h.content_hash: h for h in hits if h.content_hash in images}
    free = set(images)
    # lazy greedy: a reference's count only falls as groups form, so a popped count that is
    # still current is the largest
    heap = [(-len(found), _reference_order(images[h]), h) for h, found in matches.items() if found]
    heapq.heapify(heap)
    out: list[Cluster] = []
    while heap:
        count, order, ref = heapq.heappop(heap)
        if ref not in free:
            continue
        members = [m for h, m in matches[ref].items() if h in free]
        if len(members) != -count:
            if members:
                heapq.heappush(heap, (-len(members), order, ref))
            continue
        if len(members) + 1 < min_size:
            continue
        free.difference_update([ref, *(m.content_hash for m in members)])
        rest = sorted(((found_distance(m), m) for m in members), key=lambda pair: (pair[0], pair[1].content_hash))
        out.append([(0, images[ref]), *rest])
    out.sort(key=lambda c: (-len(c), c[0][1].created_at, c[0][1].content_hash))
    return out


def _reference_order(entry: Entry) -> tuple[bool, int, datetime, str]:
    """Among images matching as many: one the cache stored as new (its copies were recorded as
    near-duplicates of it), then the most pixels, then the one stored first."""
    pixels = (entry.width or 0) * (entry.height or 0)
    return entry.similar_to is not None, -pixels, entry.created_at, entry.content_hash
