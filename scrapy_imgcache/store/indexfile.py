"""The similarity index as a file every process of a host maps, instead of a copy in each.

Why: a process that builds :class:`~.index.HammingIndex` from the database holds ~80 bytes
an entry and pays a full table read first (5.5 s for 1M images on SQLite, ~55 s and ~800 MB
at 10M, in every crawl process). A file of sorted tables, mapped read-only, is shared
through the page cache: eight processes on a host hold one copy, and opening it reads a
header.

Layout (little-endian): ``MAGIC``, the header's length (8 bytes), a JSON header (the
cache's id, the highest row id the file covers and the ids below it it had not seen, the
groups, the body's checksums), then per (bucket, algorithm) group and for each of its
chunks: a table of offsets (uint32, CSR: where each chunk value's run starts) and the
entries sorted by that chunk's value as (hash, entry id) pairs of uint64. Three chunks of
22/21/21 bits from 2**20 entries (4 of 16 bits below: their offsets take 1 MB, not 32):
48 bytes an entry. Pigeonhole: two hashes within ``d`` bits share a chunk within
``d // chunks`` bits, so the candidates are a few runs; each is checked by popcount, so a
query answers exactly what a linear scan does.

A file is written to a temporary name, fsync'd and renamed, so readers see a whole old or
a whole new file. Opening checks the magic, the version, the header's digest, the cache's
id, the exact size, and each group's offset tables and block checksums against the header
(~30 MB at 10M entries); the sorted tables are checked a 4 KiB block at a time when a
query first reads the block (:meth:`MappedGroup.check_rows`). A truncated, damaged or
foreign file is thus never used for an answer: it is refused at open, or the query that
meets the damaged block raises :class:`DamagedIndex` and the caller rebuilds the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import mmap
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from .index import popcount

MAGIC = b"IMGCIDX\x01"
VERSION = 1
_ALIGN = 64
_BLOCK = 16 << 20
#: rows of 16 bytes a checked block: one page, so a query checks no more than the pages it
#: reads anyway (64 KiB blocks read 23 MB to check the first query at 10M, and at 100M made
#: every process read most of the file within its first queries)
BLOCK_ROWS = 256
_MAX_RADIUS = 3  # per-chunk radius above which the whole table is scanned instead of probed
_WIDE_FROM = 1 << 20  # entries from which three wide chunks beat four 16-bit ones

Key = tuple[str, str]  # (bucket, hash algorithm)


def widths_for(n: int) -> tuple[int, ...]:
    return (22, 21, 21) if n >= _WIDE_FROM else (16, 16, 16, 16)


def _masks(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit value with at most ``radius`` bits set (the probe XOR masks)."""
    out = [np.zeros(1, dtype=np.int64)]
    frontier = np.zeros(1, dtype=np.int64)
    bits = np.int64(1) << np.arange(width, dtype=np.int64)
    for _ in range(radius):
        frontier = np.unique((frontier[:, None] | bits[None, :]).ravel())
        out.append(frontier[popcount(frontier.astype(np.uint64)) == len(out)])
    return np.concatenate(out)


_MASK_CACHE: dict[tuple[int, int], np.ndarray] = {}


def masks(width: int, radius: int) -> np.ndarray:
    key = (width, radius)
    if key not in _MASK_CACHE:
        _MASK_CACHE[key] = _masks(width, radius)
    return _MASK_CACHE[key]


class DamagedIndex(Exception):
    """A block of an index file does not match its checksum: the file must not be used."""


