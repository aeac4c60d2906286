"""The hashing worker processes: same answers as hashing in the thread, refusals typed, deaths survived."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from scrapy_imgcache.errors import NotAnImage, TruncatedImage
from scrapy_imgcache.hashing import Inspector, content_hash
from scrapy_imgcache.workers import HashWorkers

from .photos import distinct_jpegs, noise_bytes

JPEGS = distinct_jpegs(6)


@pytest.fixture
def workers():
    pool = HashWorkers(2, Inspector())
    yield pool
    pool.close()


def hashed(pool: HashWorkers, data: bytes):
    return pool.inspect(data, content_hash(data))


def worker_pids(pool: HashWorkers) -> list[int]:
    """The idle workers' process ids (call with no image in flight)."""
    idle = [pool._idle.get() for _ in range(pool.processes)]
    for worker in idle:
        pool._idle.put(worker)
    return [w.process.pid for w in idle]


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
    assert len(set(worker_pids(workers))) == 2


def test_a_killed_worker_is_replaced_and_no_image_is_lost(workers):
    workers.start()
    before = worker_pids(workers)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    for data in JPEGS[:4]:  # hashed in the thread while the dead workers are replaced
        assert hashed(workers, data) == Inspector().inspect(data)
    after = worker_pids(workers)
    assert len(after) == 2 and not set(after) & set(before)
    assert hashed(workers, JPEGS[5]) == Inspector().inspect(JPEGS[5])


def test_close_stops_the_processes():
    pool = HashWorkers(2, Inspector())
    pool.start()
    idle = [pool._idle.get() for _ in range(2)]
    for worker in idle:
        assert worker.process.is_alive()
        pool._idle.put(worker)
    pool.close()
    assert not any(w.process.is_alive() for w in idle)
