"""The names a project's code and tools rely on, each defined once: request meta keys, stat
keys, result fields and the words their values take. The reference pages (docs/reference/)
are checked against this module in both directions by tests/test_docs.py; the settings' one
home is ``config.DEFAULTS``.

Light: the standard library only, so every module can import it.
"""

from __future__ import annotations

from typing import Final, Literal, NewType, get_args

# -- Request.meta keys (docs/reference/meta.md) ------------------------------------------------

#: True marks a request as an image request (the pipeline sets it)
META_KEY: Final = "imgcache"
#: the cache Entry a response was answered from (or a stale one, being revalidated)
META_ENTRY: Final = "imgcache_entry"
#: "hit" | "revalidated" | "miss" | "stale"
META_STATUS: Final = "imgcache_status"
#: set by the pipeline on its own requests (it stores them itself)
META_PIPELINE: Final = "imgcache_pipeline"
#: seconds a cached answer stays fresh for this request (default IMGCACHE_EXPIRES)
META_MAX_AGE: Final = "imgcache_max_age"
#: set while a download's paths are made: the extension its bytes will be stored with, for
#: ``file_path()``, before the cache entry exists
META_EXTENSION: Final = "imgcache_extension"
#: the URL the cache was asked about already (a miss, or stale)
META_LOOKED_UP: Final = "imgcache_looked_up"
#: why the store failed for this request, under IMGCACHE_ON_STORE_ERROR = "continue" (nothing
#: more is asked of the store for it; its result says ``cache: "error"``)
META_STORE_ERROR: Final = "imgcache_store_error"
META_KEYS: Final = (
    META_KEY,
    META_ENTRY,
    META_STATUS,
    META_PIPELINE,
    META_MAX_AGE,
    META_EXTENSION,
    META_LOOKED_UP,
    META_STORE_ERROR,
)
#: the flag of a Response the cache answered
RESPONSE_FLAG: Final = "imgcache"

# -- stats, each under imgcache/ (docs/reference/stats.md) ---------------------------------------

STAT_PREFIX: Final = "imgcache/"
#: the stat keys (after the prefix) but ``invalid/<reason>``
StatKey = Literal[
    "hit",
    "miss",
    "revalidated",
    "expired",
    "damaged",
    "stored",
    "duplicate/exact",
    "duplicate/similar",
    "dropped/similar",
    "bytes_saved",
    "downloaded_bytes",
    "store_error",
    "unavailable",
]
STAT_KEYS: Final[tuple[str, ...]] = get_args(StatKey)
#: ``invalid/<reason>``: an image refused, by the ``reason`` of its ``InvalidImage``
InvalidStat = NewType("InvalidStat", str)


def invalid_stat(reason: str) -> InvalidStat:
    return InvalidStat(f"invalid/{reason}")


# -- result fields (docs/reference/results.md) ----------------------------------------------------

#: the ``cache`` field: where the image came from (``error``: stored nowhere, the store failed
#: and IMGCACHE_ON_STORE_ERROR = "continue")
CacheStatus = Literal["miss", "hit", "revalidated", "error"]
#: the ``duplicate`` field
Duplicate = Literal["exact", "similar"]
#: the ``match`` field: how a near-duplicate matched (``identical`` in searches only)
Match = Literal["identical", "resized", "cropped", "mirrored", "rotated", "bordered", "edited"]
MATCHES: Final[tuple[str, ...]] = get_args(Match)
#: ImagesPipeline's fields of each result
SCRAPY_RESULT_FIELDS: Final = ("url", "path", "checksum", "status")
#: the cache's, after them (``thumbs`` with IMAGES_THUMBS)
CACHE_RESULT_FIELDS: Final = (
    "content_hash",
    "perceptual_hash",
    "width",
    "height",
    "content_type",
    "size",
    "duplicate",
    "duplicate_of",
    "hamming_distance",
    "match_distance",
    "match",
    "cache",
)
THUMBS_FIELD: Final = "thumbs"
