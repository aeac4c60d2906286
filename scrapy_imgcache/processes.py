"""Our worker processes: started by their own entry point, bound to the crawl's life.

multiprocessing's "spawn" runs the parent's ``__main__`` again in every child (to find what
was pickled there): a script that runs a ``CrawlerProcess`` without an
``if __name__ == "__main__":`` guard, as Scrapy's own "run from a script" example does,
crawled again in each worker, whose own workers then failed to bootstrap while the parent
waited for them for ever. "fork" would copy a process that runs a reactor and threads. So a
worker here is a fresh interpreter that imports only this module and the one it serves::

    python -c BOOTSTRAP <crawl's pid> <socket fd> <module:factory> <crawl's sys.path...>

The bootstrap puts the crawl's ``sys.path`` in place before it imports anything of ours, as
spawn does, so that what the crawl imports the worker imports too. The two talk over a
socketpair with multiprocessing's framing (``Connection.send_bytes``: a length, then the
bytes; the same cost as ``multiprocessing.Pipe``, which is a socketpair too): the crawl sends
the pickled ``setup``, the worker builds its handler with ``factory(setup)`` and answers
"ready"; then every request is bytes in, the handler's bytes out, in order.

A worker never outlives the crawl, and never speaks on its own:

- it exits at EOF on its socket, which the kernel closes however the crawl ends (also a
  ``kill -9``); on Linux, PR_SET_PDEATHSIG also kills it at once, even in the middle of a
  request or when a fork of the crawl still holds the socket;
- it runs in its own session and ignores SIGINT: a terminal's Ctrl-C reaches the crawl alone,
  which decides (Scrapy's graceful shutdown), and no worker prints a KeyboardInterrupt;
- its stdout is /dev/null (a crawl may write its feed to stdout); its stderr is the crawl's.

A worker that is not ready within :data:`READY_TIMEOUT`, or that dies first, is a
:class:`WorkerStartError` that says why, never a wait.
"""

from __future__ import annotations

import atexit
import ctypes
import importlib
import os
import pickle
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

#: seconds a worker has to say "ready"; one is ready in ~0.1-0.3 s (an interpreter, our imports)
READY_TIMEOUT = 60.0
_CLOSE_TIMEOUT = 5.0  # seconds a closed worker has to finish its request and exit before it is killed
_READY = b"ready"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

_BOOTSTRAP = (
    "import sys; sys.path[:] = sys.argv[4:]; "
    "from scrapy_imgcache.processes import _worker_main; _worker_main(*sys.argv[1:4])"
)

Handler = Callable[[bytes], bytes]
#: the request id's size in the messages of a handler that serves several requests at once
ID_BYTES = 8


class WorkerStartError(RuntimeError):
    """A worker process could not start: the message says why, in one line."""