@dataclass
class MappedGroup:
    """The entries of one (bucket, algorithm): per chunk, offsets and (hash, id) sorted by it.

    The tables are checked block by block (``BLOCK_ROWS`` rows, 4 KiB) the first time a
    query reads a block, against the block's checksums (the offsets and the checksums were
    checked at open): opening stays cheap however large the file (checking all of a 10M
    file at open cost 0.8-1.5 s), and no answer uses a byte that was not checked."""

    widths: tuple[int, ...]
    n: int
    offsets: np.ndarray  # all chunks' offset tables, one after the other (uint32)
    offset_base: np.ndarray  # where each chunk's table starts in ``offsets``
    tables: np.ndarray  # (chunks * n, 2) uint64: chunk c's sorted entries at rows c*n..
    block_sums: np.ndarray  # (chunks * blocks, 2) uint64: each block's sum and xor
    shifts: np.ndarray = field(init=False)
    checked: np.ndarray = field(init=False)  # per block: checked already (private, 1 byte a block)

    def __post_init__(self) -> None:
        self.shifts = np.concatenate(([0], np.cumsum(self.widths)[:-1])).astype(np.uint64)
        self.checked = np.zeros(len(self.block_sums), dtype=bool)

    @property
    def blocks(self) -> int:  # blocks a chunk
        return -(-self.n // BLOCK_ROWS)

    def check_rows(self, rows: np.ndarray) -> None:
        """Check every block holding one of ``rows`` not checked yet; raise DamagedIndex."""
        chunk, row = np.divmod(rows, self.n)
        blocks = chunk * self.blocks + row // BLOCK_ROWS
        unchecked = np.unique(blocks[~self.checked[blocks]])  # once warm, nothing to sort
        if not len(unchecked):
            return
        c, b = np.divmod(unchecked, self.blocks)
        starts = c * self.n + b * BLOCK_ROWS
        full = b * BLOCK_ROWS + BLOCK_ROWS <= self.n  # a chunk's last block may be short
        words = self.tables[starts[full, None] + np.arange(BLOCK_ROWS)]  # (blocks, rows, 2)
        sums = np.add.reduce(words, axis=(1, 2), dtype=np.uint64)
        xors = np.bitwise_xor.reduce(words, axis=(1, 2))
        expected = self.block_sums[unchecked[full]]
        bad = (sums != expected[:, 0]) | (xors != expected[:, 1])
        for block, start, chunk_end in zip(unchecked[~full], starts[~full], (c[~full] + 1) * self.n, strict=True):
            part = self.tables[start:chunk_end].ravel()
            want = self.block_sums[block]
            bad = np.append(
                bad, np.add.reduce(part, dtype=np.uint64) != want[0] or np.bitwise_xor.reduce(part) != want[1]
            )
        if bad.any():
            raise DamagedIndex(f"{int(bad.sum())} block(s) of an index table do not match their checksums")
        self.checked[unchecked] = True

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(entry ids, hashes) of every entry (chunk 0's order), copied out of the mapping."""
        self.check_rows(np.arange(0, self.n, BLOCK_ROWS))
        first = np.array(self.tables[: self.n])
        return first[:, 1].view(np.int64), first[:, 0]

    def query(self, value: int, max_distance: int) -> tuple[np.ndarray, np.ndarray]:
        """(entry ids, distances) of every entry within ``max_distance`` bits, unordered."""
        q = np.uint64(value & 0xFFFFFFFFFFFFFFFF)
        if not self.n:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        radius = max_distance // len(self.widths)
        if radius > _MAX_RADIUS:  # probing more masks than a scan costs
            self.check_rows(np.arange(0, self.n, BLOCK_ROWS))
            hashes = self.tables[: self.n, 0]
            dist = popcount(hashes ^ q)
            hit = np.flatnonzero(dist <= max_distance)
            return self.tables[hit, 1].view(np.int64), dist[hit].astype(np.int64)
        rows = self._candidates(q, radius)
        self.check_rows(rows)
        dist = popcount(self.tables[rows, 0] ^ q)
        hit = np.flatnonzero(dist <= max_distance)
        ids, first = np.unique(self.tables[rows[hit], 1].view(np.int64), return_index=True)
        return ids, dist[hit][first].astype(np.int64)

    def _candidates(self, q: np.uint64, radius: int) -> np.ndarray:
        """Rows of ``tables`` whose chunk value lies within ``radius`` bits of the query's."""
        starts_all: list[np.ndarray] = []
        ends_all: list[np.ndarray] = []
        for c, width in enumerate(self.widths):
            chunk = int((q >> self.shifts[c]) & np.uint64((1 << width) - 1))
            probes = (chunk ^ masks(width, radius)) + int(self.offset_base[c])
            starts_all.append(self.offsets[probes].astype(np.int64) + c * self.n)
            ends_all.append(self.offsets[probes + 1].astype(np.int64) + c * self.n)
        starts = np.concatenate(starts_all)
        lengths = np.concatenate(ends_all) - starts
        total = int(lengths.sum())
        if not total:
            return np.empty(0, dtype=np.int64)
        # start..start+length-1 of every probe, without a Python loop
        shift = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        rows: np.ndarray = np.arange(total) + shift
        return rows


@dataclass
class IndexFile:
    """An opened index file: what it covers and its groups (views of one read-only mapping)."""

    path: str
    identity: str
    high: int
    gaps: list[int]
    groups: dict[Key, MappedGroup]
    stamp: tuple[int, int]  # (inode, mtime ns): a rename over the path is a new file

    @property
    def size(self) -> int:
        return sum(g.n for g in self.groups.values())


def _sorted_tables(
    ids: np.ndarray, hashes: np.ndarray, widths: tuple[int, ...]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each chunk: its offset table (uint32) and its (hash, id) pairs sorted by its value."""
    shift = 0
    for width in widths:
        keys = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        order = np.argsort(keys, kind="stable")
        offsets = np.zeros((1 << width) + 1, dtype=np.uint32)
        np.cumsum(np.bincount(keys, minlength=1 << width), out=offsets[1:])
        del keys
        table = np.empty((len(ids), 2), dtype=np.uint64)
        table[:, 0] = hashes[order]
        table[:, 1] = ids[order].view(np.uint64)
        yield offsets, table
        shift += width


def _padding(length: int) -> bytes:
    return b"\0" * (-length % _ALIGN)


def write(
    path: str,
    identity: str,
    high: int,
    gaps: Sequence[int],
    groups: Mapping[Key, tuple[np.ndarray, np.ndarray]],
    widths: tuple[int, ...] | None = None,
) -> None:
    """Write the index file atomically: a temporary file in the same folder, fsync'd, renamed
    over ``path`` (and the folder fsync'd), so a reader sees the old file or the new one whole.
    ``widths``: the chunks' (summing to 64; default by size, see :func:`widths_for`)."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".imgcache-index-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            header = _write_body(out, identity, high, gaps, groups, widths)
            out.flush()
            os.fsync(out.fileno())
        with open(tmp, "r+b") as out:  # the header, now that the body's checksums are known
            out.write(header)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


HEADER_ROOM = 1 << 16  # the JSON header's fixed room, so the body can be written first


class _Sums:
    """Checksums: the 64-bit sum and xor of the words (order-independent)."""

    def __init__(self) -> None:
        self.total = np.uint64(0)
        self.xor = np.uint64(0)

    def add(self, data: bytes | np.ndarray) -> None:
        words = np.frombuffer(data, dtype=np.uint64) if isinstance(data, bytes) else data
        self.total = np.add.reduce(words, initial=self.total, dtype=np.uint64)
        self.xor = np.bitwise_xor.reduce(words, initial=self.xor)

    def pair(self) -> list[int]:
        return [int(self.total), int(self.xor)]


def _block_sums(table: np.ndarray) -> np.ndarray:
    """(sum, xor) of each BLOCK_ROWS rows of ``table`` (the last block short)."""
    blocks = -(-len(table) // BLOCK_ROWS)
    padded = np.zeros((blocks * BLOCK_ROWS, 2), dtype=np.uint64)
    padded[: len(table)] = table
    words = padded.reshape(blocks, BLOCK_ROWS * 2)
    return np.stack([np.add.reduce(words, axis=1, dtype=np.uint64), np.bitwise_xor.reduce(words, axis=1)], axis=1)


def _aligned(length: int) -> int:
    return length + (-length % _ALIGN)


def _write_group(
    out: BinaryIO, at: int, ids: np.ndarray, hashes: np.ndarray, widths: tuple[int, ...]
) -> dict[str, Any]:
    """One group at body offset ``at``: its offset tables, its blocks' checksums, its sorted
    tables (one view of the mapping addresses every chunk's rows: chunk c's at ``c * n``)."""
    n = len(ids)
    blocks = -(-n // BLOCK_ROWS)
    sums_at = at + _aligned(sum((1 << w) + 1 for w in widths) * 4)
    tables_at = sums_at + _aligned(len(widths) * blocks * 16)
    pos = tables_at
    all_offsets, all_sums = [], []
    for offsets, table in _sorted_tables(ids, hashes, widths):
        out.seek(HEADER_ROOM + pos)
        out.write(table.data)  # no copy of a table (1.6 GB at 100M entries)
        pos += table.nbytes
        all_offsets.append(offsets)
        all_sums.append(_block_sums(table))
        del table
    check = _Sums()
    for region_at, array in ((at, np.concatenate(all_offsets)), (sums_at, np.concatenate(all_sums))):
        data = array.tobytes()
        data += _padding(len(data))
        out.seek(HEADER_ROOM + region_at)
        out.write(data)
        check.add(data)
    out.seek(HEADER_ROOM + pos)
    out.write(_padding(pos))
    return {"n": n, "widths": widths, "offsets": at, "sums": sums_at, "tables": tables_at,
            "end": _aligned(pos), "check": check.pair()}  # fmt: skip


def _write_body(
    out: BinaryIO,
    identity: str,
    high: int,
    gaps: Sequence[int],
    groups: Mapping[Key, tuple[np.ndarray, np.ndarray]],
    force_widths: tuple[int, ...] | None,
) -> bytes:
    """The body after ``HEADER_ROOM`` bytes; returns the header to put before it."""
    at, described = 0, []
    for (bucket, algorithm), (ids, hashes) in groups.items():
        ids = np.asarray(ids, dtype=np.int64)
        hashes = np.asarray(hashes).astype(np.uint64)
        group = _write_group(out, at, ids, hashes, force_widths or widths_for(len(ids)))
        described.append({"bucket": bucket, "algorithm": algorithm, **group})
        at = group["end"]
    meta = {"version": VERSION, "identity": identity, "high": high, "gaps": [int(g) for g in gaps],
            "groups": described, "body": at}  # fmt: skip
    text = json.dumps(meta).encode()
    if len(MAGIC) + 24 + len(text) > HEADER_ROOM:  # too many buckets or gaps for the room kept
        raise ValueError("index file header too large")
    return MAGIC + len(text).to_bytes(8, "little") + _digest(text) + text


def _digest(text: bytes) -> bytes:
    return hashlib.blake2b(text, digest_size=16).digest()


def open_file(path: str, identity: str) -> IndexFile | None:
    """The index file at ``path``, or None when it is missing, not this cache's, of another
    version, or damaged (wrong size or checksums): a caller then builds a new one."""
    try:
        with open(path, "rb") as f:
            stat = os.fstat(f.fileno())
            head = f.read(HEADER_ROOM)
            meta = _header(head, identity)
            if meta is None or stat.st_size != HEADER_ROOM + meta["body"] or not _checksums_match(f, meta):
                return None
            # a plain array over an mmap (it outlives the descriptor): np.memmap's subclass
            # hooks cost ~0.1 ms a gather
            mapped = (
                np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8, meta["body"], HEADER_ROOM)
                if meta["body"]
                else np.empty(0, dtype=np.uint8)
            )
    except (OSError, ValueError):
        return None
    groups = {}
    for g in meta["groups"]:
        groups[g["bucket"], g["algorithm"]] = _group(mapped, g)
    stamp = (stat.st_ino, stat.st_mtime_ns)
    return IndexFile(path, identity, int(meta["high"]), [int(x) for x in meta["gaps"]], groups, stamp)


def _header(head: bytes, identity: str) -> dict[str, Any] | None:
    start = len(MAGIC) + 24
    if len(head) < start or head[: len(MAGIC)] != MAGIC:
        return None
    length = int.from_bytes(head[len(MAGIC) : len(MAGIC) + 8], "little")
    text = head[start : start + length]
    if _digest(text) != head[start - 16 : start]:
        return None
    try:
        meta = json.loads(text)
    except ValueError:
        return None
    if not isinstance(meta, dict) or meta.get("version") != VERSION or meta.get("identity") != identity:
        return None
    return meta


def _checksums_match(f: io.BufferedReader, meta: dict[str, Any]) -> bool:
    """Each group's offsets and block checksums against the header's checksums, read into a
    buffer (no mapping: checking does not make pages part of the process's resident set)."""
    for g in meta["groups"]:
        f.seek(HEADER_ROOM + g["offsets"])
        length = g["tables"] - g["offsets"]
        data = f.read(length)
        if len(data) != length or length % 8:
            return False
        check = _Sums()
        check.add(data)
        if check.pair() != g["check"]:
            return False
    return True


def _group(mapped: np.ndarray, g: dict[str, Any]) -> MappedGroup:
    widths = tuple(int(w) for w in g["widths"])
    n = int(g["n"])
    count = sum((1 << w) + 1 for w in widths)
    blocks = -(-n // BLOCK_ROWS)
    offsets = mapped[g["offsets"] : g["offsets"] + count * 4].view(np.uint32)
    sums = mapped[g["sums"] : g["sums"] + len(widths) * blocks * 16].view(np.uint64).reshape(-1, 2)
    tables = mapped[g["tables"] : g["tables"] + len(widths) * n * 16].view(np.uint64).reshape(-1, 2)
    base = np.concatenate(([0], np.cumsum([(1 << w) + 1 for w in widths])[:-1])).astype(np.int64)
    return MappedGroup(widths, n, offsets, base, tables, sums)


@contextlib.contextmanager
def locked(path: str, blocking: bool = True) -> Iterator[bool]:
    """A cross-process lock on ``path`` (flock: released by the kernel if the holder dies);
    yields whether it is held (``blocking=False`` gives up at once when another holds it)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)  # the folder may be new (a new host)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
