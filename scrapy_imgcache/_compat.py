"""Every difference between the Scrapy versions we support (2.13 to the current one), in one place.

Each is decided by Scrapy's version number, once, at import: not by looking for attributes,
and never by reading the bytecode of Scrapy's private methods (which changes with any
refactoring of them, and with the Python version). A new difference gets a flag here, named
after the version that brought it, and the code that needs it asks this module.
``./dev test`` runs the tests that touch Scrapy's API on Scrapy 2.13.0 too (``scrapy_api``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import scrapy
from packaging.version import Version

if TYPE_CHECKING:
    from scrapy import Request, Spider
    from scrapy.core.engine import ExecutionEngine
    from scrapy.http import Response
    from twisted.internet.defer import Deferred

T = TypeVar("T")

SCRAPY_VERSION = Version(scrapy.__version__)
#: Scrapy 2.14: components' coroutine methods (``open_spider_async``, awaited when a pipeline's
#: ``open_spider`` returns a coroutine), ``engine.download_async`` and ``close_spider_async``,
#: ``DownloadCancelledError``, ``FileException`` in ``scrapy.pipelines.media``, and a media
#: pipeline that awaits what ``media_to_download``/``media_downloaded`` return as it is
#: (pre-releases of 2.14 count as 2.14: ``release`` drops their suffix)
SCRAPY_2_14 = SCRAPY_VERSION.release >= (2, 14)
#: Scrapy 2.15: ``scrapy.utils.asyncio.run_in_thread``, under either reactor
SCRAPY_2_15 = SCRAPY_VERSION.release >= (2, 15)

#: whether the media pipeline awaits coroutines itself: one handed to such a Scrapy is awaited in
#: the pipeline's own task; wrapped in a Deferred (all Scrapy 2.13 takes) it cost an asyncio
#: task, a Deferred and a future more a call, twice an image, on the reactor
MEDIA_AWAITS_COROUTINES = SCRAPY_2_14

if SCRAPY_2_14:
    from scrapy.pipelines.media import FileException
else:  # pragma: no cover - Scrapy 2.13
    from scrapy.pipelines.files import FileException  # type: ignore[no-redef]

__all__ = [
    "MEDIA_AWAITS_COROUTINES",
    "SCRAPY_2_14",
    "SCRAPY_2_15",
    "SCRAPY_VERSION",
    "FileException",
    "close_spider",
    "component_result",
    "download",
    "download_cancelled_errors",
    "in_thread",
    "media_result",
]


async def in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work off the reactor thread, under either reactor."""
    if SCRAPY_2_15:
        from scrapy.utils.asyncio import run_in_thread

        return await run_in_thread(func, *args, **kwargs)
    from scrapy.utils.defer import maybe_deferred_to_future  # pragma: no cover - Scrapy < 2.15
    from twisted.internet.threads import deferToThread

    return await maybe_deferred_to_future(deferToThread(func, *args, **kwargs))


def component_result(coro: Coroutine[Any, Any, T]) -> Any:
    """What a pipeline's ``open_spider``/``close_spider`` returns: Scrapy >= 2.14 awaits a
    coroutine; Scrapy 2.13 only waits for a Deferred."""
    if SCRAPY_2_14:
        return coro
    from scrapy.utils.defer import deferred_from_coro  # pragma: no cover - Scrapy 2.13

    return deferred_from_coro(coro)


def media_result(coro: Coroutine[Any, Any, T]) -> Deferred[T] | Coroutine[Any, Any, T]:
    """What ``media_to_download``/``media_downloaded`` return (see :data:`MEDIA_AWAITS_COROUTINES`)."""
    if MEDIA_AWAITS_COROUTINES:
        return coro
    from scrapy.utils.defer import deferred_from_coro  # pragma: no cover - Scrapy 2.13

    wrapped: Deferred[T] = deferred_from_coro(coro)
    return wrapped


async def download(engine: ExecutionEngine, request: Request) -> Response:
    """The engine's download of ``request``, outside the scheduler."""
    if SCRAPY_2_14:
        downloaded: Response = await engine.download_async(request)
        return downloaded
    from scrapy.utils.defer import maybe_deferred_to_future  # pragma: no cover - Scrapy 2.13

    return await maybe_deferred_to_future(engine.download(request))


def close_spider(engine: ExecutionEngine, spider: Spider, reason: str) -> Any:
    """Close the crawl's spider with ``reason``: a Deferred either way (a reactor callback)."""
    if SCRAPY_2_14:
        from scrapy.utils.defer import deferred_from_coro

        return deferred_from_coro(engine.close_spider_async(reason=reason))
    return engine.close_spider(spider, reason)  # pragma: no cover - Scrapy 2.13


def download_cancelled_errors() -> tuple[type[BaseException], ...]:
    """What a download cancelled at its ``download_maxsize`` fails with."""
    from twisted.internet.defer import CancelledError

    if SCRAPY_2_14:
        from scrapy.exceptions import DownloadCancelledError

        return (CancelledError, DownloadCancelledError)
    return (CancelledError,)  # pragma: no cover - Scrapy 2.13
