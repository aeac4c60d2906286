"""Content-addressed blob storage: the bytes of each distinct image, once, under its hash.

Keys are paths like ``ab/cd/abcd…ef.jpg`` derived from the content hash, so the same bytes
always land at the same key and "already exists" is success (as in git's object store).

Local writes are atomic (restic's local backend): a temporary file in the destination
folder, fsync, rename over the final name, fsync of the folder. Two processes writing the
same bytes at once both rename a complete file into place; the survivor is intact either way.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from .errors import ConfigError, StoreError

#: the marker naming the cache a blob store belongs to (written on first use)
OWNER_KEY = ".imgcache-owner"
#: the prefix of a local write's temporary file (left behind only by a crash)
TEMP_PREFIX = ".tmp-"


def blob_key(content_hash: str, extension: str = "") -> str:
    return f"{content_hash[:2]}/{content_hash[2:4]}/{content_hash}{extension}"


def hash_of_key(key: str) -> str:
    """The content hash a key was made from (its file name without extension)."""
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


class BlobStore(Protocol):
    """Where image bytes live. Implementations are blocking and thread-safe."""

    def read_marker(self, key: str) -> bytes | None:
        """A small file the store keeps for itself (not a blob), or None."""
        ...

    def create_marker(self, key: str, data: bytes) -> bool:
        """Write a marker unless one is there already; True when this call wrote it."""
        ...

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> bool: ...
    def iter_keys(self) -> Iterator[tuple[str, float, int]]:
        """Every (key, modification time, size) held, markers aside."""
        ...

    def describe(self, key: str) -> str:
        """Where a key is, for people (a path or URL)."""
        ...


class LocalBlobStore:
    """Blobs as files under one folder."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._prefix = str(self.root) + os.sep

    def _path(self, key: str) -> str:
        """The file of a key, checked lexically (a few microseconds: this runs several times
        an image, where resolving the path through the file system cost ~0.1 ms)."""
        if not key or key[0] == "/" or "\\" in key or "\0" in key or _BAD_SEGMENTS & set(key.split("/")):
            raise ValueError(f"blob key {key!r} escapes the store")
        return self._prefix + key

    def describe(self, key: str) -> str:
        return self._path(key)

    def read_marker(self, key: str) -> bytes | None:
        return self.get(key)

    def create_marker(self, key: str, data: bytes) -> bool:
        """Written whole to a temporary file, then hard-linked to its name, which fails when
        the name exists: of two caches claiming the folder at once one wins, and nobody
        reads a half-written marker."""
        path = self._path(key)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self.root)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        _fsync_dir(str(self.root))
        return True

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            if os.stat(path).st_size == len(data):
                os.utime(path)  # a fresh mtime keeps the GC's grace period away from it
                return
        except FileNotFoundError:
            pass
        folder = os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(folder)

    def get(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            return False
        return True

    def iter_keys(self) -> Iterator[tuple[str, float, int]]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                path = Path(dirpath) / name
                if name == OWNER_KEY and path.parent == self.root:
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                yield path.relative_to(self.root).as_posix(), st.st_mtime, st.st_size


_BAD_SEGMENTS = frozenset({"", ".", ".."})


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FsspecBlobStore:
    """Blobs in object storage (``s3://``, ``gs://``, ``memory://`` …) through fsspec.

    Object stores make a single PUT atomic, so no temporary name is needed; the backend
    packages (s3fs, gcsfs) are the user's choice, installed beside the ``cloud`` extra.
    """

    def __init__(self, url: str, **storage_options: object) -> None:
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ConfigError("object storage needs the extra: pip install 'scrapy-imgcache[cloud]'") from exc
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")
        self.protocol = url.split("://", 1)[0]

    def _path(self, key: str) -> str:
        if ".." in key.split("/"):
            raise ValueError(f"blob key {key!r} escapes the store")
        return f"{self.root}/{key}"

    def describe(self, key: str) -> str:
        return f"{self.protocol}://{self._path(key)}"

    def read_marker(self, key: str) -> bytes | None:
        return self.get(key)

    def create_marker(self, key: str, data: bytes) -> bool:
        """Object stores have no exclusive create here: write when absent, and the caller
        reads the marker back, so that of two racing claims the later write is the one obeyed."""
        path = self._path(key)
        if self.fs.exists(path):
            return False
        self.fs.pipe_file(path, data)
        return True

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            return
        self.fs.pipe_file(path, data)

    def get(self, key: str) -> bytes | None:
        try:
            data: bytes = self.fs.cat_file(self._path(key))  # fsspec is untyped
        except FileNotFoundError:
            return None
        return data

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def delete(self, key: str) -> bool:
        path = self._path(key)
        if not self.fs.exists(path):
            return False
        self.fs.rm_file(path)
        return True

    def iter_keys(self) -> Iterator[tuple[str, float, int]]:
        if not self.fs.exists(self.root):
            return
        for path, info in self.fs.find(self.root, detail=True).items():
            mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or time.time()
            if hasattr(mtime, "timestamp"):
                mtime = mtime.timestamp()
            key = path[len(self.root) + 1 :]
            if key != OWNER_KEY:
                yield key, float(mtime), int(info.get("size") or 0)


def open_blob_store(location: str | os.PathLike[str]) -> BlobStore:
    """A folder path (or ``file://``) gives local files; any other URL scheme goes to fsspec."""
    text = os.fspath(location)
    if "://" not in text:
        return LocalBlobStore(text)
    if text.startswith("file://"):
        return LocalBlobStore(text[len("file://") :])
    return FsspecBlobStore(text)


def claim(blobs: BlobStore, cache_id: str, database: str) -> None:
    """Make ``blobs`` this cache's own, or refuse it: a blob folder serves one cache.

    Two caches sharing one folder would each see the other's blobs as orphans, and
    ``imgcache-gc`` on either would delete the other's images. The first cache to use a
    folder writes a marker with its id; any other cache is refused at open, naming both.
    """
    mine = json.dumps({"cache_id": cache_id, "database": database}).encode()
    blobs.create_marker(OWNER_KEY, mine)
    found = blobs.read_marker(OWNER_KEY)
    try:
        owner = json.loads(found or b"{}")
    except ValueError:
        owner = {}
    if not isinstance(owner, dict) or owner.get("cache_id") != cache_id:
        other = owner.get("database", "?") if isinstance(owner, dict) else "?"
        raise StoreError(
            f"the image files at {blobs.describe(OWNER_KEY).rsplit('/', 1)[0]} belong to another cache "
            f"(database {other}), not to this one ({database}); give each cache a folder of its own "
            "with IMGCACHE_FILES_STORE"
        )


def is_temporary(key: str) -> bool:
    """A local write's temporary file, which only an interrupted write leaves behind."""
    return key.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)
