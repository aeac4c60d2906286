"""scrapy-imgcache: a shared, content-addressed image cache for Scrapy.

The public surface is below; names are imported on first use, so that ``scrapy --help`` (which
imports every command module) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .addon import Addon
    from .config import ImgCacheConfig
    from .errors import ConfigError, ImgCacheError, InvalidImage, StoreError
    from .hashing import Inspector, content_hash
    from .middleware import ImgCacheMiddleware
    from .pipelines import ImgCachePipeline
    from .store import open_store
    from .store.base import Entry, Store
    from .store.remote import RemoteStore
    from .store.sql import SqlStore

_EXPORTS = {
    "Addon": "addon",
    "ImgCachePipeline": "pipelines",
    "ImgCacheMiddleware": "middleware",
    "ImgCacheConfig": "config",
    "open_store": "store",
    "Store": "store.base",
    "Entry": "store.base",
    "SqlStore": "store.sql",
    "RemoteStore": "store.remote",
    "Inspector": "hashing",
    "content_hash": "hashing",
    "ImgCacheError": "errors",
    "InvalidImage": "errors",
    "StoreError": "errors",
    "ConfigError": "errors",
}

__all__ = [
    "Addon",
    "ConfigError",
    "Entry",
    "ImgCacheConfig",
    "ImgCacheError",
    "ImgCacheMiddleware",
    "ImgCachePipeline",
    "Inspector",
    "InvalidImage",
    "RemoteStore",
    "SqlStore",
    "Store",
    "StoreError",
    "__version__",
    "content_hash",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
