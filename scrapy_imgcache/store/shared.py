"""A process's view of the similarity index, kept in step with the database.

Two layers. The base: an index file (:mod:`.indexfile`) every process of a host maps, which
covers the rows up to a marker (the highest row id it holds). The tail: a small private
:class:`~.index.HammingIndex` of the rows added since, read from the database before each
query (one indexed range query on the primary key), so an image stored by another process
is found by the next lookup. When the tail grows past ``max(fold_min, base / 8)`` entries,
the process that gets the lock folds it into a new file; the others notice the file's new
inode on their next query (one ``stat``) and map it instead.

Without a folder for the file (an in-memory SQLite database, or a store opened without
one), or while the cache is smaller than ``fold_min`` entries, the whole index is the
private tail, as before: the first query loads every row.

Ids that were skipped (a transaction still open elsewhere, or a sequence value burnt by a
conflict) are re-asked for a while in case they commit late; a file keeps the ones it had
not seen, so a process opening it asks for them too. Rows deleted by this process are left
out at once; rows deleted by another drop out when the matches are fetched from the database
(row ids are never reused: ``AUTOINCREMENT`` / sequences), so answers equal a scan's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select

from .index import QUERY_SLOTS, SLOT_BITS, HammingIndex, entry_id, split_entry_id, to_signed, unpack_hashes
from .indexfile import DamagedIndex, IndexFile, locked, open_file
from .indexfile import write as write_index_file
from .models import ImageRow
from .statements import NEW_ROWS

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

logger = logging.getLogger(__name__)

QUERY_SLOT_MIN = min(QUERY_SLOTS.values())
#: tail entries from which a file is written (below, a process's private load costs
#: < 0.3 s on SQLite and ~4 MB); also the smallest tail folded into an existing file
FOLD_MIN = 50_000


def file_name(identity: str) -> str:
    return f"imgcache-index-{identity}.idx"


class SharedIndex:
    """The similarity index of one process: a mapped file (when a folder is given) + a tail."""

    GAP_TTL = 30.0
    MAX_GAPS = 512

    def __init__(
        self, engine: Engine, postgres: bool, identity: str, folder: str | None, fold_min: int = FOLD_MIN
    ) -> None:
        self.engine = engine
        self.postgres = postgres
        self.identity = identity
        self.folder = folder
        self.fold_min = max(fold_min, 1)
        self.path = os.path.join(folder, file_name(identity)) if folder else ""
        self.lock = threading.Lock()
        self.base: IndexFile | None = None
        self.indexes: dict[tuple[str, str], HammingIndex] = {}  # the tail
        self.removed: set[int] = set()  # entries deleted by this process, still in the base
        self.high = 0
        self.gaps: dict[int, float] = {}
        self.loaded = False
        self.opened = False
        #: what this process did, for tests and benchmarks: files written, files mapped
        self.written = 0
        self.mapped = 0

    def forget(self, image_id: int) -> None:
        with self.lock:
            for slot in range(1 << SLOT_BITS):  # its stored hash and every extra one
                entry = entry_id(image_id, slot)
                for index in self.indexes.values():
                    index.remove(entry)
                if self.base is not None:
                    self.removed.add(entry)

    def query(
        self, bucket: str, algorithm: str, probes: Sequence[tuple[int, int]], conn: Connection | None = None
    ) -> list[list[tuple[int, int, int]]]:
        """For each probe (hash, max distance): (image id, slot, distance) of every entry within
        it, nearest first (slot 0: an image's stored hash; others: the extra hashes of robust search)."""
        with self.lock:
            if conn is None:
                with self.engine.connect() as own:
                    return self._answer(own, (bucket, algorithm), probes)
            return self._answer(conn, (bucket, algorithm), probes)

    def _answer(
        self, conn: Connection, key: tuple[str, str], probes: Sequence[tuple[int, int]]
    ) -> list[list[tuple[int, int, int]]]:
        self._refresh(conn)
        try:
            return [self._probe(key, value, d) for value, d in probes]
        except DamagedIndex as exc:
            self._rebuild(conn, exc)
            return [self._probe(key, value, d) for value, d in probes]

    def _rebuild(self, conn: Connection, exc: Exception) -> None:
        """The mapped file is damaged (a block failed its checksum): read every row again and
        write a new file, unless another process replaced it meanwhile."""
        logger.warning("imgcache: the index file %s is damaged (%s): rebuilding it", self.path, exc)
        damaged = self.base.stamp if self.base is not None else None
        self.base, self.indexes, self.removed, self.high, self.gaps, self.loaded = None, {}, set(), 0, {}, False
        try:
            with locked(self.path + ".lock"):
                current = open_file(self.path, self.identity)
                if current is not None and current.stamp != damaged:
                    self._adopt(current)
                else:
                    self._read_new(conn)
                    self._fold(blocking=None)
                    return
        except OSError as give_up:
            self._give_up(give_up)
        self._read_new(conn)

    def _probe(self, key: tuple[str, str], value: int, max_distance: int) -> list[tuple[int, int, int]]:
        ids: list[np.ndarray] = []
        dists: list[np.ndarray] = []
        group = self.base.groups.get(key) if self.base is not None else None
        if group is not None:
            got_ids, got_d = group.query(value, max_distance)
            if self.removed and len(got_ids):
                keep = ~np.isin(got_ids, np.fromiter(self.removed, dtype=np.int64))
                got_ids, got_d = got_ids[keep], got_d[keep]
            ids.append(got_ids)
            dists.append(got_d)
        tail = self.indexes.get(key)
        if tail is not None:
            found = tail.query(value, max_distance)
            ids.append(np.array([e for e, _ in found], dtype=np.int64))
            dists.append(np.array([d for _, d in found], dtype=np.int64))
        if not ids:
            return []
        all_ids, all_d = np.concatenate(ids), np.concatenate(dists)
        order = np.lexsort((all_ids, all_d))  # the base and the tail hold different rows
        return [(*split_entry_id(int(e)), int(d)) for e, d in zip(all_ids[order], all_d[order], strict=True)]

    # -- keeping up with the database and the file ------------------------------------------

    def _refresh(self, conn: Connection) -> None:
        if not self.opened:
            self.opened = True
            if self.path:
                self._open(conn)
        elif self.path:
            self._follow()
        self._read_new(conn)
        if self.path and self._tail_size() >= max(self.fold_min, (self.base.size if self.base else 0) // 8):
            self._fold(blocking=False)
            self._read_new(conn)  # a file another process wrote may stop short of this one's rows

    def _open(self, conn: Connection) -> None:
        """Map the file; when it is missing or unusable and the cache is large, build it under
        the lock (so that, of many processes starting at once, one reads every row)."""
        found = open_file(self.path, self.identity)
        if found is None:
            top = conn.execute(select(func.max(ImageRow.id))).scalar() or 0
            if top < self.fold_min:
                return
            try:
                with locked(self.path + ".lock"):
                    found = open_file(self.path, self.identity)
                    if found is None:
                        self._read_new(conn)
                        self._fold(blocking=None)
                        return
            except OSError as exc:
                self._give_up(exc)
                return
        self._adopt(found)

    def _follow(self) -> None:
        """Map the newer file another process wrote (a rename gives the path a new inode)."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return
        if self.base is not None and (stat.st_ino, stat.st_mtime_ns) == self.base.stamp:
            return
        found = open_file(self.path, self.identity)
        if found is not None:
            self._adopt(found)

    def _adopt(self, found: IndexFile) -> None:
        """Use ``found`` as the base: the tail restarts from its marker (re-read on this query)."""
        self.base = found
        self.mapped += 1
        self.indexes = {}
        self.high = found.high
        now = time.monotonic()
        self.gaps = dict.fromkeys(found.gaps, now)
        self.loaded = True

    def _tail_size(self) -> int:
        return sum(len(index) for index in self.indexes.values())

    def _fold(self, blocking: bool | None) -> None:
        """Write base + tail as a new file and map it. ``blocking``: wait for the lock; False:
        skip when another process holds it; None: the caller holds it already."""
        try:
            if blocking is None:
                self._write_and_adopt()
                return
            with locked(self.path + ".lock", blocking) as held:
                if not held:
                    return
                current = open_file(self.path, self.identity)
                if current is not None and (self.base is None or current.stamp != self.base.stamp):
                    self._adopt(current)  # another process folded meanwhile
                    return
                self._write_and_adopt()
        except OSError as exc:
            self._give_up(exc)

    def _write_and_adopt(self) -> None:
        groups: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        for key in set(self.indexes) | set(self.base.groups if self.base else ()):
            ids: list[np.ndarray] = []
            values: list[np.ndarray] = []
            if self.base is not None and key in self.base.groups:
                base_ids, base_values = self.base.groups[key].entries()
                if self.removed:
                    keep = ~np.isin(base_ids, np.fromiter(self.removed, dtype=np.int64))
                    base_ids, base_values = base_ids[keep], base_values[keep]
                ids.append(base_ids)
                values.append(base_values)
            if key in self.indexes:
                tail_ids, tail_values = self.indexes[key].entries()
                ids.append(tail_ids)
                values.append(tail_values)
            groups[key] = (np.concatenate(ids), np.concatenate(values))
        write_index_file(self.path, self.identity, self.high, sorted(self.gaps), groups)
        self.written += 1
        self.removed = set()
        found = open_file(self.path, self.identity)
        if found is None:  # written and fsync'd a moment ago: a disk that loses it is broken
            raise OSError(f"the index file {self.path} just written cannot be read back")
        self._adopt(found)

    def _give_up(self, exc: OSError) -> None:
        """No file (read-only or full folder): the whole index stays private, as before."""
        logger.warning("imgcache: no index file in %s (%s): each process loads the index itself", self.folder, exc)
        self.path = ""

    def _read_new(self, conn: Connection) -> None:
        now = time.monotonic()
        self.gaps = {i: t for i, t in self.gaps.items() if now - t < self.GAP_TTL}
        stmt = NEW_ROWS[bool(self.gaps), self.postgres]
        rows = conn.execute(stmt, {"high": self.high, "gaps": list(self.gaps)}).all()
        if not rows:
            return
        if not self.loaded:
            self._bulk_load(rows)
            self.loaded = True
        else:
            for image_id, bucket, algorithm, phash, flat, extra in rows:
                self.gaps.pop(image_id, None)
                if phash is not None and not flat:
                    index = self._index(bucket, algorithm)
                    for entry, value in entries_of(image_id, phash, extra):
                        index.add(entry, value)
        top = rows[-1][0]
        if top > self.high:
            # only the most recent ids can still be in flight elsewhere; older holes are deletes
            seen = {r[0] for r in rows}
            for missing in range(max(self.high + 1, top - self.MAX_GAPS), top):
                if missing not in seen:
                    self.gaps[missing] = now
            self.high = top
        if len(self.gaps) > self.MAX_GAPS:
            for old in sorted(self.gaps, key=self.gaps.__getitem__)[: len(self.gaps) - self.MAX_GAPS]:
                del self.gaps[old]

    def _bulk_load(self, rows: Sequence[Any]) -> None:
        groups: dict[tuple[str, str], tuple[list[int], list[int]]] = {}
        for image_id, bucket, algorithm, phash, flat, extra in rows:
            if phash is None or flat:
                continue
            ids, values = groups.setdefault((bucket, algorithm), ([], []))
            for entry, value in entries_of(image_id, phash, extra):
                ids.append(entry)
                values.append(to_signed(value & 0xFFFFFFFFFFFFFFFF))
        for key, (ids, values) in groups.items():
            self._index(*key).add_many(np.array(ids), np.array(values, dtype=np.int64).view(np.uint64))

    def _index(self, bucket: str, algorithm: str) -> HammingIndex:
        key = (bucket, algorithm)
        if key not in self.indexes:
            self.indexes[key] = HammingIndex()
        return self.indexes[key]


def entries_of(image_id: int, phash: int, extra: bytes | None) -> list[tuple[int, int]]:
    """The index entries of one image: its stored hash (slot 0) and its extra hashes."""
    indexed = [(entry_id(image_id, slot), value) for slot, value in unpack_hashes(extra) if slot < QUERY_SLOT_MIN]
    return [(entry_id(image_id), phash), *indexed]
