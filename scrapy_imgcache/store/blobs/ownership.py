"""One folder, one cache: the marker a blob store is claimed with, and the refusals of a
folder that another cache owns, or that is inside or above another cache's."""

from __future__ import annotations

import json
from typing import Any

from ...errors import StoreError
from .base import OWNER_KEY, BlobStore


def claim(blobs: BlobStore, cache_id: str, database: str) -> None:
    """Make ``blobs`` this cache's own, or refuse it: a blob folder serves one cache.

    Two caches sharing one folder, or one cache's folder inside another's, would each see the
    other's blobs as orphans, and ``imgcache-gc`` on either would delete the other's images.
    The first cache to use a folder writes a marker with its id; any other cache is refused
    at open, naming both, and so is a folder inside another cache's (a few stats, every
    open) or above one (a walk of the tree, when the folder is first claimed; gc never goes
    into a folder holding another marker either). Opening a folder already claimed writes
    nothing, so a full or read-only disk can still be read and collected.
    """
    found = blobs.read_marker(OWNER_KEY)
    if found is None:
        _refuse_nested(blobs, database, below=True)
        mine = json.dumps({"cache_id": cache_id, "database": database}).encode()
        blobs.create_marker(OWNER_KEY, mine)
        found = blobs.read_marker(OWNER_KEY)
    else:
        _refuse_nested(blobs, database, below=False)
    owner = _owner(found)
    if owner.get("cache_id") != cache_id:
        raise StoreError(
            f"the image files at {_folder(blobs)} belong to another cache "
            f"(database {owner.get('database', '?')}), not to this one ({database}); give each cache a folder "
            f"of its own with IMGCACHE_FILES_STORE (or, if that cache is gone for good, delete {OWNER_KEY} there)"
        )


def _refuse_nested(blobs: BlobStore, database: str, below: bool) -> None:
    for where, data in blobs.other_markers(OWNER_KEY, below):
        folder = where.rsplit("/", 1)[0]
        inside = not folder.startswith(_folder(blobs))
        raise StoreError(
            f"the image files at {_folder(blobs)} are {'inside' if inside else 'above'} the folder of another "
            f"cache, {folder} (database {_owner(data).get('database', '?')}); a cache's folder must be neither "
            f"inside nor above another's (the garbage collector of one would delete the other's images): "
            f"give this cache ({database}) a folder of its own with IMGCACHE_FILES_STORE"
        )


def _owner(marker: bytes | None) -> dict[str, Any]:
    try:
        owner = json.loads(marker or b"{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


def _folder(blobs: BlobStore) -> str:
    return blobs.describe(OWNER_KEY).rsplit("/", 1)[0]
