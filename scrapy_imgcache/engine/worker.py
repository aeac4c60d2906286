"""The engine worker's side: a :class:`CacheService` answering the crawl's requests.

Started by :mod:`scrapy_imgcache.processes` (its own entry point: it never runs the user's
script, nor outlives the crawl) with an :class:`EngineSetup`; it opens its own store, the
``IMAGES_STORE`` views and the crawl's decision lock, and serves :data:`THREADS` requests at
once (a worker waits on its database, its disk and its socket about as long as it
computes: its threads keep its core busy meanwhile).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import protocol
from .service import CacheService, ViewSpec

if TYPE_CHECKING:
    from ..config import ImgCacheConfig

#: requests a worker serves at once
THREADS = 4


@dataclass(frozen=True)
class EngineSetup:
    config: ImgCacheConfig
    views: Mapping[str, ViewSpec] = field(default_factory=dict)
    #: the file whose lock the crawl's workers take to decide what an image is
    lock_path: str | None = None
    threads: int = THREADS


class EngineWorker:
    def __init__(self, setup: EngineSetup) -> None:
        self.concurrency = setup.threads
        self.service = CacheService.open(setup.config, setup.views, setup.lock_path)

    def __call__(self, message: bytes, body: bytes) -> bytes:
        try:
            operation, args = protocol.parse_request(message)
            if operation not in protocol.OPERATIONS:
                raise ValueError(f"no operation {operation!r}")
            method = getattr(self.service, operation)
            result = method(body, *args) if operation == "store_download" else method(*args)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the request's caller
            return protocol.answer(False, exc)
        return protocol.answer(True, result)


def serve(setup: EngineSetup) -> EngineWorker:
    """The worker's handler (``scrapy_imgcache.engine.worker:serve``)."""
    return EngineWorker(setup)
