"""``python -m scrapy ...`` for the tests, forked from an interpreter that has imported Scrapy.

The suite runs a few hundred ``scrapy crawl`` and ``scrapy imgcache-*`` processes. Each
started as a fresh interpreter spends ~1.7 s of CPU importing Scrapy, Twisted, Pillow,
SQLAlchemy and this package (``python -X importtime``), the same imports every time: a
one-page test crawl took 2.2 s of CPU that way, 0.65 s forked from here (the rest is the
crawl, and its engine worker, a fresh interpreter as in any crawl). Here one *fork server*
per pytest process imports them once and forks a child for each run, which then runs Scrapy's
own command line (``scrapy.cmdline.execute``) in the run's folder, with its environment, its
arguments and its stdin/stdout/stderr, exactly as ``python -m scrapy`` would from there on.

What a test sees is a :class:`Process` shaped like ``subprocess.Popen`` (``pid``, ``stdout``,
``wait``, ``communicate``, ``kill``...): the crawl is a process of its own that starts its own
engine workers, logs, writes its feed and can be killed like any. The fork server is
single-threaded (a fork copies only the calling thread: none is left holding a lock) and has
installed no reactor (Scrapy installs the one the settings name in each child). It exits when
the pytest process that started it goes away.

``IMGCACHE_TEST_FORK=0`` runs every such command as a fresh interpreter instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from scrapy_imgcache.server import process as server_process
from scrapy_imgcache.server.process import SERVER_BIN

REPO = Path(__file__).resolve().parents[1]
FORK = os.environ.get("IMGCACHE_TEST_FORK", "1") != "0"

# what a ``scrapy crawl`` or ``imgcache-server`` imports before it runs anything of a
# project's: packages whose every module is taken (Scrapy's command line imports every
# command; a crawl, the stock middlewares, extensions and download handlers), then single
# modules; never ``twisted.internet.reactor`` (Scrapy installs the one the settings name).
# A module the installed versions lack is passed over. Measured on a one-page crawl: 1.2 s of
# imports before a fork, 0.5 s more after it when only the command line's were taken.
_PRELOAD_PACKAGES = (
    "scrapy.commands",
    "scrapy.core.downloader.handlers",
    "scrapy.downloadermiddlewares",
    "scrapy.spidermiddlewares",
    "scrapy.extensions",
    "scrapy_imgcache.commands",
)
_PRELOAD = (
    "scrapy.cmdline",
    "scrapy.crawler",
    "scrapy.http",
    "scrapy.http.cookies",
    "scrapy.spiders",
    "scrapy.pipelines.files",
    "scrapy.pipelines.images",
    "scrapy.exporters",
    "scrapy.pqueues",
    "scrapy.squeues",
    "scrapy.resolver",
    "scrapy.shell",
    "scrapy.logformatter",
    "scrapy.statscollectors",
    "scrapy.dupefilters",
    "scrapy.utils.test",
    "twisted.web.client",
    "twisted.internet.endpoints",
    "twisted.conch.telnet",
    "tldextract",
    "aiohttp",
    "requests",
    "scrapy_imgcache",
    "scrapy_imgcache.addon",
    "scrapy_imgcache.pipelines",
    "scrapy_imgcache.middleware",
    "scrapy_imgcache.store.sql",
    "scrapy_imgcache.engine.client",
    "scrapy_imgcache.visualsnoop.command",
    "PIL.Image",
    "numpy",
    "uvicorn",
    "fastapi",
    "scrapy_imgcache.server.cli",
    "scrapy_imgcache.server.app",
)
_SKIP = "IMGCACHE_TEST_FORK_SKIP"  # the modules found to install a reactor on import
_HEADER = struct.Struct("!I")


def scrapy_process(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str],
    env: dict[str, str] | None = None,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    text: bool = True,
) -> Process | subprocess.Popen[Any]:
    """``python -m scrapy ARGS`` in ``cwd`` with exactly ``env``, like ``subprocess.Popen``
    (stdin/stdout/stderr: None, ``subprocess.PIPE``, ``DEVNULL``, ``STDOUT`` for stderr, or a
    file descriptor)."""
    env = dict(os.environ) if env is None else env
    if not FORK:
        command = [sys.executable, "-m", "scrapy", *args]
        return subprocess.Popen(command, cwd=cwd, env=env, stdin=stdin, stdout=stdout, stderr=stderr, text=text)
    return Process("scrapy", list(args), str(cwd), env, stdin, stdout, stderr, text)


def run_scrapy(
    args: Sequence[str], *, cwd: str | os.PathLike[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run([python, -m, scrapy, *args], capture_output=True, text=True)``."""
    proc = scrapy_process(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    return subprocess.CompletedProcess(list(args), proc.returncode or 0, out, err)


def launch(command: list[str], *, cwd: Any, env: dict[str, str], stdout: Any = None, stderr: Any = None) -> Any:
    """``subprocess.Popen`` for :func:`scrapy_imgcache.server.process.running`: the installed
    ``imgcache-server`` forked, anything else started as it is."""
    if FORK and command[0] == SERVER_BIN:
        return Process("imgcache-server", command[1:], str(cwd), env, None, stdout, stderr, False)
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=stdout, stderr=stderr)


