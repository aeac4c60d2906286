"""The web page's background counts: the first view waits a little, later views take the last
count at once while a recount runs beside them, failures reach the view that waits."""

from __future__ import annotations

import threading

import pytest

from scrapy_imgcache.server.web.background import Background


def test_a_stale_count_is_shown_while_the_recount_runs():
    release = threading.Event()
    calls: list[int] = []

    def count(_key: None) -> int:
        calls.append(1)
        if len(calls) > 1:
            assert release.wait(60)
        return len(calls)

    counts = Background(count, ttl=0.0, wait=30.0)
    assert counts.get(None).value == 1
    during = counts.get(None)  # stale at once (ttl 0): a recount starts, the last count is shown
    assert during.value == 1 and during.running_for >= 0
    release.set()
    for _ in range(600):
        if counts.peek(None) == 2:
            break
        threading.Event().wait(0.05)
    assert counts.peek(None) == 2


def test_a_first_count_that_takes_long_shows_still_counting():
    release = threading.Event()
    counts = Background(lambda _key: release.wait(60), ttl=60.0, wait=0.0)
    shown = counts.get(None)
    assert shown.value is None and shown.running_for >= 0
    release.set()


def test_a_failed_first_count_reaches_the_view_and_the_next_view_tries_again():
    attempts: list[int] = []

    def count(_key: None) -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("database down")
        return 7

    counts = Background(count, ttl=60.0, wait=30.0)
    with pytest.raises(RuntimeError, match="database down"):
        counts.get(None)
    assert counts.get(None).value == 7


def test_at_most_max_running_counts_run_at_once():
    release = threading.Event()
    started: list[int] = []

    def count(key: int) -> int:
        started.append(key)
        release.wait(60)
        return key

    counts = Background(count, ttl=60.0, wait=0.0, max_running=2)
    for key in range(5):
        assert counts.get(key).value is None
    assert counts.running == 2  # the others wait for a free slot (their view says so)
    release.set()
    for _ in range(600):
        if counts.running == 0:
            break
        threading.Event().wait(0.05)
    assert sorted(started) == [0, 1]
    counts.get(2)  # a view after that starts its count
    for _ in range(600):
        if 2 in started:
            break
        threading.Event().wait(0.05)
    assert sorted(started) == [0, 1, 2]
