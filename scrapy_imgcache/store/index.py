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
from collections.abc import Iterable

import numpy as np

_CHUNKS = 4
_CHUNK_BITS = 16
_CHUNK_MASK = (1 << _CHUNK_BITS) - 1
_SCAN_RADIUS = 3  # per-chunk radius above which a plain scan is cheaper than probing
_SCAN_BELOW = 50_000  # rows under which a plain scan is cheaper too (~15 us at 10k, probing ~70)
_MIN_TAIL = 8192


def _masks(radius: int) -> np.ndarray:
    """Every 16-bit value with at most ``radius`` bits set."""
    out = [0]
    for k in range(1, radius + 1):
        for bits in itertools.combinations(range(_CHUNK_BITS), k):
            out.append(sum(1 << b for b in bits))
    return np.array(out, dtype=np.int64)


_MASKS = [_masks(r) for r in range(_SCAN_RADIUS + 1)]
_SHIFTS = np.arange(_CHUNKS, dtype=np.uint64) * np.uint64(_CHUNK_BITS)


def to_signed(value: int) -> int:
    """A 64-bit unsigned hash as the signed integer a BIGINT column holds."""
    return value - (1 << 64) if value >= 1 << 63 else value


def popcount(values: np.ndarray) -> np.ndarray:
    counts: np.ndarray = np.bitwise_count(values)  # numpy types ufunc results as Any
    return counts


