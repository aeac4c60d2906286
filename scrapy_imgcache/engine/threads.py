"""Blocking calls off the reactor: the calls of one turn of the event loop in one thread hop."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .._compat import in_thread

T = TypeVar("T")


class Gathered(Generic[T]):
    """Calls of one blocking function made in one turn of the event loop, run in one thread hop.

    A hop costs the reactor ~0.1-0.2 ms of CPU (a future, an executor work item, a wake-up, the
    callbacks), as much as the SQLite lookup it carries; the pipeline asks the cache about
    every image URL of an item in the same turn, so those lookups now share one hop. Each call
    still gets its own result or exception. Without a running asyncio loop (Twisted's default
    reactor) each call takes its own hop, as before.
    """

    MAX_BATCH = 16

    def __init__(self, func: Callable[..., T]) -> None:
        self.func = func
        self._pending: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[T]]] = []

    async def __call__(self, *args: Any, **kwargs: Any) -> T:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return await in_thread(self.func, *args, **kwargs)
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((args, kwargs, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush, loop)
        return await future

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        pending, self._pending = self._pending, []
        # a crawl's start asks about hundreds of URLs in one turn: hops of at most MAX_BATCH
        # calls run in parallel threads, so the first answers do not wait for the last
        for start in range(0, len(pending), self.MAX_BATCH):
            batch = pending[start : start + self.MAX_BATCH]
            try:
                done = loop.run_in_executor(None, self._run, batch)
            except BaseException as exc:  # noqa: BLE001 - an executor shut down: every caller hears it
                self._fail(batch, exc)
                continue
            done.add_done_callback(functools.partial(self._deliver, batch))

    def _run(self, batch: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[T]]]) -> list[tuple[bool, Any]]:
        results: list[tuple[bool, Any]] = []
        for args, kwargs, _ in batch:
            try:
                results.append((True, self.func(*args, **kwargs)))
            except Exception as exc:  # noqa: BLE001 - handed to that call's caller
                results.append((False, exc))
        return results

    def _deliver(self, batch: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[T]]], done: Any) -> None:
        if done.cancelled():
            self._fail(batch, asyncio.CancelledError())
            return
        exc = done.exception()
        if exc is not None:
            self._fail(batch, exc)
            return
        for (_, _, future), (ok, value) in zip(batch, done.result(), strict=True):
            if future.done():  # its caller was cancelled meanwhile
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    @staticmethod
    def _fail(batch: list[tuple[tuple[Any, ...], dict[str, Any], asyncio.Future[T]]], exc: BaseException) -> None:
        for _, _, future in batch:
            if not future.done():
                future.set_exception(exc)
