"""Run store and blob operations in separate processes (spawned, not forked, not threads).

Sharing one store between processes is the point of the cache, so the tests that prove it
run real interpreters that start together on a barrier and report any exception back.
"""

from __future__ import annotations

import multiprocessing
import traceback
from typing import Any

#: one operation: ("open",) | ("put", data, url) | ("delete", content_hash) | ("blob", root, key, data, times)
Op = tuple[Any, ...]


def _work(db_url: str | None, files: str, ops: list[Op], barrier: Any, errors: Any) -> None:
    try:
        barrier.wait(timeout=120)
        store = None
        if db_url is not None:
            from scrapy_imgcache.store import SqlStore

            store = SqlStore(db_url, files)
        for op in ops:
            if op[0] == "put":
                store.put(op[1], url=op[2], client_name="proc")
            elif op[0] == "delete":
                store.delete(op[1])
            elif op[0] == "blob":
                from scrapy_imgcache.blobs import LocalBlobStore

                blobs = LocalBlobStore(op[1])
                for _ in range(op[4]):
                    blobs.put(op[2], op[3])
        if store is not None:
            store.close()
    except BaseException:  # noqa: BLE001 - every failure goes back to the test
        errors.put(traceback.format_exc())


def run_processes(db_url: str | None, files: str, per_process: list[list[Op]]) -> None:
    """One spawned process per ops list, released together; fails with any process's traceback."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(per_process))
    errors = ctx.Queue()
    procs = [ctx.Process(target=_work, args=(db_url, files, ops, barrier, errors)) for ops in per_process]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    found = []
    while not errors.empty():
        found.append(errors.get())
    codes = [p.exitcode for p in procs]
    assert not found, "\n".join(found)
    assert codes == [0] * len(procs), codes
