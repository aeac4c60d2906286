"""Our worker processes (scrapy_imgcache.processes): started by their own entry point with the
crawl's sys.path, ready within a bound or a one-line error, deaf to Ctrl-C, gone with the crawl."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pytest

from scrapy_imgcache.hashing import Inspector
from scrapy_imgcache.processes import WorkerStartError, start_workers
from tests.helpers import (
    REPO,
    broken_worker_start,
    is_worker_process,
    running,
    wait_until,
    worker_processes_of,
)

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")

HASHER = "scrapy_imgcache.workers:hasher"


@pytest.fixture
def echo_module(tmp_path, monkeypatch):
    """A handler module importable only through a sys.path entry added at run time."""
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "echo_worker.py").write_text(
        "import os\n\n\n"
        "def echo(prefix):\n"
        "    return lambda request: prefix + str(os.getpid()).encode() + b':' + request\n"
    )
    monkeypatch.syspath_prepend(str(folder))
    return "echo_worker:echo"


def test_a_worker_imports_its_handler_through_the_crawls_sys_path(echo_module):
    (worker,) = start_workers(1, echo_module, b">")
    try:
        assert worker.call(b"one") == b">%d:one" % worker.pid
        assert worker.call(b"two") == b">%d:two" % worker.pid
    finally:
        worker.close()
    assert worker.process.returncode == 0  # it exited at EOF, it was not killed


def test_a_worker_exits_on_its_own_when_closed_while_a_thread_of_ours_reads_its_socket(echo_module):
    """A crawl's engine has a reader thread blocked on each worker's socket when it closes.
    Closing the socket under that read used to leave it open (Linux), so the worker never saw
    EOF and was killed after the close timeout: every crawl ended 5 s a worker late."""
    (worker,) = start_workers(1, echo_module, b"")
    reader_done = threading.Event()

    def read() -> None:
        try:
            worker.conn.recv_bytes()
        except (EOFError, OSError):
            pass
        reader_done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_until(lambda: _blocked_in_read(reader), "the reader to block on the socket")
    worker.close(timeout=120)  # had it needed the kill, the return code would say -9
    assert worker.process.returncode == 0, "it exited at EOF, it was not killed"
    assert reader_done.wait(60), "our reader was woken too"


def _blocked_in_read(thread: threading.Thread) -> bool:
    """The thread is asleep in the kernel (Linux: /proc), i.e. in its read."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "S"
    except OSError:
        return True  # no /proc: the close must work whatever the reader is doing


@linux_only
def test_a_worker_started_from_a_thread_that_ended_lives_on(echo_module):
    """Linux sends PR_SET_PDEATHSIG when the *thread* that started a process ends: workers are
    started from one thread that lasts, or one started by a pool thread would die with it."""
    started = []
    thread = threading.Thread(target=lambda: started.extend(start_workers(1, echo_module, b"")))
    thread.start()
    thread.join()
    wait_until(lambda: not os.path.exists(f"/proc/self/task/{thread.native_id}"), "the thread to end")
    (worker,) = started
    try:
        assert worker.call(b"x") == b"%d:x" % worker.pid
        assert worker.process.poll() is None
    finally:
        worker.close()


def test_a_worker_ignores_sigint_and_has_a_session_of_its_own(echo_module):
    (worker,) = start_workers(1, echo_module, b"")
    try:
        assert os.getsid(worker.pid) != os.getsid(0)  # a terminal's Ctrl-C reaches the crawl, not it
        os.kill(worker.pid, signal.SIGINT)  # and one sent to it anyway changes nothing
        assert worker.call(b"still here") == b"%d:still here" % worker.pid
    finally:
        worker.close()
    assert worker.process.returncode == 0


def test_a_worker_whose_handler_cannot_be_built_says_why_in_one_line():
    with pytest.raises(WorkerStartError) as err:
        start_workers(2, "scrapy_imgcache.no_such_module:serve", None)
    message = str(err.value)
    assert "\n" not in message
    assert "failed to start: ModuleNotFoundError: No module named 'scrapy_imgcache.no_such_module'" in message


def test_a_worker_that_dies_at_start_is_an_error_not_a_wait(tmp_path, monkeypatch):
    for name, value in broken_worker_start(tmp_path / "site", "die").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(WorkerStartError, match="exited with status 3 before it was ready"):
        start_workers(2, HASHER, Inspector())


@linux_only
def test_a_worker_that_hangs_at_start_is_killed_after_the_bound(tmp_path, monkeypatch):
    for name, value in broken_worker_start(tmp_path / "site", "hang").items():
        monkeypatch.setenv(name, value)
    # (the workers hang whatever the bound and the machine's load: a short one proves the same)
    with pytest.raises(WorkerStartError, match=r"was not ready after 3 s"):
        start_workers(2, HASHER, Inspector(), timeout=3)
    # killed and reaped, not left hanging (those that got as far as the hang left their pid)
    hung = [int(p.name.split("-")[1]) for p in (tmp_path / "site").glob("hung-*")]
    assert not any(running(pid) for pid in hung)
    assert worker_processes_of(os.getpid()) == []


@linux_only
def test_a_worker_dies_with_its_parent_even_when_a_fork_holds_its_socket_open(tmp_path):
    """kill -9 of the crawl: EOF would not reach a worker whose socket a fork of the crawl
    still holds; PR_SET_PDEATHSIG ends it all the same."""
    parent_code = textwrap.dedent(f"""
        import os, time
        from scrapy_imgcache.hashing import Inspector
        from scrapy_imgcache.processes import start_workers

        (worker,) = start_workers(1, {HASHER!r}, Inspector())
        fork = os.fork()
        if fork == 0:
            time.sleep(300)
            os._exit(0)
        print(worker.pid, fork, flush=True)
        time.sleep(300)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, env=env)
    fork = 0
    try:
        assert parent.stdout is not None
        worker, fork = map(int, parent.stdout.readline().split())
        assert is_worker_process(worker)
        parent.kill()
        parent.wait(60)
        wait_until(lambda: not is_worker_process(worker), "the worker to die with its parent")
    finally:
        parent.kill()
        if fork:
            os.kill(fork, signal.SIGKILL)
