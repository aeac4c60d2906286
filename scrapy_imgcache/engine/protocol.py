"""The messages between the crawl process and its engine workers.

A request is a pickled ``(operation, args)`` header, its length ahead of it, then an image's
raw bytes when it carries one (a body travels once, unpickled: a 200 KB image costs a
memory copy, ~20 us). An answer is a pickled ``(ok, value)``: the operation's result, or
the exception it raised (a typed InvalidImage, a StoreError), re-raised in the crawl.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

from ..errors import StoreError

_LENGTH = struct.Struct("<I")
#: what a worker may be asked (the names of CacheService's operations)
OPERATIONS = frozenset({"store_download", "answer", "place", "refresh", "record_urls"})


def request(operation: str, args: tuple[Any, ...], body: bytes = b"") -> bytes:
    header = pickle.dumps((operation, args), pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(header)) + header + body


def parse_request(message: bytes) -> tuple[str, tuple[Any, ...], bytes]:
    (length,) = _LENGTH.unpack_from(message)
    start = _LENGTH.size
    operation, args = pickle.loads(message[start : start + length])
    return operation, args, message[start + length :]


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
