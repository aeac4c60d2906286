"""Optional API keys with two scopes, sent in the ``X-API-Key`` header.

A *read* key may call every GET; a *write* key may also store and delete. With no key
configured the server is open (the published client sends no key), which is why the CLI
refuses to listen beyond loopback without keys unless told ``--insecure``.

Keys are compared as SHA-256 digests with :func:`hmac.compare_digest`, against every
configured key without stopping early, so timing tells nothing about a key's prefix or
which key matched.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fastapi import Security
from fastapi.security import APIKeyHeader

from .common import ApiError

READ = "read"
WRITE = "write"
HEADER = "X-API-Key"
READ_KEYS_ENV = "IMGCACHE_SERVER_READ_KEYS"
WRITE_KEYS_ENV = "IMGCACHE_SERVER_WRITE_KEYS"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys, kept only as digests."""

    read: tuple[bytes, ...] = ()
    write: tuple[bytes, ...] = ()

    @classmethod
    def from_keys(cls, read: Iterable[str] = (), write: Iterable[str] = ()) -> ApiKeys:
        read_keys, write_keys = _clean(read), _clean(write)
        return cls(tuple(_digest(k) for k in read_keys), tuple(_digest(k) for k in write_keys))

    @classmethod
    def from_env(
        cls, read: Iterable[str] = (), write: Iterable[str] = (), environ: dict[str, str] | None = None
    ) -> ApiKeys:
        """Keys given on the command line plus the comma-separated ones in the env vars."""
        env = os.environ if environ is None else environ
        return cls.from_keys(
            [*read, *env.get(READ_KEYS_ENV, "").split(",")],
            [*write, *env.get(WRITE_KEYS_ENV, "").split(",")],
        )

    @property
    def enabled(self) -> bool:
        return bool(self.read or self.write)

    def scope_of(self, key: str | None) -> str | None:
        """``"write"``, ``"read"`` or None for a missing or unknown key."""
        if not key:
            return None
        given = _digest(key)
        is_write = _matches_any(given, self.write)
        is_read = _matches_any(given, self.read)
        if is_write:
            return WRITE
        return READ if is_read else None

    def allows(self, key: str | None, scope: str) -> bool:
        granted = self.scope_of(key)
        return granted == WRITE or (granted == READ and scope == READ)


def _matches_any(given: bytes, digests: tuple[bytes, ...]) -> bool:
    found = False
    for digest in digests:  # no early exit
        found |= hmac.compare_digest(given, digest)
    return found


def _clean(keys: Iterable[str]) -> list[str]:
    out = [k.strip() for k in keys if k and k.strip()]
    for key in out:
        if len(key) < 16:
            raise ValueError("an API key must be at least 16 characters long")
    return out


def require(keys: ApiKeys, scope: str) -> Callable[..., None]:
    """A dependency that lets a request through only with a key of ``scope`` (when keys exist)."""
    if not keys.enabled:

        def open_access() -> None:
            return None

        return open_access

    header = APIKeyHeader(name=HEADER, auto_error=False, description="a read or write API key")

    def check(key: str | None = Security(header)) -> None:  # a default: ``header`` is local
        granted = keys.scope_of(key)
        if granted is None:
            raise ApiError(401, "unauthorized", f"a valid {HEADER} header is required")
        if scope == WRITE and granted != WRITE:
            raise ApiError(403, "forbidden", "this key may read but not store or delete")

    return check