def imgcache_server(db_url: str, workdir: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """:func:`scrapy_imgcache.server.process.imgcache_server`, forked."""
    return server_process.imgcache_server(db_url, workdir, *args, env=env, launch=launch)


class Process:
    """A forked ``python -m scrapy`` run, with the parts of ``subprocess.Popen`` the tests use."""

    def __init__(
        self,
        main: str,
        args: list[str],
        cwd: str,
        env: dict[str, str],
        stdin: Any,
        stdout: Any,
        stderr: Any,
        text: bool,
    ) -> None:
        self.args = [main, *args]
        self._text = text
        self.returncode: int | None = None
        self.stdin: IO[Any] | None = None
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None
        theirs: list[int] = []  # the child's ends, closed here once sent
        fds = []
        for inherited, (which, spec) in enumerate((("stdin", stdin), ("stdout", stdout), ("stderr", stderr))):
            if spec is None:
                fd = inherited
            elif spec == subprocess.DEVNULL:
                fd = os.open(os.devnull, os.O_RDWR)
                theirs.append(fd)
            elif spec == subprocess.STDOUT:
                fd = fds[1]
            elif spec == subprocess.PIPE:
                read, write = os.pipe()
                mine, fd = (write, read) if which == "stdin" else (read, write)
                theirs.append(fd)
                mode = ("w" if which == "stdin" else "r") + ("" if text else "b")
                options = {"encoding": "utf-8", "errors": "replace"} if text else {"buffering": 0}
                setattr(self, which, open(mine, mode, **options))  # noqa: SIM115 (closed by the caller or at EOF)
            else:
                fd = spec if isinstance(spec, int) else spec.fileno()
            fds.append(fd)
        self._socket = _server().submit({"main": main, "args": args, "cwd": cwd, "env": env}, fds)
        self._channel = self._socket.makefile("rb", buffering=0)  # a line: the pid, then the status
        for fd in theirs:
            os.close(fd)
        self.pid = int(self._line())

    def _line(self, timeout: float | None = None) -> str:
        if timeout is not None and not select.select([self._channel], [], [], max(timeout, 0))[0]:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        line = self._channel.readline()
        if not line:
            raise RuntimeError("the fork server went away")
        return line.decode().strip()

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._channel], [], [], 0)[0]:
            self.wait()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = int(self._line(timeout))
            self._channel.close()
            self._socket.close()
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[Any, Any]:
        """Everything the PIPEs carried until they closed, then the exit status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.stdin is not None:
            self.stdin.close()
        chunks: dict[int, list[bytes]] = {}  # fd -> what it carried
        pipes = {pipe.fileno(): pipe for pipe in (self.stdout, self.stderr) if pipe is not None}
        open_fds = set(pipes)
        while open_fds:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            for fd in select.select(list(open_fds), [], [], left)[0]:
                data = os.read(fd, 65536)
                chunks.setdefault(fd, []).append(data)
                if not data:
                    open_fds.discard(fd)
                    pipes[fd].close()
        self.wait(None if deadline is None else max(deadline - time.monotonic(), 0))
        out: list[Any] = []
        for pipe in (self.stdout, self.stderr):
            fd = next((fd for fd, p in pipes.items() if p is pipe), None)
            data = b"".join(chunks.get(fd, [])) if fd is not None else None
            out.append(data.decode("utf-8", "replace") if data is not None and self._text else data)
        return out[0], out[1]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Server:
    """This pytest process's fork server: a child interpreter, talked to over a Unix socket."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="imgcache-fork-")
        self.address = os.path.join(self.folder, "socket")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        env.pop("SCRAPY_SETTINGS_MODULE", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import tests.forked as f; f.serve()", self.address],
            stdin=subprocess.PIPE,  # its EOF tells the server that this process is gone
            stdout=subprocess.PIPE,
            cwd=self.folder,
            env=env,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if ready != b"ready\n":
            raise RuntimeError(f"the fork server did not start: {ready!r}")
        atexit.register(self.close)

    def submit(self, request: dict[str, Any], fds: list[int]) -> socket.socket:
        """Send a request and the run's stdin/stdout/stderr: the connection it is answered on."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.address)
        payload = json.dumps(request).encode()
        socket.send_fds(conn, [_HEADER.pack(len(payload))], fds)
        conn.sendall(payload)
        return conn

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for name in os.listdir(self.folder):
            os.unlink(os.path.join(self.folder, name))
        os.rmdir(self.folder)


_the_server: _Server | None = None
_server_lock = threading.Lock()


def _server() -> _Server:
    global _the_server
    with _server_lock:
        if _the_server is None or _the_server.proc.poll() is not None:
            _the_server = _Server()
        return _the_server


# ---- the server side -------------------------------------------------------------------


def serve() -> None:
    """Import, listen, fork a child per request, tell each client its child's pid, then its
    exit status (as ``Popen.returncode``: negative for a signal)."""
    import importlib
    import pkgutil

    names = list(_PRELOAD)
    for package in _PRELOAD_PACKAGES:
        with contextlib.suppress(ImportError):
            path = importlib.import_module(package).__path__
            names += [f"{package}.{m.name}" for m in pkgutil.iter_modules(path)]
    skip = set(filter(None, os.environ.get(_SKIP, "").split(",")))
    with warnings.catch_warnings():  # Scrapy's deprecated modules say so on import
        warnings.simplefilter("ignore")
        for name in names:
            if name in skip:
                continue
            with contextlib.suppress(ImportError):  # (an optional dependency, another Scrapy version)
                importlib.import_module(name)
            if "twisted.internet.reactor" in sys.modules:
                # it installs the default reactor on import (Scrapy 2.13's FTP handler does):
                # start again without it, the crawl imports it after installing its own
                os.environ[_SKIP] = ",".join(sorted(skip | {name}))
                os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
    base_path = [p for p in sys.path if p]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sys.argv[1])
    listener.listen(64)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    waiting: dict[int, socket.socket] = {}  # child pid -> its client's connection
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        readable = select.select([listener, wake_read, sys.stdin], [], [])[0]
        if sys.stdin in readable and not os.read(sys.stdin.fileno(), 1):
            return  # the pytest process is gone
        if wake_read in readable:
            os.read(wake_read, 512)
        while waiting:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            conn = waiting.pop(pid)
            conn.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
            conn.close()
        if listener in readable:
            conn, _ = listener.accept()
            head, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 3)
            (length,) = _HEADER.unpack(head)
            payload = b""
            while len(payload) < length:
                payload += conn.recv(length - len(payload))
            request = json.loads(payload)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for fd in (listener.fileno(), wake_read, wake_write, conn.fileno(), sys.stdin.fileno()):
                    os.close(fd)
                for other in waiting.values():
                    other.close()
                _child(request, fds, base_path)
            for fd in fds:
                os.close(fd)
            conn.sendall(b"%d\n" % pid)
            waiting[pid] = conn


def _child(request: dict[str, Any], fds: list[int], base_path: list[str]) -> None:
    """Become ``python -m scrapy ARGS`` run in the request's folder, and never return."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        for fd in set(fds):
            if fd > 2:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # sys.path as ``python -m`` makes it: the folder, then PYTHONPATH, then the rest
        extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [request["cwd"], *extra, *(p for p in base_path if p not in extra and p != str(REPO))]
        if request["main"] == "scrapy":  # python -m scrapy ARGS
            import scrapy
            from scrapy.cmdline import execute

            sys.argv = [os.path.join(os.path.dirname(scrapy.__file__), "__main__.py"), *request["args"]]
            execute(sys.argv)
            code = 0
        else:  # the imgcache-server console script: sys.exit(main())
            from scrapy_imgcache.server.cli import main

            sys.argv = [SERVER_BIN, *request["args"]]
            code = main(request["args"]) or 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
        except Exception as exc:  # noqa: BLE001 - as at the interpreter's exit: said, and status 120
            print(f"Exception ignored in: {sys.stdout!r}\n{type(exc).__name__}: {exc}", file=sys.stderr)
            code = 120
        finally:
            sys.stderr.flush()
            os._exit(code)
