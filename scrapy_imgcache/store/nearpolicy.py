"""The near-duplicate policy, over any store: which candidates a query's hashes find, which
orientations each suggests to the verification, how many are verified, and how the verified
ones are ranked (docs/near-duplicates.md).

A store supplies three small things, :class:`NearSource`: the hits of each probe in its
index, the stored signatures of some images, and their entries. ``SqlStore`` answers them
with its shared index and two queries; a store of ``IMGCACHE_STORE_SCHEMES`` answers them from
whatever it keeps and gets the same answers from :func:`search`; ``RemoteStore`` asks a
service that runs this code. Nothing here touches a database or decodes an image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from .base import Entry, NearQuery, near_result

#: the distance at which the extra query hashes probe (7 bits keeps similar() near 1 ms at a
#: million images; 8 costs ~3x)
EXTRA_DISTANCE = 7
#: the orientation each transformed query hash suggests to the verification
ORIENTATION_OF = {"m": "m", "r90": "r90", "r270": "r270"}
#: the orientations tried for an image linked by a recorded match (``similar_match``)
LINK_HINTS = {"mirrored": {"m"}, "rotated": {"id", "r90", "r270"}}
#: the most candidates verified for one query, nearest first (up to 1000 when more results are
#: asked for)
MAX_VERIFIED = 64

#: one index hit: (image id, slot, distance); slot 0 is an image's stored perceptual hash, the
#: others its extra hashes (``store.index.KIND_SLOTS``)
Hit = tuple[int, int, int]
#: what is known of a candidate: (distance, orientation hints, found by its stored pHash)
Candidate = tuple[int, set[str], bool]


class NearSource(Protocol):
    """What :func:`search` needs of a store. Image ids are the store's own integers; they
    break ties between candidates at one distance (lower first)."""

    def probe(self, bucket: str, algorithm: str, probes: Sequence[tuple[int, int]]) -> Sequence[Sequence[Hit]]:
        """For each probe (hash, max distance): every indexed hash within it, nearest first."""
        ...

    def signatures(self, image_ids: Sequence[int]) -> Mapping[int, bytes | None]:
        """The stored verification signature of each image (None: stored without one)."""
        ...

    def entries(self, found: Sequence[tuple[int, int]], limit: int, matches: Mapping[int, str | None]) -> list[Entry]:
        """Entries of the images ``found`` as (image id, distance), in that order, each with its
        ``match``; images deleted meanwhile left out; at most ``limit``."""
        ...


def link_hints(how: str | None) -> set[str]:
    """The orientations to verify an image linked by a recorded match of kind ``how`` in."""
    return set(LINK_HINTS.get(how or "", {"id"}))


def search(
    source: NearSource,
    query: NearQuery,
    max_distance: int,
    bucket: str,
    limit: int,
    linked: Mapping[int, tuple[int, set[str]]] = {},
    leave_out: int | None = None,
) -> list[Entry]:
    """The verified near-duplicates of a query that has a signature, best score first.

    ``linked``: images recorded as near-duplicates of the query image, as (distance, hints),
    candidates whatever the index says; ``leave_out``: the query image's own id."""
    if query.signature is None:
        raise ValueError("robust search needs the query's signature; search by pHash alone without one")
    candidates = _candidates(source, query, max_distance, bucket, linked)
    if leave_out is not None:
        candidates.pop(leave_out, None)
    kept = _verified(source, query.signature, candidates, limit)
    matches = {image_id: how for _, _, image_id, how in kept}
    entries = source.entries([(image_id, dist) for _, dist, image_id, _ in kept], limit, matches)
    return [near_result(e, query) for e in entries]


def _candidates(
    source: NearSource,
    query: NearQuery,
    max_distance: int,
    bucket: str,
    linked: Mapping[int, tuple[int, set[str]]],
) -> dict[int, Candidate]:
    """Every image a probe finds (the pHash within ``max_distance``, each extra query hash within
    ``EXTRA_DISTANCE``) or a link names, with its nearest distance and the orientations that
    found it."""
    probes = [("id", int(query.perceptual_hash, 16), max_distance)]
    probes += [(kind, value, EXTRA_DISTANCE) for kind, value in query.query_hashes]
    found = source.probe(bucket, query.algorithm, [(value, dist) for _, value, dist in probes])
    candidates: dict[int, Candidate] = {
        image_id: (dist, set(hints), False) for image_id, (dist, hints) in linked.items()
    }
    for (kind, _, _), hits in zip(probes, found, strict=True):
        hint = ORIENTATION_OF.get(kind, "id")
        for image_id, slot, dist in hits:
            best, hints, by_phash = candidates.get(image_id, (dist, set(), False))
            hints.add(hint)
            candidates[image_id] = (min(best, dist), hints, by_phash or (kind == "id" and slot == 0))
    return candidates


def _verified(
    source: NearSource, signature: bytes, candidates: Mapping[int, Candidate], limit: int
) -> list[tuple[float, int, int, str | None]]:
    """The nearest candidates that verification accepts, as (-score, distance, image id, how),
    best first. An image stored without a signature counts when its own pHash found it."""
    from .. import nearsig  # NumPy: imported on the first search, not with the store

    order = sorted(candidates, key=lambda i: (candidates[i][0], i))[: max(MAX_VERIFIED, min(limit, 1000))]
    signatures = source.signatures(order) if order else {}
    kept: list[tuple[float, int, int, str | None]] = []
    for image_id in order:
        dist, hints, by_phash = candidates[image_id]
        stored = signatures.get(image_id)
        if stored is None:
            if by_phash:
                kept.append((-0.0, dist, image_id, None))
            continue
        ok, how, score = nearsig.verify(stored, signature, hints)
        if ok:
            kept.append((-score, dist, image_id, how))
    kept.sort()
    return kept
