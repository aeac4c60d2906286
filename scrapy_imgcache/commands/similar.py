"""``scrapy imgcache-similar TARGET``: the cached images that look like TARGET.

TARGET may be an image file, an image URL, a cached image's content hash or a bare
perceptual hash; the command says which it took it for, because a 16-hex-digit string
could also be a file name (an existing file wins).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scrapy.exceptions import UsageError

from . import (
    EXIT_NOTHING,
    EXIT_OK,
    CommandFailed,
    ImgCacheCommand,
    Sighting,
    add_search_options,
    dimensions,
    found_distance,
    human_size,
    match_title,
    print_json,
    sightings_table,
)

if TYPE_CHECKING:
    from ..config import ImgCacheConfig
    from ..hashing import ImageInfo, Inspector
    from ..store.base import Entry, NearQuery, Store

CONTENT_HASH = re.compile(r"^[0-9a-fA-F]{64}$")
PERCEPTUAL_HASH = re.compile(r"^[0-9a-fA-F]{16}$")


@dataclass(frozen=True)
class Query:
    """What TARGET turned out to be, and what to search with: a decoded image's robust hashes
    and signature (``near``), a cached image's record, or a bare perceptual hash."""

    kind: str
    description: str
    perceptual_hash: str
    algorithm: str
    data: bytes | None = None
    content_hash: str | None = None
    flat: bool = False
    near: NearQuery | None = None


