"""The crawl's side of the engine: its requests to the workers, awaited on the reactor.

:class:`ProcessEngine` hands each request to a worker process over its socket and awaits the
answer without a thread hop: a writer thread sends (a send may wait for the worker to read),
a reader thread receives and wakes the awaiting coroutine. Per image that costs the crawl
process a pickle of a few hundred bytes, two socket calls made with the GIL released and a
wake-up of the loop, instead of the store's whole work under its GIL.

A worker that dies (killed, out of memory) fails none of its images: its requests in flight
go to another worker, or to :class:`ThreadEngine` in the crawl process when none is left,
and it is replaced. Workers that cannot start at all leave the work to
:class:`ThreadEngine`, with one WARNING. Crawlers of one process with the same settings
share one set of workers.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import pickle
import queue
import struct
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .._compat import in_thread
from ..processes import ID_BYTES, WorkerProcess, WorkerStartError, start_workers
from ..store.blobs import open_blob_store
from . import protocol
from .service import CacheService, ViewSpec
from .threads import Gathered
from .worker import EngineSetup

if TYPE_CHECKING:
    from ..config import ImgCacheConfig
    from ..store.base import Store

logger = logging.getLogger(__name__)
_ID = struct.Struct("<Q")
_FACTORY = "scrapy_imgcache.engine.worker:serve"
Deliver = Callable[[bool, Any], None]


class Engine(Protocol):
    """Where the crawl's per-image cache work runs (:class:`CacheService`'s operations)."""

    async def call(self, operation: str, *args: Any, body: bytes = b"") -> Any: ...

    def close(self) -> None: ...


class WorkerGone(ConnectionError):
    """The worker died with the request in flight."""


class ThreadEngine:
    """The operations run in the crawl process's threads (no worker processes)."""

    def __init__(self, service: CacheService, owns_store: bool = True) -> None:
        self.service = service
        self.owns_store = owns_store
        #: the lookups of one turn (an item's image URLs) share one thread hop
        self._answers = Gathered(service.answer)

    async def call(self, operation: str, *args: Any, body: bytes = b"") -> Any:
        if operation == "answer":
            return await self._answers(*args)
        method = getattr(self.service, operation)
        return await (in_thread(method, body, *args) if operation == "store_download" else in_thread(method, *args))

    def close(self) -> None:
        if self.owns_store:
            self.service.close()


class _Channel:
    """One worker process, with requests in flight matched to their answers by id."""

    def __init__(self, worker: WorkerProcess, on_death: Callable[[_Channel], None]) -> None:
        self.worker = worker
        self._on_death = on_death
        self._pending: dict[int, Deliver] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[tuple[bytes, bytes] | None] = queue.SimpleQueue()
        self.alive = True
        #: close() was called (the reader's EOF is then ours, not a death)
        self.closed = False
        for target, name in ((self._write, "writer"), (self._read, "reader")):
            threading.Thread(target=target, name=f"imgcache-engine-{name}-{worker.pid}", daemon=True).start()

    @property
    def load(self) -> int:
        return len(self._pending)

    def submit(self, message: bytes, body: bytes, deliver: Deliver) -> bool:
        """Send ``message`` and ``body`` (two frames: the body is not copied); ``deliver(ok,
        answer bytes or exception)`` is called from the reader thread. False when the worker
        is gone."""
        with self._lock:
            if not self.alive:
                return False
            request_id = next(self._ids)
            self._pending[request_id] = deliver
        self._outbox.put((_ID.pack(request_id) + message, body))
        return True

    def _write(self) -> None:
        while (frames := self._outbox.get()) is not None:
            try:
                self.worker.conn.send_bytes(frames[0])
                self.worker.conn.send_bytes(frames[1])
            except OSError:  # the worker is gone: the reader hears it too
                return

    def _read(self) -> None:
        conn = self.worker.conn
        while True:
            try:
                reply = conn.recv_bytes()
            except (EOFError, OSError):
                break
            (request_id,) = _ID.unpack_from(reply)
            with self._lock:
                deliver = self._pending.pop(request_id, None)
            if deliver is not None:
                deliver(True, reply[ID_BYTES:])
        with self._lock:
            closed = self.closed
            self.alive, pending, self._pending = False, self._pending, {}
        for deliver in pending.values():
            deliver(False, WorkerGone(f"{self.worker} died"))
        self._outbox.put(None)
        if not closed:  # not hung up by close(): the worker died
            self._on_death(self)

    def close(self) -> None:
        with self._lock:
            self.alive, self.closed = False, True
        self._outbox.put(None)
        self.worker.close()