class HammingIndex:
    """Hashes (``np.uint64``) with integer row ids; exact radius queries, nearest first."""

    def __init__(self) -> None:
        self._ids = np.empty(0, dtype=np.int64)
        self._hashes = np.empty(0, dtype=np.uint64)
        # per chunk (rows of these 2-D arrays): hashes and ids sorted by that chunk's value, so
        # a probe's candidates are a contiguous run, and where each value's run starts (CSR)
        self._sorted_hashes = np.empty((_CHUNKS, 0), dtype=np.uint64)
        self._sorted_ids = np.empty((_CHUNKS, 0), dtype=np.int64)
        self._offsets = np.zeros((_CHUNKS, (1 << _CHUNK_BITS) + 1), dtype=np.int64)
        # the tail: arrays with room to grow (a list turned into an array on every query
        # cost ~50 us per thousand entries), the first _tail_len entries in use
        self._tail_id_buf = np.empty(64, dtype=np.int64)
        self._tail_hash_buf = np.empty(64, dtype=np.uint64)
        self._tail_len = 0
        self._removed: set[int] = set()

    def __len__(self) -> int:
        return len(self._ids) + self._tail_len - len(self._removed)

    @property
    def _tail_ids(self) -> np.ndarray:
        return self._tail_id_buf[: self._tail_len]

    @property
    def _tail_hashes(self) -> np.ndarray:
        return self._tail_hash_buf[: self._tail_len]

    def add(self, row_id: int, value: int) -> None:
        n = self._tail_len
        if n == len(self._tail_id_buf):
            self._tail_id_buf = np.resize(self._tail_id_buf, 2 * n)
            self._tail_hash_buf = np.resize(self._tail_hash_buf, 2 * n)
        self._tail_id_buf[n] = row_id
        self._tail_hash_buf[n] = value & 0xFFFFFFFFFFFFFFFF
        self._tail_len = n + 1
        self._removed.discard(row_id)
        if self._tail_len >= max(_MIN_TAIL, len(self._ids) // 16):
            self._merge()

    def add_many(self, ids: np.ndarray, values: np.ndarray) -> None:
        """Bulk load (a fresh process reading the whole table); rebuilds the tables once."""
        self._merge(np.asarray(ids, dtype=np.int64), np.asarray(values).astype(np.uint64))

    def remove(self, row_id: int) -> None:
        """Forget a row. An id the index does not hold is ignored (row ids are never reused).

        Marking absent ids (the store forgets a deleted row in every bucket's index) made
        ``len()`` negative and dropped that id from a later ``add_many``.
        """
        if row_id not in self._removed and bool((self._tail_ids == row_id).any() or (self._ids == row_id).any()):
            self._removed.add(row_id)

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, hashes) of every entry held (to write them elsewhere, e.g. an index file)."""
        ids = np.concatenate([self._ids, self._tail_ids])
        values = np.concatenate([self._hashes, self._tail_hashes])
        if self._removed:
            keep = ~np.isin(ids, np.fromiter(self._removed, dtype=np.int64))
            ids, values = ids[keep], values[keep]
        return ids, values

    def _merge(self, ids: np.ndarray | None = None, values: np.ndarray | None = None) -> None:
        all_ids = np.concatenate([self._ids, self._tail_ids])
        all_vals = np.concatenate([self._hashes, self._tail_hashes])
        if self._removed:  # only rows held before this call can have been removed
            keep = ~np.isin(all_ids, np.fromiter(self._removed, dtype=np.int64))
            all_ids, all_vals = all_ids[keep], all_vals[keep]
            self._removed.clear()
        if ids is not None and values is not None:
            all_ids = np.concatenate([all_ids, ids])
            all_vals = np.concatenate([all_vals, values])
        self._ids, self._hashes = all_ids, all_vals
        self._tail_len = 0
        n = len(all_ids)
        self._sorted_hashes = np.empty((_CHUNKS, n), dtype=np.uint64)
        self._sorted_ids = np.empty((_CHUNKS, n), dtype=np.int64)
        self._offsets = np.zeros((_CHUNKS, (1 << _CHUNK_BITS) + 1), dtype=np.int64)
        for chunk in range(_CHUNKS):
            keys = ((all_vals >> np.uint64(chunk * _CHUNK_BITS)) & np.uint64(_CHUNK_MASK)).astype(np.int64)
            order = np.argsort(keys, kind="stable")
            self._sorted_hashes[chunk] = all_vals[order]
            self._sorted_ids[chunk] = all_ids[order]
            np.cumsum(np.bincount(keys, minlength=1 << _CHUNK_BITS), out=self._offsets[chunk, 1:])

    def query(self, value: int, max_distance: int) -> list[tuple[int, int]]:
        """(row id, distance) of every hash within ``max_distance`` bits, nearest first."""
        q = np.uint64(value & 0xFFFFFFFFFFFFFFFF)
        found_ids: list[np.ndarray] = []
        found_d: list[np.ndarray] = []
        if len(self._ids):
            if max_distance // _CHUNKS > _SCAN_RADIUS or len(self._ids) < _SCAN_BELOW:  # cheaper than probing
                _scan(self._ids, self._hashes, q, max_distance, found_ids, found_d)
            else:  # ids are gathered for the hits only: each gather is a cache miss per run
                flat = self._candidates(q, max_distance)
                dist = popcount(self._sorted_hashes.ravel()[flat] ^ q)
                hit = np.flatnonzero(dist <= max_distance)
                found_ids.append(self._sorted_ids.ravel()[flat[hit]])
                found_d.append(dist[hit])
        if self._tail_len:
            _scan(self._tail_ids, self._tail_hashes, q, max_distance, found_ids, found_d)
        if not found_ids:
            return []
        ids = np.concatenate(found_ids)
        dists = np.concatenate(found_d).astype(np.int64)
        ids, first = np.unique(ids, return_index=True)
        dists = dists[first]
        order = np.lexsort((ids, dists))
        removed = self._removed
        return [(int(i), int(d)) for i, d in zip(ids[order], dists[order], strict=True) if int(i) not in removed]

    def _candidates(self, value: np.uint64, max_distance: int) -> np.ndarray:
        """Positions in the raveled per-chunk arrays of every row sharing a chunk within
        ``max_distance // 4`` bits of the query's: all four chunks in one vectorised pass."""
        masks = _MASKS[max_distance // _CHUNKS]
        chunks = ((value >> _SHIFTS) & np.uint64(_CHUNK_MASK)).astype(np.int64)
        probes = chunks[:, None] ^ masks[None, :]  # (chunk, probe)
        rows = np.arange(_CHUNKS)[:, None]
        starts = self._offsets[rows, probes]
        lengths = (self._offsets[rows, probes + 1] - starts).ravel()
        starts = (starts + rows * self._sorted_ids.shape[1]).ravel()
        total = int(lengths.sum())
        if not total:
            return np.empty(0, dtype=np.int64)
        # start..start+length-1 of every probe, without a Python loop
        shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        positions: np.ndarray = np.arange(total) + shift
        return positions


def _scan(
    ids: np.ndarray,
    hashes: np.ndarray,
    q: np.uint64,
    max_distance: int,
    found_ids: list[np.ndarray],
    found_d: list[np.ndarray],
) -> None:
    """Append the ids and distances of every hash within ``max_distance`` of ``q``."""
    dist = popcount(hashes ^ q)
    hit = np.flatnonzero(dist <= max_distance)
    found_ids.append(ids[hit])
    found_d.append(dist[hit])


def linear_scan(ids: np.ndarray, hashes: np.ndarray, value: int, max_distance: int) -> list[tuple[int, int]]:
    """The reference answer: every row checked; used by tests and benchmarks."""
    dist = popcount(hashes.astype(np.uint64) ^ np.uint64(value & 0xFFFFFFFFFFFFFFFF)).astype(np.int64)
    hit = dist <= max_distance
    sel_ids, sel_d = ids[hit], dist[hit]
    order = np.lexsort((sel_ids, sel_d))
    return [(int(i), int(d)) for i, d in zip(sel_ids[order], sel_d[order], strict=True)]


# -- several hashes an image: robust near-duplicate search ---------------------------------------

#: an index entry's id is the image's row id shifted by SLOT_BITS, plus its slot: 0 for the
#: stored perceptual hash, the kind's slot for the extra hashes of robust search (nearsig).
#: QUERY_SLOTS hold hashes stored but not indexed: an image's transformed query hashes, so a
#: cached image can be searched with (``imgcache-dupes``) without decoding it again
SLOT_BITS = 3
KIND_SLOTS = {"full": 1, "c80": 2, "t70": 3, "kp": 4}
QUERY_SLOTS = {"m": 5, "r90": 6, "r270": 7}
SLOT_KINDS = {slot: kind for kind, slot in (KIND_SLOTS | QUERY_SLOTS).items()}


def entry_id(image_id: int, slot: int = 0) -> int:
    return (image_id << SLOT_BITS) | slot


def split_entry_id(entry: int) -> tuple[int, int]:
    """(image id, slot) of an index entry's id."""
    return entry >> SLOT_BITS, entry & ((1 << SLOT_BITS) - 1)


def pack_hashes(index_hashes: Iterable[tuple[str, int]], query_hashes: Iterable[tuple[str, int]] = ()) -> bytes | None:
    """An image's extra hashes as stored in the database, a slot byte and 8 big-endian bytes
    each: the indexed ones, then the query hashes of QUERY_SLOTS' kinds (None: none at all)."""
    kept = [(KIND_SLOTS[kind], value) for kind, value in index_hashes]
    kept += [(QUERY_SLOTS[kind], value) for kind, value in query_hashes if kind in QUERY_SLOTS]
    packed = b"".join(bytes([slot]) + (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big") for slot, value in kept)
    return packed or None


def unpack_hashes(packed: bytes | None) -> list[tuple[int, int]]:
    """(slot, value) of each extra hash :func:`pack_hashes` packed."""
    if not packed:
        return []
    return [(packed[i], int.from_bytes(packed[i + 1 : i + 9], "big")) for i in range(0, len(packed) - 8, 9)]
