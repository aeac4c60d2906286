"""The hashing worker processes: same answers as hashing in the thread, refusals typed, deaths and
failed starts survived."""

from __future__ import annotations

import logging
import os
import signal
import threading

import pytest

from scrapy_imgcache.errors import NotAnImage, TruncatedImage
from scrapy_imgcache.hashing import Inspector, content_hash
from scrapy_imgcache.workers import HashWorkers
from tests.helpers import broken_worker_start, distinct_jpegs, noise_bytes, wait_until, worker_processes_of

JPEGS = distinct_jpegs(6)


@pytest.fixture
def workers():
    pool = HashWorkers(2, Inspector())
    yield pool
    pool.close()


def hashed(pool: HashWorkers, data: bytes):
    return pool.inspect(data, content_hash(data))


def idle_workers(pool: HashWorkers) -> list:
    """The workers, in the order they will be used (call with no image in flight)."""
    idle = [pool._idle.get() for _ in range(pool.processes)]
    for worker in idle:
        pool._idle.put(worker)
    return idle


def test_answers_are_those_of_the_inspector(workers):
    for data in JPEGS:
        assert hashed(workers, data) == Inspector().inspect(data)


def test_refusals_come_back_typed(workers):
    with pytest.raises(NotAnImage):
        hashed(workers, noise_bytes(5000))
    with pytest.raises(TruncatedImage):
        hashed(workers, JPEGS[0][: len(JPEGS[0]) // 2])
    assert hashed(workers, JPEGS[1]).content_hash == content_hash(JPEGS[1])  # still serving


def test_many_threads_share_the_workers(workers):
    results: dict[int, object] = {}

    def run(i: int) -> None:
        results[i] = hashed(workers, JPEGS[i % len(JPEGS)])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == Inspector().inspect(JPEGS[i % len(JPEGS)]) for i in range(24))
    assert len({w.pid for w in idle_workers(workers)}) == 2


def test_killed_workers_are_replaced_and_their_images_hashed_in_the_thread(workers):
    workers.start()
    before = idle_workers(workers)
    for worker in before:
        os.kill(worker.pid, signal.SIGKILL)
        worker.process.wait(60)
    for data in JPEGS[:4]:  # the first two go to the dead workers, which are replaced
        assert hashed(workers, data) == Inspector().inspect(data)
    after = idle_workers(workers)
    assert not {w.pid for w in after} & {w.pid for w in before}
    assert all(w.process.poll() is None for w in after)


def test_an_image_in_flight_on_a_dying_worker_is_hashed_in_its_thread(workers):
    workers.start()
    victim = idle_workers(workers)[0]
    send_bytes = victim.conn.send_bytes

    def send_then_die(message):
        send_bytes(message)
        os.kill(victim.pid, signal.SIGKILL)

    victim.conn.send_bytes = send_then_die
    big = distinct_jpegs(1, size=(1600, 1200))[0]  # long enough to be killed mid-decode
    assert hashed(workers, big) == Inspector().inspect(big)
    assert victim not in idle_workers(workers)


def test_close_stops_the_processes():
    pool = HashWorkers(2, Inspector())
    assert hashed(pool, JPEGS[0]) == Inspector().inspect(JPEGS[0])
    workers = idle_workers(pool)
    assert all(w.process.poll() is None for w in workers)
    pool.close()
    assert [w.process.returncode for w in workers] == [0, 0]  # they exited at EOF, none was killed


def fallback_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not start" in r.getMessage()]


def test_workers_that_die_at_start_leave_the_hashing_to_the_threads(tmp_path, monkeypatch, caplog):
    for name, value in broken_worker_start(tmp_path / "site", "die").items():
        monkeypatch.setenv(name, value)
    pool = HashWorkers(2, Inspector())
    try:
        for data in JPEGS[:3]:
            assert hashed(pool, data) == Inspector().inspect(data)
        assert pool.failed
        (warning,) = fallback_warnings(caplog)  # one line, which says why
        assert "exited with status 3 before it was ready" in warning
        assert "hashing images in threads instead" in warning
        assert worker_processes_of(os.getpid()) == []
    finally:
        pool.close()


def test_a_dead_worker_that_cannot_be_replaced_leaves_hashing_to_the_threads(workers, tmp_path, monkeypatch, caplog):
    workers.start()
    for name, value in broken_worker_start(tmp_path / "site", "die").items():
        monkeypatch.setenv(name, value)  # from now on, a worker dies at start
    before = idle_workers(workers)
    os.kill(before[0].pid, signal.SIGKILL)
    before[0].process.wait(60)
    for data in JPEGS:
        assert hashed(workers, data) == Inspector().inspect(data)
    assert workers.failed
    assert len(fallback_warnings(caplog)) == 1
    workers.close()  # the place left without a worker does not hold it up
    wait_until(lambda: worker_processes_of(os.getpid()) == [], "the workers to be gone")
