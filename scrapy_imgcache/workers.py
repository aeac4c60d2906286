"""Worker processes that decode and hash images, one a core.

Pillow keeps much of a JPEG decode and of the RGB->L conversion under the GIL, so threads of
one process hash at barely more than one core's speed (docs/crawl-benchmark.md: 1 thread
70-77 images/s, 2 threads 69-73); worker processes use every core.

Each worker owns one pipe. A thread that needs an image hashed takes an idle worker, writes
the raw bytes to its pipe (no pickling of the body, no feeder or manager threads: the whole
hop costs ~0.1 ms of the crawl process), and blocks, GIL released, until the small
:class:`ImageInfo` or the :class:`InvalidImage` comes back. A worker that dies is replaced
and that image is hashed in the calling thread instead. Workers are started with "spawn",
never by forking a process that runs a reactor and threads.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import queue
import threading
from multiprocessing.connection import Connection

from .hashing import ImageInfo, Inspector

_HASH_LEN = 64  # hex digits of the BLAKE2b-256 content hash sent ahead of the bytes (then a
# byte saying whether to send the bytes' MD5 back too)


def md5_hex(data: bytes | memoryview) -> str:
    """MD5, the ``checksum`` Scrapy's FilesPipeline/ImagesPipeline put in their results."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


class HashWorkers:
    """A fixed set of worker processes running ``inspector.inspect``."""

    def __init__(self, processes: int, inspector: Inspector) -> None:
        self.processes = processes
        self.inspector = inspector
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0

    def start(self) -> None:
        """Start the missing workers and wait until each has imported what it needs."""
        with self._lock:
            missing = self.processes - self._started
            self._started = self.processes
        for _ in range(missing):
            self._idle.put(_Worker(self.inspector))

    def inspect(self, data: bytes, content_hash: str) -> ImageInfo:
        """``inspector.inspect(data)`` in a worker; ``content_hash`` is the BLAKE2b the caller
        already computed of these very bytes (the worker does not compute it again)."""
        return self._inspect(data, content_hash, False)[0]

    def inspect_with_checksum(self, data: bytes, content_hash: str) -> tuple[ImageInfo, str]:
        """:meth:`inspect`, and the MD5 of the bytes (ImagesPipeline's ``checksum``) computed
        in the worker too, where the bytes are anyway: ~0.1 ms an 80 KB image, 0.35 ms a
        200 KB one, less for the crawl process to do under its GIL."""
        info, md5 = self._inspect(data, content_hash, True)
        return info, md5 if md5 is not None else md5_hex(data)

    def _inspect(self, data: bytes, content_hash: str, checksum: bool) -> tuple[ImageInfo, str | None]:
        self.start()
        worker = self._idle.get()
        try:
            result, md5 = worker.run(data, content_hash, checksum)
        except (EOFError, OSError):  # the worker died (killed, out of memory): replace it
            worker.close()
            self._idle.put(_Worker(self.inspector))
            return self.inspector.inspect(data, known_hash=content_hash), None
        self._idle.put(worker)
        if isinstance(result, BaseException):
            raise result
        return result, md5

    def close(self) -> None:
        with self._lock:
            started, self._started = self._started, 0
        for _ in range(started):
            self._idle.get().close()


class _Worker:
    def __init__(self, inspector: Inspector) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, inspector), daemon=True, name="imgcache-hash")
        self.process.start()
        child.close()
        if self.conn.recv() != "ready":  # pragma: no cover - the worker's own start-up failed
            raise RuntimeError("an imgcache hashing worker failed to start")

    def run(self, data: bytes, content_hash: str, checksum: bool = False) -> tuple[ImageInfo | Exception, str | None]:
        """What the worker sent back: the image's info, or the exception its inspection raised,
        and the MD5 of the bytes when ``checksum`` (else None)."""
        self.conn.send_bytes(content_hash.encode("ascii") + (b"1" if checksum else b"0") + data)
        result: tuple[ImageInfo | Exception, str | None] = self.conn.recv()  # unpickled, so typed Any
        return result

    def close(self) -> None:
        self.conn.close()
        self.process.join(timeout=5)
        if self.process.is_alive():  # pragma: no cover - a worker stuck in a decode
            self.process.kill()


def _serve(conn: Connection, inspector: Inspector) -> None:
    """The worker's loop: bytes in, an ImageInfo or the refusal out, until the pipe closes."""
    conn.send("ready")
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        chash, checksum = message[:_HASH_LEN].decode("ascii"), message[_HASH_LEN : _HASH_LEN + 1] == b"1"
        data = memoryview(message)[_HASH_LEN + 1 :]
        try:
            result: ImageInfo | Exception = inspector.inspect(bytes(data), known_hash=chash)
        except Exception as exc:  # noqa: BLE001 - every refusal goes back to the caller
            result = exc
        conn.send((result, md5_hex(data) if checksum and not isinstance(result, Exception) else None))


_POOLS: dict[tuple[int, Inspector], HashWorkers] = {}
_POOLS_LOCK = threading.Lock()


def hash_workers(processes: int, inspector: Inspector) -> HashWorkers:
    """The process-wide workers for this inspector (crawlers of one process share them)."""
    with _POOLS_LOCK:
        pool = _POOLS.get((processes, inspector))
        if pool is None:
            pool = _POOLS[processes, inspector] = HashWorkers(processes, inspector)
        return pool


def default_hash_processes() -> int:
    """One worker a core, none on a single core (a pipe hop would only add to the work)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if cores > 1 else 0
