"""The hashing worker processes: same answers as hashing in the thread, refusals typed, deaths survived."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from scrapy_imgcache.errors import NotAnImage, TruncatedImage
from scrapy_imgcache.hashing import Inspector, content_hash
from scrapy_imgcache.workers import HashWorkers
from tests.helpers import distinct_jpegs, noise_bytes

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
    assert len({w.process.pid for w in idle_workers(workers)}) == 2


def test_killed_workers_are_replaced_and_their_images_hashed_in_the_thread(workers):
    workers.start()
    before = idle_workers(workers)
    for worker in before:
        os.kill(worker.process.pid, signal.SIGKILL)
        worker.process.join(5)
    for data in JPEGS[:4]:  # the first two go to the dead workers, which are replaced
        assert hashed(workers, data) == Inspector().inspect(data)
    after = idle_workers(workers)
    assert not {w.process.pid for w in after} & {w.process.pid for w in before}
    assert all(w.process.is_alive() for w in after)


def test_an_image_in_flight_on_a_dying_worker_is_hashed_in_its_thread(workers):
    workers.start()
    victim = idle_workers(workers)[0]
    send_bytes = victim.conn.send_bytes

    def send_then_die(message):
        send_bytes(message)
        os.kill(victim.process.pid, signal.SIGKILL)

    victim.conn.send_bytes = send_then_die
    big = distinct_jpegs(1, size=(1600, 1200))[0]  # long enough to be killed mid-decode
    assert hashed(workers, big) == Inspector().inspect(big)
    assert victim not in idle_workers(workers)


def test_close_stops_the_processes():
    pool = HashWorkers(2, Inspector())
    assert hashed(pool, JPEGS[0]) == Inspector().inspect(JPEGS[0])
    workers = idle_workers(pool)
    assert all(w.process.is_alive() for w in workers)
    pool.close()
    assert not any(w.process.is_alive() for w in workers)