class WorkerProcess:
    """One worker process running ``factory(setup)``'s handler; use :func:`start_workers`.

    :meth:`call` is for one thread at a time; it raises EOFError or OSError when the worker
    has died (killed, out of memory).
    """

    def __init__(self, factory: str) -> None:
        if os.name != "posix" or not sys.executable or getattr(sys, "frozen", False):
            # a frozen application's executable would run the application again, not our code
            raise WorkerStartError("worker processes need a POSIX system and a Python interpreter")
        self.factory = factory
        ours, theirs = socket.socketpair()
        path = [p for p in sys.path if isinstance(p, str)]  # what the import system reads of it
        args = [sys.executable, "-c", _BOOTSTRAP, str(os.getpid()), str(theirs.fileno()), factory, *path]
        try:
            self.process = _launch(args, theirs.fileno())
        except (OSError, ValueError) as exc:
            ours.close()
            raise WorkerStartError(f"could not run {sys.executable}: {exc}") from exc
        finally:
            theirs.close()  # the worker's copy only: EOF reaches us once the worker is gone
        self.conn = Connection(ours.detach())
        self._hanging_up = threading.Lock()  # our reader thread and the closer may both hang up
        with _LOCK:
            _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def handshake(self, setup: object, deadline: float, bound: float) -> None:
        """Send ``setup`` and wait until ``deadline`` (``time.monotonic()``; ``bound`` seconds
        after the start) for the worker's "ready"."""
        try:
            self.conn.send_bytes(pickle.dumps(setup, pickle.HIGHEST_PROTOCOL))
            if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                raise WorkerStartError(f"{self} was not ready after {bound:.0f} s")
            answer = self.conn.recv_bytes()
        except (EOFError, OSError):
            raise WorkerStartError(f"{self} exited with status {self._exit_status()} before it was ready") from None
        if answer != _READY:
            raise WorkerStartError(f"{self} failed to start: {answer.decode(errors='replace')}")

    def call(self, request: bytes) -> bytes:
        """The handler's answer to ``request`` (blocking, GIL released while the worker works)."""
        self.conn.send_bytes(request)
        return self.conn.recv_bytes()

    def close(self, timeout: float = _CLOSE_TIMEOUT) -> None:
        """Close the socket (the worker exits at EOF once its request is done) and reap it,
        killing it after ``timeout`` seconds."""
        with _LOCK:
            _LIVE.discard(self)
        self.hang_up()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def hang_up(self) -> None:
        """End the conversation: shut the socket down, then close it. Closing alone is not
        enough while another thread of ours is blocked reading it (a channel's reader): Linux
        keeps the socket open under that read, the worker never sees EOF, and each close
        waited its whole timeout (5 s a worker, measured) before the kill."""
        with self._hanging_up:
            if not self.conn.closed:
                self._shut_and_close()

    def _shut_and_close(self) -> None:
        try:
            twin = socket.socket(fileno=os.dup(self.conn.fileno()))
        except OSError:  # already gone
            pass
        else:
            with twin:
                try:
                    twin.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.conn.close()

    def _exit_status(self) -> int | None:
        try:
            return self.process.wait(_CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:  # pragma: no cover - it closed its socket but lives on
            return None

    def __str__(self) -> str:
        return f"worker process {self.pid} ({self.factory})"


def start_workers(count: int, factory: str, setup: object, timeout: float = READY_TIMEOUT) -> list[WorkerProcess]:
    """``count`` workers serving ``factory(setup)`` (``"module:function"``, which returns the
    handler: request bytes in, answer bytes out), started together and each ready within
    ``timeout`` seconds; else :class:`WorkerStartError`, and none of them is left running."""
    workers: list[WorkerProcess] = []
    try:
        for _ in range(count):
            workers.append(WorkerProcess(factory))
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.handshake(setup, deadline, timeout)
    except BaseException:
        for worker in workers:
            worker.close(timeout=0)
        raise
    return workers


# -- the crawl's side: one launching thread, and the workers closed at exit --------------------

_LIVE: set[WorkerProcess] = set()
_LOCK = threading.Lock()
_LAUNCHES: queue.SimpleQueue[tuple[list[str], int, Future[subprocess.Popen[bytes]]]] = queue.SimpleQueue()
_launcher: threading.Thread | None = None


def _launch(args: list[str], fd: int) -> subprocess.Popen[bytes]:
    """Popen, always from one thread that lives as long as the process: Linux sends a child's
    PR_SET_PDEATHSIG when the *thread* that started it ends, and a thread of Scrapy's pools
    (or a caller's own) can end long before the crawl does."""
    global _launcher
    done: Future[subprocess.Popen[bytes]] = Future()
    with _LOCK:
        if _launcher is None or not _launcher.is_alive():  # the first worker, or in a fork's child
            _launcher = threading.Thread(target=_run_launches, name="imgcache-launcher", daemon=True)
            _launcher.start()
        _LAUNCHES.put((args, fd, done))
    return done.result()


def _run_launches() -> None:
    while True:
        args, fd, done = _LAUNCHES.get()
        try:
            process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(fd,), start_new_session=True
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            done.set_exception(exc)
        else:
            done.set_result(process)


@atexit.register
def _close_all() -> None:
    """Workers still open when the interpreter exits: all told at once, then reaped."""
    with _LOCK:
        workers = list(_LIVE)
    for worker in workers:
        worker.hang_up()
    for worker in workers:
        worker.close()


# -- the worker's side --------------------------------------------------------------------------


def _worker_main(parent: str, fd: str, factory: str) -> None:
    """The worker process's entry point (see the bootstrap above)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(int(parent))
    conn = Connection(int(fd))
    try:
        setup = pickle.loads(conn.recv_bytes())
        module, _, name = factory.partition(":")
        handler: Handler = getattr(importlib.import_module(module), name)(setup)
    except EOFError:
        return
    except Exception as exc:  # noqa: BLE001 - told to the crawl, in one line
        conn.send_bytes(f"{type(exc).__name__}: {exc}".encode())
        return
    conn.send_bytes(_READY)
    threads = getattr(handler, "concurrency", 1)
    if threads > 1:
        _serve_concurrently(conn, handler, threads)
        return
    while True:
        try:
            request = conn.recv_bytes()
        except (EOFError, OSError):  # the crawl closed us, or is gone
            return
        answer = handler(request)
        try:
            conn.send_bytes(answer)
        except OSError:
            return


def _serve_concurrently(conn: Connection, handler: Any, threads: int) -> None:
    """A handler with a ``concurrency`` above 1 takes that many requests at once. A request
    is two frames: an 8-byte id and the request proper, then a body (a raw image, never
    copied into the first frame: a 200 KB image costs the crawl no copy); ``handler(request,
    body)`` answers it, and the answer goes back behind the same id, in the order answers are
    done. (A worker waits on its database and disk as much as it computes; its threads keep
    its core busy meanwhile.)"""
    from concurrent.futures import ThreadPoolExecutor

    sending = threading.Lock()

    def answer(request: bytes, body: bytes) -> None:
        reply = request[:ID_BYTES] + handler(request[ID_BYTES:], body)
        with sending:
            try:
                conn.send_bytes(reply)
            except OSError:  # the crawl is gone: the reading loop ends too
                pass

    with ThreadPoolExecutor(threads, thread_name_prefix="imgcache-worker") as pool:
        while True:
            try:
                request, body = conn.recv_bytes(), conn.recv_bytes()
            except (EOFError, OSError):  # the crawl closed us, or is gone
                return
            pool.submit(answer, request, body)


def _die_with(parent: int) -> None:
    """Be killed when the crawl process ends (Linux); EOF on the socket is the portable path."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: EOF still ends us
            pass
    if os.getppid() != parent:  # the crawl died before prctl took effect
        os._exit(0)
