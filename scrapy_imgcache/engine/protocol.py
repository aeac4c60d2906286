"""The messages between the crawl process and its engine workers.

A request is a pickled ``(operation, args)``, and beside it, in a frame of its own, an image's
raw bytes when it carries one (a body is neither pickled nor copied: the socket reads it from
the response's own bytes). An answer is a pickled ``(ok, value)``: the operation's result, or
the exception it raised (a typed InvalidImage, a StoreError), re-raised in the crawl.
"""

from __future__ import annotations

import pickle
from typing import Any

from ..errors import StoreError

#: what a worker may be asked (the names of CacheService's operations)
OPERATIONS = frozenset({"store_download", "answer", "place", "refresh", "record_urls"})


def request(operation: str, args: tuple[Any, ...]) -> bytes:
    return pickle.dumps((operation, args), pickle.HIGHEST_PROTOCOL)


def parse_request(message: bytes) -> tuple[str, tuple[Any, ...]]:
    operation, args = pickle.loads(message)
    return operation, args


def answer(ok: bool, value: Any) -> bytes:
    try:
        return pickle.dumps((ok, value), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - an exception that does not pickle: said as a StoreError
        return pickle.dumps((False, StoreError(f"{type(value).__name__}: {value} ({exc})")), pickle.HIGHEST_PROTOCOL)


def parse_answer(message: bytes) -> Any:
    """The operation's result, or its exception raised here."""
    ok, value = pickle.loads(message)
    if not ok:
        raise value
    return value
