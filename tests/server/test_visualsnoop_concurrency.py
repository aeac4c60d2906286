"""Many clients changing one VisualSnoop collection at once, against a real server process over
SQLite, PostgreSQL and MariaDB: every answer is the one a lone client would get (no 409 on an
overwrite, no 5xx), and the collection ends up holding exactly the ids that should exist, with
no image left over in its bucket (which the listing would show under its content hash)."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from email.utils import formatdate

import pytest
import requests
from sqlalchemy import select
from visualsnoop.auth import VisualSnoopHMACAuth

from scrapy_imgcache.hashing import content_hash
from scrapy_imgcache.visualsnoop.models import CollectionImageRow, CollectionRow
from tests.helpers import DATABASES, distinct_jpegs

from .vsnoop import Deployment, Keys, deployed

THREADS = 4
ROUNDS = 25
SHARED = 5  # ids every thread overwrites
PHOTOS = distinct_jpegs(6, size=(96, 72))
SKEW = 600  # the overwrites are signed with Dates up to THREADS * ROUNDS / SHARED seconds old


@pytest.fixture(scope="module", params=DATABASES)
def deployment(request, tmp_path_factory) -> Iterator[Deployment]:
    with deployed(request.param, tmp_path_factory.mktemp(f"races-{request.param}"), skew=SKEW) as found:
        yield found


def _worker(deployment: Deployment, keys: Keys, t: int, start: float, seen: list[tuple[str, int, str]]) -> None:
    """Each round: add an id of this thread's own, overwrite a shared one, delete the own one.

    The photos are shared by every thread, so ids of several threads keep naming the same
    bytes while others drop them. Each request is signed by the published client's auth. Two
    overwrites of one id carry different ``Date``s (a second apart from ``start``, whenever
    they are sent): the same signed request twice would rightly be refused as a replay.
    """
    auth = VisualSnoopHMACAuth(keys.public_key, keys.secret_key)
    session = requests.Session()
    for r in range(ROUNDS):
        own = f"t{t}-r{r}"
        steps = [
            ("POST", own, PHOTOS[(t + r) % len(PHOTOS)], None),
            ("PUT", f"shared{r % SHARED}", PHOTOS[(3 * t + r) % len(PHOTOS)], t * SHARED + r // SHARED),
            ("DELETE", own, None, None),
        ]
        for method, image_id, body, age in steps:
            headers = {"Date": formatdate(time.time() if age is None else start - age, usegmt=True)}
            request = requests.Request(
                method, f"{deployment.endpoint}/image/{image_id}", data=body, headers=headers, auth=auth
            )
            try:
                response = session.send(request.prepare(), timeout=60)
            except requests.ConnectionError as exc:  # the server dropped the connection
                seen.append((method, 0, repr(exc)))
                session = requests.Session()
                continue
            seen.append((method, response.status_code, response.text[:300]))


def test_concurrent_adds_overwrites_and_deletes(deployment: Deployment):
    keys = deployment.create()
    seen: list[tuple[str, int, str]] = []
    start = time.time()
    threads = [threading.Thread(target=_worker, args=(deployment, keys, t, start, seen)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    assert len(seen) == THREADS * ROUNDS * 3
    unexpected = [s for s in seen if s[1] not in {"POST": (201,), "PUT": (200, 201), "DELETE": (200,)}[s[0]]]
    assert not unexpected, (Counter((m, s) for m, s, _ in unexpected), unexpected[:5])

    collection = deployment.client(keys)
    listed = sorted(i["id"] for i in collection.get_images(count=1000)["images"])
    assert listed == [f"shared{i}" for i in range(SHARED)]  # no own id, no content-hash ghost
    assert not [i for i in listed if re.fullmatch(r"[0-9a-f]{64}", i)]
    # the bucket holds exactly the bytes the ids name: nothing left behind, nothing lost
    with deployment.store.engine.connect() as conn:
        cid = conn.execute(select(CollectionRow.id).where(CollectionRow.public_key == keys.public_key)).scalar_one()
        named = set(
            conn.execute(select(CollectionImageRow.content_hash).where(CollectionImageRow.collection_id == cid))
            .scalars()
            .all()
        )
    assert set(deployment.cached(keys)) == named
    assert named <= {content_hash(p) for p in PHOTOS}
    for i in range(SHARED):
        assert collection.get_image(f"shared{i}")["status"] == 200
