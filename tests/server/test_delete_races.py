"""Several clients deleting one image at once, against a real server process over SQLite,
PostgreSQL and MariaDB: exactly one of them is told it deleted it, the others that it was not
there (on PostgreSQL each of them used to get a 204, in 28 trials of 30), and nothing is left.
The same through the VisualSnoop API, for one image id of a collection."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.utils import formatdate

import httpx
import pytest

from scrapy_imgcache.store.blobs import hash_of_key
from tests.helpers import DATABASES, fresh_jpegs, fresh_url

from .vsnoop import PREFIX, Deployment, deployed, signed_headers

TRIALS = 10  # the race it guards showed in 28 trials of 30
THREADS = 6


@pytest.fixture(scope="module", params=DATABASES)
def deployment(request, tmp_path_factory) -> Iterator[Deployment]:
    with deployed(request.param, tmp_path_factory.mktemp(f"deletes-{request.param}")) as found:
        yield found


def at_once(url: str, send: Callable[[httpx.Client, int], httpx.Response]) -> Counter[int]:
    """The statuses of THREADS requests released together, each from a client whose connection
    is already open (so none of them is held back by a TCP handshake)."""
    barrier = threading.Barrier(THREADS)
    statuses: list[int] = []

    def run(i: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            http.get("/health").raise_for_status()
            barrier.wait(timeout=60)
            statuses.append(send(http, i).status_code)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(statuses) == THREADS, statuses
    return Counter(statuses)


def test_of_concurrent_deletes_of_one_image_exactly_one_is_told_it_deleted_it(deployment: Deployment):
    url = deployment.server.url
    outcomes = []
    hashes = []
    with httpx.Client(base_url=url, timeout=60) as http:
        for data in fresh_jpegs(TRIALS):
            stored = http.post("/images", data={"url": fresh_url(), "client_name": "s"}, files={"file": ("a", data)})
            assert stored.status_code == 201, stored.text
            chash = stored.json()["content_hash"]
            hashes.append(chash)
            outcomes.append(at_once(url, lambda c, _i, chash=chash: c.delete(f"/images/{chash}")))
            assert http.get(f"/images/meta/{chash}").status_code == 404
    assert outcomes == [Counter({204: 1, 404: THREADS - 1})] * TRIALS, outcomes
    assert not {hash_of_key(key) for key in deployment.blobs()} & set(hashes)


def test_of_concurrent_visualsnoop_deletes_of_one_id_exactly_one_is_told_it_deleted_it(deployment: Deployment):
    keys = deployment.create()
    collection = deployment.client(keys)
    outcomes = []

    def delete(http: httpx.Client, i: int, image_id: str, now: float) -> httpx.Response:
        # each signed with a Date of its own, whole seconds apart from one clock reading (two
        # readings could straddle a second): the same signed request twice is a replay
        path = f"{PREFIX}/image/{image_id}"
        return http.delete(path, headers=signed_headers(keys, "DELETE", path, formatdate(now - i, usegmt=True)))

    for t, data in enumerate(fresh_jpegs(TRIALS)):
        added = collection.add_image(data, image_id=f"i{t}")
        assert added["status"] == 201, added
        now = time.time()
        outcomes.append(at_once(deployment.server.url, lambda c, i, t=t, now=now: delete(c, i, f"i{t}", now)))
    assert outcomes == [Counter({200: 1, 404: THREADS - 1})] * TRIALS, outcomes
    assert deployment.cached(keys) == []
