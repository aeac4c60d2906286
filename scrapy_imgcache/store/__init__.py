"""Where the cache lives: the :class:`Store` interface and the stores that implement it.

- ``base``: the protocol, its records and input checks (no heavy imports);
- ``sql``: :class:`SqlStore`, a SQLAlchemy database (SQLite, PostgreSQL, MySQL/MariaDB)
  with a blob store for the bytes; ``schema``, ``models`` and ``migrations`` behind it;
- ``remote``: :class:`RemoteStore`, an imgcache REST service;
- ``index``: the in-memory Hamming index behind ``similar()``.

:func:`open_store` picks the store class from the URL's scheme in :data:`STORE_SCHEMES`, as
Scrapy's FilesPipeline picks a files store; ``IMGCACHE_STORE_SCHEMES`` adds or replaces
entries (``{"redis": "myproject.stores.RedisStore"}``). A store class is built with its
``from_config(config, create=True)`` class method.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .base import Answer, Entry, GcReport, PutResult, Store, Usage

if TYPE_CHECKING:
    from ..config import ImgCacheConfig
    from .remote import RemoteStore
    from .sql import SqlStore

__all__ = [
    "STORE_SCHEMES",
    "Answer",
    "Entry",
    "GcReport",
    "PutResult",
    "RemoteStore",
    "SqlStore",
    "Store",
    "Usage",
    "open_store",
    "url_scheme",
]

#: URL scheme (before any ``+driver``) -> the store class, as an import path or a class
STORE_SCHEMES: dict[str, str | type[Any]] = {
    "sqlite": "scrapy_imgcache.store.sql.SqlStore",
    "postgresql": "scrapy_imgcache.store.sql.SqlStore",
    "mysql": "scrapy_imgcache.store.sql.SqlStore",
    "mariadb": "scrapy_imgcache.store.sql.SqlStore",
    "http": "scrapy_imgcache.store.remote.RemoteStore",
    "https": "scrapy_imgcache.store.remote.RemoteStore",
}


def url_scheme(url: str) -> str:
    """``postgresql+psycopg://…`` → ``postgresql``."""
    return url.split("://", 1)[0].split("+", 1)[0].lower() if "://" in url else ""


def store_class(url: str, schemes: Mapping[str, str | type[Any]] | None = None) -> type[Any]:
    """The class that serves ``url``, from :data:`STORE_SCHEMES` updated with ``schemes``."""
    table = {**STORE_SCHEMES, **(schemes or {})}
    scheme = url_scheme(url)
    if scheme not in table:
        known = ", ".join(sorted(table))
        raise ConfigError(
            f"IMGCACHE_URL={url!r}: no store serves the scheme {scheme!r} (known: {known}; "
            "add one with IMGCACHE_STORE_SCHEMES)"
        )
    try:
        found: type[Any] = _load(table[scheme])
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"IMGCACHE_STORE_SCHEMES[{scheme!r}]: cannot load {table[scheme]!r}: {exc}") from exc
    return found


def _load(path: str | type[Any]) -> type[Any]:
    """A class, or the one a dotted path names (what ``scrapy.utils.misc.load_object`` does, here
    because importing Scrapy cost an engine worker ~0.4 s of CPU at every crawl's start)."""
    if not isinstance(path, str):
        return path
    module, dot, name = path.rpartition(".")
    if not dot:
        raise ValueError(f"{path!r} is not a full path to a class")
    found: type[Any] = getattr(importlib.import_module(module), name)
    return found


def open_store(config: ImgCacheConfig | str, *, create: bool = True, **settings: Any) -> Store:
    """The store a config names, or a URL with ``IMGCACHE_*`` settings as lower-case keywords:
    ``open_store("sqlite:///cache.sqlite3", files_store="cache-files")`` (blocking: opening a
    database may create its schema). ``create=False`` opens an existing cache only."""
    if isinstance(config, str):
        from ..config import ImgCacheConfig

        values = {f"IMGCACHE_{name.upper()}": value for name, value in settings.items()}
        config = ImgCacheConfig.from_settings({**values, "IMGCACHE_URL": config})
    elif settings:
        raise TypeError("open_store(config) takes no settings: they are in the config")
    store: Store = store_class(config.url, config.store_schemes).from_config(config, create=create)
    return store


def __getattr__(name: str) -> Any:
    if name == "SqlStore":
        from .sql import SqlStore

        return SqlStore
    if name == "RemoteStore":
        from .remote import RemoteStore

        return RemoteStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
