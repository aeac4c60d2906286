"""``imgcache-server`` as a child process on a free loopback port, for as long as a block runs.

What the tests, the benchmarks (and a project's own integration tests) start a real service
with: the installed ``imgcache-server`` beside this Python, stopped with SIGINT (as a user's
Ctrl-C) when the block ends. Needs the ``server`` extra (httpx asks ``/health``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVER_BIN = str(Path(sys.executable).with_name("imgcache-server"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    files: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not become healthy in {timeout}s:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


#: how a server process is started: ``subprocess.Popen``'s signature (a test suite may start
#: it another way, e.g. forked from an interpreter that has imported the server already)
Launch = Callable[..., "subprocess.Popen[bytes]"]


@contextmanager
def running(
    command: Sequence[str],
    url: str,
    workdir: Path,
    files: Path,
    env: dict[str, str] | None = None,
    launch: Launch = subprocess.Popen,
) -> Iterator[LiveServer]:
    """Run ``command`` until the block ends; it must answer ``{url}/health``."""
    log = workdir / f"server-{url.rsplit(':', 1)[-1]}.log"
    with log.open("wb") as out:
        process = launch(
            list(command), stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env={**os.environ, **(env or {})}
        )
    try:
        wait_healthy(url, process, log)
        yield LiveServer(url, process, log, files)
    finally:
        stop(process)


@contextmanager
def imgcache_server(
    db_url: str, workdir: Path, *args: str, env: dict[str, str] | None = None, launch: Launch = subprocess.Popen
) -> Iterator[LiveServer]:
    """``imgcache-server --db db_url --files workdir/files`` on a free port."""
    port = free_port()
    files = workdir / "files"
    command = [SERVER_BIN, "--db", db_url, "--files", str(files), "--port", str(port), "--log-level", "warning", *args]
    with running(command, f"http://127.0.0.1:{port}", workdir, files, env, launch) as server:
        yield server
