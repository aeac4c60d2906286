"""scrapy-imgcache: a shared, content-addressed image cache for Scrapy.

Public surface (imported lazily, so that ``scrapy --help`` stays fast):
``Addon``, ``ImgCachePipeline``, ``ImgCacheMiddleware``, ``ImgCacheConfig``,
``open_store``, ``SqlStore``, ``RemoteStore``, ``Store``, ``Entry``, ``Inspector``, ``content_hash``, and the errors.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Addon": "addon",
    "ImgCachePipeline": "pipelines",
    "ImgCacheMiddleware": "middleware",
    "ImgCacheConfig": "config",
    "open_store": "store",
    "SqlStore": "store",
    "RemoteStore": "remote",
    "Store": "store",
    "Entry": "store",
    "Inspector": "hashing",
    "content_hash": "hashing",
    "ImgCacheError": "errors",
    "InvalidImage": "errors",
    "StoreError": "errors",
    "ConfigError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
