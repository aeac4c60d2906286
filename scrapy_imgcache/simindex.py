"""An in-memory Hamming-distance index over 64-bit hashes (multi-index hashing).

Why not SQL: no database indexes Hamming distance, and a scan of a million rows costs far
more than a millisecond. Why not a BK-tree: its query cost explodes past distance ~8 and
it is slow to build in Python.

How: each hash is cut into four 16-bit chunks. If two hashes differ in at most ``d`` bits,
then by the pigeonhole principle at least one chunk differs in at most ``d // 4`` bits. For
each chunk the index keeps the rows sorted by that chunk's value with a table of offsets
(CSR), so the rows whose chunk lies within ``d // 4`` bits of the query's chunk are a few
contiguous slices. The union of those candidates is checked with a vectorised popcount,
so results are exactly those of a linear scan. Recent additions sit in a small unsorted
tail that is scanned linearly and folded into the sorted tables when it grows.
"""

from __future__ import annotations

import itertools

import numpy as np

_CHUNKS = 4
_CHUNK_BITS = 16
_CHUNK_MASK = (1 << _CHUNK_BITS) - 1
_SCAN_RADIUS = 3  # per-chunk radius above which a plain scan is cheaper than probing
_MIN_TAIL = 8192


def _masks(radius: int) -> np.ndarray:
    """Every 16-bit value with at most ``radius`` bits set."""
    out = [0]
    for k in range(1, radius + 1):
        for bits in itertools.combinations(range(_CHUNK_BITS), k):
            out.append(sum(1 << b for b in bits))
    return np.array(out, dtype=np.int64)


_MASKS = [_masks(r) for r in range(_SCAN_RADIUS + 1)]


def to_signed(value: int) -> int:
    """A 64-bit unsigned hash as the signed integer a BIGINT column holds."""
    return value - (1 << 64) if value >= 1 << 63 else value


def popcount(values: np.ndarray) -> np.ndarray:
    return np.bitwise_count(values)


class HammingIndex:
    """Hashes (``np.uint64``) with integer row ids; exact radius queries, nearest first."""

    def __init__(self) -> None:
        self._ids = np.empty(0, dtype=np.int64)
        self._hashes = np.empty(0, dtype=np.uint64)
        self._order: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        self._tail_ids: list[int] = []
        self._tail_hashes: list[int] = []
        self._removed: set[int] = set()

    def __len__(self) -> int:
        return len(self._ids) + len(self._tail_ids) - len(self._removed)

    def add(self, row_id: int, value: int) -> None:
        self._tail_ids.append(row_id)
        self._tail_hashes.append(value & 0xFFFFFFFFFFFFFFFF)
        self._removed.discard(row_id)
        if len(self._tail_ids) >= max(_MIN_TAIL, len(self._ids) // 16):
            self._merge()

    def add_many(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Bulk load (a fresh process reading the whole table); rebuilds the tables once."""
        self._merge(np.asarray(ids, dtype=np.int64), np.asarray(values).astype(np.uint64))

    def remove(self, row_id: int) -> None:
        """Forget a row. An id the index does not hold is ignored (row ids are never reused).

        Marking absent ids (the store forgets a deleted row in every bucket's index) made
        ``len()`` negative and dropped that id from a later ``add_many``.
        """
        if row_id not in self._removed and (row_id in self._tail_ids or bool((self._ids == row_id).any())):
            self._removed.add(row_id)

    def _merge(self, ids: np.ndarray | None = None, values: np.ndarray | None = None) -> None:
        all_ids = np.concatenate([self._ids, np.array(self._tail_ids, dtype=np.int64)])
        all_vals = np.concatenate([self._hashes, np.array(self._tail_hashes, dtype=np.uint64)])
        if self._removed:  # only rows held before this call can have been removed
            keep = ~np.isin(all_ids, np.fromiter(self._removed, dtype=np.int64))
            all_ids, all_vals = all_ids[keep], all_vals[keep]
            self._removed.clear()
        if ids is not None and values is not None:
            all_ids = np.concatenate([all_ids, ids])
            all_vals = np.concatenate([all_vals, values])
        self._ids, self._hashes = all_ids, all_vals
        self._tail_ids, self._tail_hashes = [], []
        self._order, self._offsets = [], []
        for chunk in range(_CHUNKS):
            keys = ((all_vals >> np.uint64(chunk * _CHUNK_BITS)) & np.uint64(_CHUNK_MASK)).astype(np.int64)
            self._order.append(np.argsort(keys, kind="stable"))
            counts = np.bincount(keys, minlength=1 << _CHUNK_BITS)
            self._offsets.append(np.concatenate(([0], np.cumsum(counts))))

    def query(self, value: int, max_distance: int) -> list[tuple[int, int]]:
        """(row id, distance) of every hash within ``max_distance`` bits, nearest first."""
        q = np.uint64(value & 0xFFFFFFFFFFFFFFFF)
        found_ids, found_d = [], []
        if len(self._ids):
            positions = self._candidates(int(q), max_distance)
            dist = popcount(self._hashes[positions] ^ q)
            hit = dist <= max_distance
            found_ids.append(self._ids[positions[hit]])
            found_d.append(dist[hit])
        if self._tail_ids:
            tail = np.array(self._tail_hashes, dtype=np.uint64)
            dist = popcount(tail ^ q)
            hit = dist <= max_distance
            found_ids.append(np.array(self._tail_ids, dtype=np.int64)[hit])
            found_d.append(dist[hit])
        if not found_ids:
            return []
        ids = np.concatenate(found_ids)
        dists = np.concatenate(found_d).astype(np.int64)
        ids, first = np.unique(ids, return_index=True)
        dists = dists[first]
        order = np.lexsort((ids, dists))
        removed = self._removed
        return [(int(i), int(d)) for i, d in zip(ids[order], dists[order]) if int(i) not in removed]

    def _candidates(self, value: int, max_distance: int) -> np.ndarray:
        radius = max_distance // _CHUNKS
        if radius > _SCAN_RADIUS:
            return np.arange(len(self._ids))
        masks = _MASKS[radius]
        picks = []
        for chunk in range(_CHUNKS):
            probes = ((value >> (chunk * _CHUNK_BITS)) & _CHUNK_MASK) ^ masks
            offsets = self._offsets[chunk]
            starts, ends = offsets[probes], offsets[probes + 1]
            lengths = ends - starts
            total = int(lengths.sum())
            if not total:
                continue
            # positions start..end-1 of every probe, without a Python loop
            shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
            picks.append(self._order[chunk][np.arange(total) + shift])
        if not picks:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(picks)


def linear_scan(ids: np.ndarray, hashes: np.ndarray, value: int, max_distance: int) -> list[tuple[int, int]]:
    """The reference answer: every row checked; used by tests and benchmarks."""
    dist = popcount(hashes.astype(np.uint64) ^ np.uint64(value & 0xFFFFFFFFFFFFFFFF)).astype(np.int64)
    hit = dist <= max_distance
    sel_ids, sel_d = ids[hit], dist[hit]
    order = np.lexsort((sel_ids, sel_d))
    return [(int(i), int(d)) for i, d in zip(sel_ids[order], sel_d[order])]
