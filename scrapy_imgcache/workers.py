"""Worker processes that decode and hash images, one a core.

Pillow keeps much of a JPEG decode and of the RGB->L conversion under the GIL, so threads of
one process hash at barely more than one core's speed (docs/crawl-benchmark.md: 1 thread
70-77 images/s, 2 threads 69-73); worker processes use every core.

The workers are :mod:`scrapy_imgcache.processes` workers (their own entry point: they never
run the user's script, nor outlive the crawl). A thread that needs an image hashed takes an
idle worker, sends it the raw bytes (no pickling of the body, no feeder or manager threads:
the whole hop costs ~0.2 ms of the crawl process's CPU), and blocks, GIL released, until the
small pickled :class:`ImageInfo` or :class:`InvalidImage` comes back. A worker that dies is
replaced and that image is hashed in the calling thread instead. Workers that cannot start
leave the hashing to the calling threads, with one WARNING.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import threading

from .hashing import ImageInfo, Inspector, md5_hex
from .processes import Handler, WorkerProcess, WorkerStartError, start_workers

logger = logging.getLogger(__name__)

_HASH_LEN = 64  # hex digits of the BLAKE2b-256 content hash sent ahead of the bytes (then a
# byte saying whether to send the bytes' MD5 back too)
_HASHER = f"{__name__}:hasher"


class HashWorkers:
    """A fixed set of worker processes running ``inspector.inspect``."""

    def __init__(self, processes: int, inspector: Inspector) -> None:
        self.processes = processes
        self.inspector = inspector
        #: a worker, or None for a place whose worker could not be started
        self._idle: queue.SimpleQueue[WorkerProcess | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        #: workers could not start: images are hashed in the calling threads from then on
        self.failed = False

    def start(self) -> None:
        """Start the missing workers and wait until each is ready (blocking)."""
        if self._started == self.processes:
            return
        with self._lock:
            missing = self.processes - self._started
            if missing:
                workers = self._start(missing)
                for i in range(missing):
                    self._idle.put(workers[i] if workers else None)
                self._started = self.processes

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
        answer = None if self.failed else self._ask(content_hash.encode("ascii") + (b"1" if checksum else b"0") + data)
        if answer is None:  # no worker could take it: hash in this thread
            return self.inspector.inspect(data, known_hash=content_hash), None
        result: ImageInfo | Exception
        result, md5 = pickle.loads(answer)
        if isinstance(result, BaseException):
            raise result
        return result, md5

    def _ask(self, request: bytes) -> bytes | None:
        """An idle worker's answer; None when its place has no worker (it could not be
        replaced) or it died (it is replaced)."""
        worker = self._idle.get()
        if worker is None:
            self._idle.put(None)
            return None
        try:
            answer = worker.call(request)
        except (EOFError, OSError):  # the worker died (killed, out of memory)
            worker.close(timeout=0)
            with self._lock:
                replacement = self._start(1)
            self._idle.put(replacement[0] if replacement else None)
            return None
        self._idle.put(worker)
        return answer

    def _start(self, count: int) -> list[WorkerProcess] | None:
        """``count`` ready workers, or None (after one WARNING) when they cannot start."""
        if self.failed:
            return None
        try:
            return start_workers(count, _HASHER, self.inspector)
        except WorkerStartError as exc:
            self.failed = True
            logger.warning(
                "imgcache: the hashing worker processes could not start (%s); "
                "hashing images in threads instead, which is slower (IMGCACHE_HASH_PROCESSES)",
                exc,
            )
            return None

    def close(self) -> None:
        with self._lock:
            started, self._started = self._started, 0
        for _ in range(started):
            worker = self._idle.get()
            if worker is not None:
                worker.close()


def hasher(inspector: Inspector) -> Handler:
    """The workers' side: the content hash, the checksum flag and the bytes in; the pickled
    ``(ImageInfo or the refusal, MD5 or None)`` out."""

    def hash_one(message: bytes) -> bytes:
        chash, checksum = message[:_HASH_LEN].decode("ascii"), message[_HASH_LEN : _HASH_LEN + 1] == b"1"
        data = memoryview(message)[_HASH_LEN + 1 :]
        try:
            result: ImageInfo | Exception = inspector.inspect(bytes(data), known_hash=chash)
        except Exception as exc:  # noqa: BLE001 - every refusal goes back to the caller
            result = exc
        md5 = md5_hex(data) if checksum and not isinstance(result, Exception) else None
        return pickle.dumps((result, md5), pickle.HIGHEST_PROTOCOL)

    return hash_one


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
    """One worker a core, none on a single core (a pipe hop would only add to the work) nor
    off POSIX systems (the workers need one)."""
    if os.name != "posix":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if cores > 1 else 0
