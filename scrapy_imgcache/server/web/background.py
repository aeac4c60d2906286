"""Figures too costly to count on every view, counted in a background thread and kept.

The overview's aggregates read every row (~0.1-1 s at a million images, see BENCHMARKS.md)
and the near-duplicate groups search every image once (minutes at a million). A view takes
the last count at once and, when it is older than the time to live, starts a recount beside
it (stale-while-revalidate); only the very first view waits, at most ``wait`` seconds, after
which it shows "still counting". One count runs per key at a time, at most ``max_running``
at once, and at most ``max_keys`` keys are kept, so views cannot pile work up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass
class _Slot(Generic[T]):
    value: T | None = None
    counted_at: float = 0.0  # time.time() when the value was counted
    took: float = 0.0  # seconds the count took
    error: BaseException | None = None
    started: float = 0.0  # time.monotonic() of the count running, 0 when none is
    done: threading.Event | None = None


@dataclass(frozen=True)
class Counted(Generic[T]):
    """A count as a view shows it: the value (None: still counting), when, and how long it took."""

    value: T | None
    counted_at: float
    took: float
    running_for: float  # seconds a count has been running, 0 when none is


class Background(Generic[K, T]):
    def __init__(
        self, compute: Callable[[K], T], ttl: float, wait: float, max_keys: int = 8, max_running: int = 2
    ) -> None:
        self.compute = compute
        self.ttl = ttl
        self.wait = wait
        self.max_keys = max_keys
        self.max_running = max_running
        self._running = 0
        self._slots: OrderedDict[K, _Slot[T]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> Counted[T]:
        """The last count for ``key`` (a recount started when it is stale); the first time,
        the count itself if it ends within ``wait`` seconds. A failed first count raises here,
        once (a failed recount is logged, and the last count shown)."""
        with self._lock:
            slot = self._slots.setdefault(key, _Slot())
            self._slots.move_to_end(key)
            stale = slot.value is None or time.time() - slot.counted_at > self.ttl
            if stale and not slot.started and slot.error is None and self._running < self.max_running:
                self._start(key, slot)
            done = slot.done
            self._evict()
        if slot.value is None and slot.error is None and done is not None:
            done.wait(self.wait)
        with self._lock:
            if slot.error is not None:
                error, slot.error = slot.error, None
                if slot.value is None:
                    raise error
                logger.warning("imgcache web page: a recount failed (the last count is shown): %r", error)
            running = time.monotonic() - slot.started if slot.started else 0.0
            return Counted(slot.value, slot.counted_at, slot.took, running)

    @property
    def running(self) -> int:
        """How many counts are running now."""
        with self._lock:
            return self._running

    def peek(self, key: K) -> T | None:
        """The last count for ``key``, if there is one, without starting any."""
        with self._lock:
            slot = self._slots.get(key)
            return None if slot is None else slot.value

    def _start(self, key: K, slot: _Slot[T]) -> None:
        slot.started = time.monotonic()
        slot.done = threading.Event()
        self._running += 1
        threading.Thread(target=self._run, args=(key, slot), name=f"imgcache-web-count-{key!r}", daemon=True).start()

    def _run(self, key: K, slot: _Slot[T]) -> None:
        began = time.monotonic()
        try:
            value = self.compute(key)
        except BaseException as exc:  # noqa: BLE001 - handed to the view that waits for it
            with self._lock:
                slot.error, slot.started = exc, 0.0
        else:
            with self._lock:
                slot.value, slot.counted_at, slot.took = value, time.time(), time.monotonic() - began
                slot.started = 0.0
        finally:
            with self._lock:
                self._running -= 1
            assert slot.done is not None
            slot.done.set()

    def _evict(self) -> None:
        """Drop the least recently viewed keys past ``max_keys`` (a running count finishes unseen)."""
        while len(self._slots) > self.max_keys:
            self._slots.popitem(last=False)