class Command(ImgCacheCommand):
    def syntax(self) -> str:
        return "[options] TARGET"

    def short_desc(self) -> str:
        return "Find cached images that look like an image file, URL or hash"

    def long_desc(self) -> str:
        return (
            "Find the cached images that look like TARGET, best match first: with "
            "IMGCACHE_SIMILARITY = 'robust' (the default) the candidates its hashes find (its "
            "perceptual hash within --max-distance bits, its crops, mirror and rotations too) "
            "that a second comparison confirms, each with how it matched; with 'phash', those "
            "whose perceptual hash is within --max-distance bits. TARGET is a path to an image "
            "file, an http(s):// URL of an image "
            "(fetched once, not stored), the 64-hex-digit content hash of a cached image, or a "
            "16-hex-digit perceptual hash. Exit code 0 when something is found, 1 when nothing "
            "is, 2 for a usage error, 3 when the store or the URL fails."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        add_search_options(
            parser, "search", 50, "a contact sheet of the query and its matches (a stand-alone HTML page)"
        )

    def execute(self, args: list[str], opts: argparse.Namespace) -> int:
        if len(args) != 1:
            raise UsageError("exactly one TARGET is expected", print_help=False)
        config, bucket, distance = self.search_scope(opts)
        store = self.open_store(config)
        try:
            query = resolve(args[0], store, config, bucket)
            say = (lambda text: print(text, file=sys.stderr)) if opts.json else print
            say(f"Query: {query.description}")
            say(
                f"Perceptual hash {query.perceptual_hash} ({query.algorithm}), bucket {bucket!r}, up to {distance} bits"
            )
            found = self._matches(store, query, distance, bucket, opts.limit)
            if opts.html:
                self._sheet(opts.html, store, query, found, distance, bucket)
            if not found:
                why = " (it is flat: a single colour has no meaningful perceptual hash)" if query.flat else ""
                say(f"No cached image is within {distance} bits of the query{why}.")
                return EXIT_NOTHING
            if opts.json:
                for dist, sighting in found:
                    print_json(sighting.to_json(distance=dist))
            else:
                print(sightings_table(found))
                print(f"{len(found)} match(es).")
            return EXIT_OK
        finally:
            store.close()

    def _matches(
        self, store: Store, query: Query, distance: int, bucket: str, limit: int
    ) -> list[tuple[int, Sighting]]:
        return [(found_distance(h), Sighting.of(store, h)) for h in matches(store, query, distance, bucket, limit)]

    def _sheet(
        self, path: str, store: Store, query: Query, matches: list[tuple[int, Sighting]], distance: int, bucket: str
    ) -> None:
        from .sheet import Card, Section, write_page

        cards = [Card(query.data, "Query", [query.description], query=True, missing="perceptual hash only")]
        cards += [s.card(store, match_title(d, s.entry)) for d, s in matches]
        intro = [
            f"Query: {query.description}",
            f"{len(matches)} match(es) within {distance} bits ({query.algorithm}) in bucket {bucket!r}, best first.",
        ]
        write_page(path, "imgcache: similar images", intro, [Section("Query and matches", cards)])
        print(f"Contact sheet written to {path}", file=sys.stderr)


def matches(store: Store, query: Query, distance: int, bucket: str, limit: int) -> list[Entry]:
    """The cached images like ``query``, best first: a cached image's near-duplicates (itself
    left out), a decoded image's by its robust hashes and signature, else by its pHash."""
    if query.flat:
        return []
    hits: list[Entry] | None = None
    if query.kind == "content hash" and query.content_hash is not None:
        hits = store.near_cached(query.content_hash, distance, bucket, limit)
    elif query.near is not None:
        hits = store.near(query.near, distance, bucket, limit)
    if hits is None:
        hits = store.similar(query.perceptual_hash, distance, bucket, limit, query.algorithm)
    return hits[:limit]


def cached_query(entry: Entry, data: bytes | None) -> Query:
    """The query for a cached image: searched with what its record keeps."""
    chash = entry.content_hash
    return Query(
        "content hash",
        f"cached image {chash} ({human_size(entry.file_size_bytes)}, {dimensions(entry)}, seen at {entry.url})",
        entry.perceptual_hash or "",
        entry.hash_algorithm,
        data=data,
        content_hash=chash,
        flat=entry.flat,
    )


def resolve(target: str, store: Store, config: ImgCacheConfig, bucket: str) -> Query:
    """Decide what TARGET is; a usage error (exit 2) with the reason when it is none of them."""
    if target.startswith(("http://", "https://")):
        data = fetch(target, config.timeout, config.max_bytes)
        return _inspected("image URL", target, data, config)
    if os.path.isdir(target):
        raise UsageError(f"{target} is a directory, not an image file", print_help=False)
    if os.path.isfile(target):
        if os.path.getsize(target) > config.max_bytes:
            raise UsageError(f"{target} is over IMGCACHE_MAX_BYTES ({config.max_bytes} bytes)", print_help=False)
        with open(target, "rb") as fh:
            data = fh.read()
        return _inspected("image file", target, data, config)
    if CONTENT_HASH.match(target):
        chash = target.lower()
        entry = store.get_meta(chash, bucket)
        if entry is None:
            raise UsageError(f"no cached image has content hash {chash} in bucket {bucket!r}", print_help=False)
        if entry.perceptual_hash is None:
            raise UsageError(f"cached image {chash} has no perceptual hash", print_help=False)
        return cached_query(entry, store.get_bytes(chash, bucket))
    if PERCEPTUAL_HASH.match(target):
        phash = target.lower()
        return Query("perceptual hash", f"perceptual hash {phash}", phash, config.hash)
    raise UsageError(
        f"TARGET {target!r} is not an existing file, an http(s):// URL, a 64-hex-digit content hash "
        "or a 16-hex-digit perceptual hash",
        print_help=False,
    )


def fetch(url: str, timeout: float, max_bytes: int) -> bytes:
    """One plain blocking GET: the query image is looked at, never stored."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "scrapy-imgcache (imgcache-similar)"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise UsageError(f"{url} is {length} bytes, over IMGCACHE_MAX_BYTES ({max_bytes})", print_help=False)
            data: bytes = response.read(max_bytes + 1)
    except urllib.error.HTTPError as exc:
        raise CommandFailed(f"cannot fetch {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CommandFailed(f"cannot fetch {url}: {reason}") from None
    if len(data) > max_bytes:
        raise UsageError(f"{url} is over IMGCACHE_MAX_BYTES ({max_bytes} bytes)", print_help=False)
    return data


def _inspected(kind: str, target: str, data: bytes, config: ImgCacheConfig) -> Query:
    from ..errors import InvalidImage

    try:
        return inspected(kind, target, data, config.inspector())
    except InvalidImage as exc:
        raise UsageError(f"{kind} {target} cannot be used ({exc.reason}): {exc.message}", print_help=False) from None


def inspected(kind: str, target: str, data: bytes, inspector: Inspector) -> Query:
    """The query for an image's bytes (InvalidImage when they are not one)."""
    from ..store.base import NearQuery

    info: ImageInfo = inspector.inspect(data)
    description = f"{kind} {target} ({info.format}, {info.width}x{info.height}, {human_size(info.size)})"
    near = NearQuery.of(info)
    return Query(kind, description, info.perceptual_hash, info.algorithm, data, info.content_hash, info.flat, near)