class ProcessEngine:
    """The operations run in worker processes (see the module's docstring)."""

    def __init__(self, setup: EngineSetup, workers: list[WorkerProcess], fallback: Callable[[], ThreadEngine]) -> None:
        self.setup = setup
        self._fallback_factory = fallback
        self._fallback: ThreadEngine | None = None
        self._lock = threading.Lock()
        self.channels = [_Channel(w, self._died) for w in workers]

    async def call(self, operation: str, *args: Any, body: bytes = b"") -> Any:
        message = protocol.request(operation, args)
        for _ in range(2):  # a request whose worker died goes to another one, once
            channel = self._pick()
            if channel is None:
                break
            waiter, deliver = _waiter()
            if not channel.submit(message, body, deliver):
                continue
            try:
                return protocol.parse_answer(await waiter)
            except WorkerGone:
                continue
        return await self._local().call(operation, *args, body=body)

    def _pick(self) -> _Channel | None:
        live = [c for c in self.channels if c.alive]
        return min(live, key=lambda c: c.load) if live else None

    def _local(self) -> ThreadEngine:
        with self._lock:
            if self._fallback is None:
                logger.warning("imgcache: no engine worker process is left; the cache's work runs in threads")
                self._fallback = self._fallback_factory()
            return self._fallback

    def _died(self, channel: _Channel) -> None:
        """From the dead worker's reader thread: reaped, and replaced when it can be."""
        channel.worker.close(timeout=0)
        with self._lock:
            if channel not in self.channels:  # closed on purpose
                return
            self.channels.remove(channel)
        logger.warning("imgcache: %s died; starting another", channel.worker)
        try:
            (worker,) = start_workers(1, _FACTORY, self.setup)
        except WorkerStartError as exc:
            logger.warning("imgcache: could not replace it: %s", exc)
            return
        with self._lock:
            self.channels.append(_Channel(worker, self._died))

    def close(self) -> None:
        with self._lock:
            channels, self.channels = self.channels, []
            fallback, self._fallback = self._fallback, None
        for channel in channels:
            channel.close()
        if fallback is not None:
            fallback.close()


def _waiter() -> tuple[Any, Deliver]:
    """An awaitable, and the thread-safe function that settles it."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return _deferred_waiter()
    future: asyncio.Future[bytes] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not future.done():
            future.set_result(value) if ok else future.set_exception(value)

    def deliver(ok: bool, value: Any) -> None:
        loop.call_soon_threadsafe(settle, ok, value)

    return future, deliver


def _deferred_waiter() -> tuple[Any, Deliver]:
    """Under Twisted's own reactors (no asyncio loop): a Deferred, settled in the reactor."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    deferred: Deferred[bytes] = Deferred()

    def settle(ok: bool, value: Any) -> None:
        deferred.callback(value) if ok else deferred.errback(Failure(value))  # type: ignore[no-untyped-call]

    def deliver(ok: bool, value: Any) -> None:
        reactor.callFromThread(settle, ok, value)

    return deferred, deliver


# -- one set of workers per process and settings -----------------------------------------------

_SHARED: dict[bytes, tuple[Engine, int]] = {}
_SHARED_LOCK = threading.Lock()


def open_engine(config: ImgCacheConfig, views: Mapping[str, ViewSpec], store: Store) -> Engine:
    """The engine for these settings, started or shared (blocking: workers start); pair with
    :func:`release_engine`. Without worker processes the work runs in threads, on ``store``
    (the caller's, which it closes itself)."""
    if config.hash_processes <= 0:
        opened = {key: open_blob_store(v.uri, v.options, create=True, durable=False) for key, v in views.items()}
        return ThreadEngine(CacheService(store, config, opened), owns_store=False)
    key = pickle.dumps((config, dict(views)), pickle.HIGHEST_PROTOCOL)
    with _SHARED_LOCK:
        shared = _SHARED.get(key)
        if shared is not None:
            _SHARED[key] = (shared[0], shared[1] + 1)
            return shared[0]
        engine = _start(config, views)
        _SHARED[key] = (engine, 1)
        return engine


def release_engine(engine: Engine) -> None:
    """One user fewer; the last one closes it (blocking)."""
    with _SHARED_LOCK:
        for key, (shared, users) in list(_SHARED.items()):
            if shared is engine:
                if users > 1:
                    _SHARED[key] = (shared, users - 1)
                    return
                del _SHARED[key]
    engine.close()


def _start(config: ImgCacheConfig, views: Mapping[str, ViewSpec]) -> Engine:
    def in_threads(lock_path: str | None = None) -> ThreadEngine:
        return ThreadEngine(CacheService.open(config, views, lock_path))

    processes = config.hash_processes
    fd, lock_path = tempfile.mkstemp(prefix="imgcache-decide-")
    os.close(fd)
    setup = EngineSetup(config, dict(views), lock_path)
    try:
        workers = start_workers(processes, _FACTORY, setup)
    except WorkerStartError as exc:
        os.unlink(lock_path)
        logger.warning(
            "imgcache: the engine's worker processes could not start (%s); the cache's work runs in "
            "threads instead, which is slower (IMGCACHE_HASH_PROCESSES)",
            exc,
        )
        return in_threads()
    return _Owned(ProcessEngine(setup, workers, functools.partial(in_threads, lock_path)), lock_path)


class _Owned:
    """A process engine and its lock file, removed when it closes."""

    def __init__(self, engine: ProcessEngine, lock_path: str) -> None:
        self.engine = engine
        self.lock_path = lock_path

    async def call(self, operation: str, *args: Any, body: bytes = b"") -> Any:
        return await self.engine.call(operation, *args, body=body)

    def close(self) -> None:
        self.engine.close()
        try:
            os.unlink(self.lock_path)
        except FileNotFoundError:
            pass
