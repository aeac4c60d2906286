"""Blob storage: the bytes of each distinct image, once, under its content hash; and the
file trees (``IMAGES_STORE``) the pipeline writes beside the cache.

Keys are paths like ``ab/cd/abcd…ef.jpg`` derived from the content hash, so the same bytes
always land at the same key and "already exists" is success (as in git's object store).

Local writes are atomic (restic's local backend): a temporary file in the destination
folder, fsync, rename over the final name, fsync of the folder. Two processes writing the
same bytes at once both rename a complete file into place; the survivor is intact either way.
Object storage (``s3://``, ``gs://``, ``ftp://``…) goes through fsspec, configured from
Scrapy's own ``AWS_*``, ``GCS_*`` and ``FTP_*`` settings (:func:`storage_options`).

A store that fails (a full disk, refused credentials, an FTP server gone) raises
:class:`~scrapy_imgcache.errors.StoreError`, so ``IMGCACHE_ON_STORE_ERROR`` decides.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import itertools
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import unquote, urlsplit

from .errors import ConfigError, StoreError

#: the marker naming the cache a blob store belongs to (written on first use)
OWNER_KEY = ".imgcache-owner"
_T = TypeVar("_T")
#: the prefix of a local write's temporary file (left behind only by a crash)
TEMP_PREFIX = ".tmp-"
#: what each object-storage scheme needs installed
BACKENDS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


def blob_key(content_hash: str, extension: str = "") -> str:
    return f"{content_hash[:2]}/{content_hash[2:4]}/{content_hash}{extension}"


def hash_of_key(key: str) -> str:
    """The content hash a key was made from (its file name without extension)."""
    return key.rsplit("/", 1)[-1].split(".", 1)[0]


class BlobStore(Protocol):
    """Where files live. Implementations are blocking and thread-safe."""

    def read_marker(self, key: str) -> bytes | None:
        """A small file the store keeps for itself (not a blob), or None."""
        ...

    def create_marker(self, key: str, data: bytes) -> bool:
        """Write a marker unless one is there already; True when this call wrote it."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Store content-addressed bytes: a key already there holds them already."""
        ...

    def replace(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` whatever is there (atomically where the store allows)."""
        ...

    def other_markers(self, key: str, below: bool) -> list[tuple[str, bytes | None]]:
        """Markers named ``key`` in the folders above this store's and, with ``below`` (a
        listing of everything), under it: (where, contents)."""
        ...

    def hold(self, key: str, data: bytes) -> contextlib.AbstractContextManager[None]:
        """:meth:`put`, and keep the blob from :meth:`remove_if` until the block ends (while
        the row that records it is written)."""
        ...

    def remove_if(self, key: str, unused: Callable[[], bool]) -> bool:
        """Delete ``key`` when ``unused()`` says nothing needs it, never one a :meth:`hold`
        keeps; True when it was deleted."""
        ...

    def copy_from(self, source: BlobStore, source_key: str, key: str) -> bool:
        """Make ``key`` a copy of what ``source`` holds at ``source_key`` without moving the
        bytes through here (a copy-on-write clone, a server-side copy); False when that is
        not possible. Never a link: what is written here may be changed without changing the
        source."""
        ...

    def get(self, key: str) -> bytes | None: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> bool: ...
    def iter_keys(self) -> Iterator[tuple[str, float, int]]:
        """Every (key, modification time, size) held, markers aside."""
        ...

    def describe(self, key: str) -> str:
        """Where a key is, for people (a path or URL)."""
        ...

    def probe(self) -> None:
        """Write, read and delete a probe file: a StoreError now, in one line, rather than
        with every image later."""
        ...


class GroupSync:
    """Makes writes to one file system durable together: each writer waits for a flush that
    started after its write, and one flush (``syncfs``) serves every writer waiting meanwhile.

    Per file, ``fsync`` of the data and of the folder cost ~7 ms on the development VMs, and
    a crawl storing images in ten threads spent its thread pool waiting on them; one
    ``syncfs`` costs ~0.5 ms and covers a whole batch (docs/crawl-benchmark.md)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._cond = threading.Condition()
        self._started = 0  # flushes begun
        self._done = 0  # flushes finished
        self._running = False

    def wait(self) -> None:
        """Return once everything this thread wrote before calling is on disk."""
        with self._cond:
            need = self._started + 1  # the next flush to start covers our write
            while self._done < need:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                flush = self._started
                self._cond.release()
                try:
                    _syncfs(self.folder)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._done = flush
                    self._cond.notify_all()


def _syncfs(folder: str) -> None:
    """Flush the file system holding ``folder`` (Linux ``syncfs``; elsewhere ``sync``)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        if _LIBC is not None and _LIBC.syncfs(fd) == 0:
            return
        if _LIBC is not None:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        os.sync()
    finally:
        os.close(fd)


def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc if hasattr(libc, "syncfs") else None
    except OSError:  # pragma: no cover - platforms without a C library to load
        return None


_LIBC = _libc()


class LocalBlobStore:
    """Files under one folder. ``durable``: a write returns once it would survive a crash
    (the cache's blobs); without it, as plain file writes do (``IMAGES_STORE``, a view).

    Files are made with mode 0666 less the umask (0644 under umask 022), as any program's.
    A write in progress holds an ``flock`` on its file (exclusive on the temporary file,
    shared on the blob while :meth:`hold` lasts), and :meth:`remove_if` never deletes a file
    someone holds: that, not a clock, keeps the garbage collector off writes in flight."""

    def __init__(self, root: str | os.PathLike[str], create: bool = True, durable: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        try:
            if create:
                self.root.mkdir(parents=True, exist_ok=True)
            elif not self.root.is_dir():
                raise StoreError(f"{self.root} does not exist")
        except OSError as exc:
            raise StoreError(f"cannot use the folder {self.root}: {exc.strerror or exc}") from exc
        self._prefix = str(self.root) + os.sep
        self._sync = GroupSync(str(self.root)) if durable else None
        #: whether copy_from still tries to clone (a file system without reflinks says so once)
        self._clones = True

    def path(self, key: str) -> str:
        """The file of a key, checked lexically (a few microseconds: this runs several times
        an image, where resolving the path through the file system cost ~0.1 ms)."""
        if not key or key[0] == "/" or "\\" in key or "\0" in key or _BAD_SEGMENTS & set(key.split("/")):
            raise ValueError(f"blob key {key!r} escapes the store")
        return self._prefix + key

    def describe(self, key: str) -> str:
        return self.path(key)

    def read_marker(self, key: str) -> bytes | None:
        return self.get(key)

    def create_marker(self, key: str, data: bytes) -> bool:
        """Written whole to a temporary file, then hard-linked to its name, which fails when
        the name exists: of two caches claiming the folder at once one wins, and nobody
        reads a half-written marker."""
        path = self.path(key)
        with _failing_as_store_error("write", path):
            fd, tmp = _new_temp(str(self.root))
            try:
                os.write(fd, data)
                os.fsync(fd)
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
                os.close(fd)
            _fsync_dir(str(self.root))
        return True

    def other_markers(self, key: str, below: bool) -> list[tuple[str, bytes | None]]:
        """Markers named ``key`` in the folders above this one and, with ``below``, in those
        under it (a walk of the whole tree), as (where, contents)."""
        found = [str(p / key) for p in self.root.parents if (p / key).is_file()]
        if below:
            found += [
                str(Path(d) / key) for d, _dirs, files in os.walk(self.root) if key in files and d != str(self.root)
            ]
        return [(where, _read_or_none(where)) for where in found]

    def put(self, key: str, data: bytes) -> None:
        path = self.path(key)
        try:
            if os.stat(path).st_size == len(data):
                os.utime(path)  # a fresh mtime keeps the GC's grace period away from it
                return
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
        self.replace(key, data)

    @contextlib.contextmanager
    def hold(self, key: str, data: bytes) -> Iterator[None]:
        """:meth:`put`, and a shared lock on the blob until the block ends (the transaction that
        records it): :meth:`remove_if` leaves a held blob alone. ~10 us an image."""
        path = self.path(key)
        with _failing_as_store_error("write", path):
            fd = self._open_held(path, len(data))
            while fd is None:
                fd = self._write(path, data, keep_open=True)
                # the temporary file's exclusive lock made shared: not atomically, so a
                # collector may have taken the file in between (then it is written again)
                fcntl.flock(fd, fcntl.LOCK_SH)
                if not os.fstat(fd).st_nlink:
                    os.close(fd)
                    fd = None
        try:
            yield
        finally:
            os.close(fd)

    def _open_held(self, path: str, size: int) -> int | None:
        """The existing blob at ``path``, opened and share-locked (and touched, for the GC's
        grace period); None when it is missing, another size, or deleted meanwhile."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        st = os.fstat(fd)
        if st.st_nlink == 0 or st.st_size != size:  # removed before we locked it, or a wrong size
            os.close(fd)
            return None
        os.utime(fd)
        return fd

    def replace(self, key: str, data: bytes) -> None:
        path = self.path(key)
        with _failing_as_store_error("write", path):
            self._write(path, data)

    def _write(self, path: str, data: bytes, keep_open: bool = False) -> int:
        """A temporary file in the same folder, renamed over the name. When durable, the data is
        on disk before the rename (a file never shows partly written after a crash) and the
        rename before returning (so a row written next never points at nothing). The file's
        descriptor is returned, exclusively locked, with ``keep_open`` (else -1)."""
        fd, tmp = _new_temp(os.path.dirname(path))
        try:
            _write_all(fd, data)
            if self._sync is not None:
                self._sync.wait()
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.close(fd)
            raise
        if self._sync is not None:
            self._sync.wait()
        if keep_open:
            return fd
        os.close(fd)
        return -1

    def copy_from(self, source: BlobStore, source_key: str, key: str) -> bool:
        """A copy-on-write clone of a file of another local store (``FICLONE``: XFS, Btrfs,
        bcachefs…), put in place by rename; False where the file system cannot clone (ext4,
        tmpfs: asked once a store) or across file systems: the caller then writes the bytes.
        Never a hard link: the file is the user's own, to edit or delete without touching
        the cache. A clone cost ~0.1 ms against ~0.07-0.3 ms for writing the bytes (see
        docs/store.md), and shares the blocks as a link did."""
        if not self._clones or not isinstance(source, LocalBlobStore):
            return False
        src, dest = source.path(source_key), self.path(key)
        try:
            src_fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # the blob went (gc): the caller writes the bytes instead
            return False
        except OSError as exc:
            raise StoreError(f"cannot read {src}: {exc.strerror or exc}") from exc
        try:
            with _failing_as_store_error("write", dest):
                fd, tmp = _new_temp(os.path.dirname(dest))
                try:
                    fcntl.ioctl(fd, _FICLONE, src_fd)
                    os.replace(tmp, dest)
                except OSError as exc:
                    os.unlink(tmp)
                    if exc.errno in _NO_CLONE:  # for every file of this pair of stores: not asked again
                        self._clones = False
                        return False
                    raise
                finally:
                    os.close(fd)
        finally:
            os.close(src_fd)
        return True

    def own_file(self, key: str) -> bool:
        """Whether ``key`` is a file of its own: present, and no hard link to anything (what
        versions before 0.x placed in IMAGES_STORE, sharing the cache's blob)."""
        try:
            return os.stat(self.path(key)).st_nlink == 1
        except FileNotFoundError:
            return False

    def get(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def exists(self, key: str) -> bool:
        return os.path.isfile(self.path(key))

    def delete(self, key: str) -> bool:
        path = self.path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot delete {path}: {exc.strerror or exc}") from exc
        return True

    def remove_if(self, key: str, unused: Callable[[], bool]) -> bool:
        """Delete ``key`` if no writer holds it and ``unused()`` (asked while it is locked, so
        no writer can take it meanwhile) says so; True when deleted."""
        path = self.path(key)
        with _failing_as_store_error("delete", path):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return False
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # a write in flight holds it
                    return False
                if os.fstat(fd).st_nlink == 0 or not unused():
                    return False
                os.unlink(path)
                return True
            finally:
                os.close(fd)

    def iter_keys(self) -> Iterator[tuple[str, float, int]]:
        """Every file, markers aside; a subfolder holding another cache's marker is skipped
        whole (two caches nested one inside the other never see each other's files)."""
        top = str(self.root)
        for dirpath, dirs, files in os.walk(top):
            if dirpath != top and OWNER_KEY in files:
                dirs[:] = []
                continue
            for name in files:
                if name == OWNER_KEY and dirpath == top:
                    continue
                path = os.path.join(dirpath, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                yield os.path.relpath(path, top).replace(os.sep, "/"), st.st_mtime, st.st_size

    def probe(self) -> None:
        _probe(self)


_BAD_SEGMENTS = frozenset({"", ".", ".."})
#: the temporary names of local writes: a random token drawn once a process (a crash may leave a
#: name behind for a later process with the same pid), the pid (forked children) and a counter
#: (a uuid4 a file cost more than the link this once made; itertools.count's next() is atomic
#: under the GIL)
_TEMP_TOKEN = f"{TEMP_PREFIX}{uuid.uuid4().hex[:16]}-"
_TEMP_NAMES = itertools.count()
#: Linux's ioctl that clones a file's blocks (linux/fs.h: _IOW(0x94, 9, int))
_FICLONE = 0x40049409
#: what a file system (or a pair of them) that cannot clone answers
_NO_CLONE = frozenset({errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM})


def _new_temp(folder: str) -> tuple[int, str]:
    """A new temporary file in ``folder`` (made when missing), mode 0666 less the umask, open
    for writing and exclusively locked. A garbage collector may unlink a temporary file in the
    moment before its lock is taken: then it is made again."""
    while True:
        tmp = os.path.join(folder, f"{_TEMP_TOKEN}{os.getpid()}-{next(_TEMP_NAMES)}")
        try:  # the folder is there but for the first file of its prefix: no makedirs call
            fd = os.open(tmp, _TEMP_FLAGS, 0o666)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(tmp, _TEMP_FLAGS, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            return fd, tmp
        os.close(fd)


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_or_none(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read(4096)
    except OSError:
        return None


@contextlib.contextmanager
def _failing_as_store_error(action: str, where: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StoreError(f"cannot {action} {where}: {exc.strerror or exc}") from exc


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
    """Files in object storage (``s3://``, ``gs://``, ``ftp://``, ``memory://`` …) through fsspec.

    Object stores make a single PUT atomic, so no temporary name is needed; the backend
    packages (s3fs, gcsfs) are the user's choice, installed beside the ``cloud`` extra.
    Every failure of the backend (bad credentials, a bucket that does not exist, a server
    gone) is a :class:`StoreError`.
    """

    def __init__(self, url: str, **storage_options: Any) -> None:
        self.protocol = url.split("://", 1)[0]
        try:
            import fsspec
        except ImportError as exc:  # pragma: no cover - depends on the extra
            raise ConfigError("object storage needs the extra: pip install 'scrapy-imgcache[cloud]'") from exc
        try:
            if self.protocol == "ftp":
                self.fs, root = _ftp_filesystem(url, storage_options)
            else:
                self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except ImportError as exc:
            backend = BACKENDS.get(self.protocol, f"the fsspec backend of {self.protocol}://")
            raise ConfigError(f"{url} needs {backend}: pip install {backend} ({exc})") from exc
        self.root = root.rstrip("/")
        #: FTP servers need folders made before files go in them; object stores have none
        self._folders = self.protocol == "ftp"
        self._ftp_turn = threading.Lock()

    def _path(self, key: str) -> str:
        if ".." in key.split("/") or "\0" in key:
            raise ValueError(f"blob key {key!r} escapes the store")
        return f"{self.root}/{key}"

    def describe(self, key: str) -> str:
        return f"{self.protocol}://{self._path(key)}"

    def _call(self, action: str, key: str, operation: Callable[[], _T]) -> _T:
        """Run one backend operation; its failures (any exception type: botocore, aiohttp,
        ftplib…) become StoreError. An FTP connection carries one command at a time, so FTP
        operations take turns, and one whose connection the server dropped (idle timeouts,
        restarts) runs again once on a new connection."""
        try:
            if not self._folders:
                return operation()
            with self._ftp_turn:
                try:
                    return operation()
                except Exception as exc:
                    if not _ftp_connection_lost(exc):
                        raise
                    self.fs._connect()
                    return operation()
        except (StoreError, ValueError):  # (get() answers a missing key itself; here it is a missing bucket)
            raise
        except Exception as exc:
            raise StoreError(f"cannot {action} {self.describe(key)}: {type(exc).__name__}: {exc}") from exc

    def read_marker(self, key: str) -> bytes | None:
        return self.get(key)

    def create_marker(self, key: str, data: bytes) -> bool:
        """Object stores have no exclusive create here: write when absent, and the caller
        reads the marker back, so that of two racing claims the later write is the one obeyed."""
        if self.exists(key):
            return False
        self.replace(key, data)
        return True

    def other_markers(self, key: str, below: bool) -> list[tuple[str, bytes | None]]:
        parts = self.root.split("/")
        above = ["/".join([*parts[:n], key]) for n in range(len(parts) - 1, 0, -1)]

        def markers() -> list[tuple[str, bytes | None]]:
            found = [p for p in above if self.fs.exists(p)]
            if below:
                found += [p for p in self._find() if p.rsplit("/", 1)[-1] == key and p != self._path(key)]
            return [(f"{self.protocol}://{p}", self.fs.cat_file(p)) for p in found]

        return self._call("look around", key, markers)

    def put(self, key: str, data: bytes) -> None:
        if not self.exists(key):
            self.replace(key, data)

    @contextlib.contextmanager
    def hold(self, key: str, data: bytes) -> Iterator[None]:
        """:meth:`put`, and again after the block when a collector deleted it meanwhile (object
        stores have no locks: :meth:`remove_if` deletes first and puts back what it finds used)."""
        self.put(key, data)
        yield
        self.put(key, data)

    def replace(self, key: str, data: bytes) -> None:
        path = self._path(key)

        def write() -> None:
            if self._folders:
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe_file(path, data)

        self._call("write", key, write)

    def copy_from(self, source: BlobStore, source_key: str, key: str) -> bool:
        """A server-side copy within one object store (S3 CopyObject, say)."""
        if not isinstance(source, FsspecBlobStore) or source.fs is not self.fs or self._folders:
            return False
        self._call("copy to", key, lambda: self.fs.copy(source._path(source_key), self._path(key)))
        return True

    def get(self, key: str) -> bytes | None:
        def read() -> bytes | None:
            try:
                data: bytes = self.fs.cat_file(self._path(key))  # fsspec is untyped
            except FileNotFoundError as exc:
                if self._folders and _ftp_connection_lost(exc):
                    raise
                return None
            return data

        return self._call("read", key, read)

    def exists(self, key: str) -> bool:
        return bool(self._call("look for", key, lambda: self.fs.exists(self._path(key))))

    def delete(self, key: str) -> bool:
        if not self.exists(key):
            return False
        self._call("delete", key, lambda: self.fs.rm_file(self._path(key)))
        return True

    def remove_if(self, key: str, unused: Callable[[], bool]) -> bool:
        """Delete ``key``, then ask ``unused()``: a writer that recorded it meanwhile gets its
        bytes put back (its own :meth:`hold` puts them back too, once its row is written)."""
        data = self.get(key)
        if data is None or not self.delete(key):
            return False
        if unused():
            return True
        self.put(key, data)
        return False

    def _find(self) -> dict[str, Any]:
        """Every object under the root, with its details (call it through ``_call``)."""
        found: dict[str, Any] = self.fs.find(self.root, detail=True) if self.fs.exists(self.root) else {}
        return found

    def iter_keys(self) -> Iterator[tuple[str, float, int]]:
        """Every object, markers aside, and none under a folder holding another cache's marker."""
        found = self._call("list", "", self._find)
        others = [p[: -len(OWNER_KEY)] for p in found if p.endswith("/" + OWNER_KEY) and p != self._path(OWNER_KEY)]
        for path, info in found.items():
            key = path[len(self.root) + 1 :]
            if key != OWNER_KEY and not any(path.startswith(other) for other in others):
                yield key, _mtime(info), int(info.get("size") or 0)

    def probe(self) -> None:
        _probe(self)


def _ftp_connection_lost(exc: BaseException) -> bool:
    """The server hung up (an idle timeout's 421, a closed socket), which fsspec may even
    report as a missing file: worth one more try on a new connection, never a "not found"."""
    import ftplib

    seen = exc.__cause__ if isinstance(exc, FileNotFoundError) else exc
    return isinstance(seen, (EOFError, ConnectionError, ftplib.error_temp))


def _mtime(info: Mapping[str, Any]) -> float:
    """A file's modification time from what an fsspec backend lists (each names it its own way)."""
    found: Any = info.get("mtime") or info.get("LastModified") or info.get("created") or info.get("updated")
    if found is None and info.get("modify"):  # FTP's MLSD fact: YYYYMMDDHHMMSS, UTC
        found = datetime.strptime(str(info["modify"])[:14], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
    if isinstance(found, str):
        found = datetime.fromisoformat(found.replace("Z", "+00:00"))
    if isinstance(found, datetime):
        return found.timestamp()
    return float(found) if found is not None else time.time()


def _probe(store: BlobStore) -> None:
    key = f".imgcache-probe-{uuid.uuid4().hex}"
    data = b"imgcache probe\n"
    store.replace(key, data)
    try:
        if store.get(key) != data:
            raise StoreError(f"{store.describe(key)} does not read back what was written")
    finally:
        store.delete(key)


def _ftp_filesystem(url: str, options: Mapping[str, Any]) -> tuple[Any, str]:
    """fsspec's FTP file system for ``ftp://[user[:password]@]host[:port]/path``, with Scrapy's
    ``FTP_USER``/``FTP_PASSWORD`` where the URL has none, and active mode on request."""
    from fsspec.implementations.ftp import FTPFileSystem

    class _FTP(FTPFileSystem):  # type: ignore[misc]  # fsspec is untyped
        def __init__(self, *args: Any, active: bool = False, **kwargs: Any) -> None:
            self._active = active  # before super().__init__, which connects
            super().__init__(*args, **kwargs)

        def _connect(self) -> None:
            super()._connect()
            if self._active:
                self.ftp.set_pasv(False)

    parts = urlsplit(url)
    fs = _FTP(
        host=parts.hostname or "",
        port=parts.port or 21,
        username=unquote(parts.username) if parts.username else options.get("username", "anonymous"),
        password=unquote(parts.password) if parts.password else options.get("password", "guest"),
        active=bool(options.get("active")),
        skip_instance_cache=True,
    )
    return fs, parts.path or "/"


def storage_options(url: str, settings: Mapping[str, Any], acl_setting: str | None = None) -> dict[str, Any]:
    """fsspec options for ``url`` from Scrapy's settings, as its FilesPipeline reads them:
    ``AWS_*`` for ``s3://``, ``GCS_PROJECT_ID`` for ``gs://``, ``FTP_USER``/``FTP_PASSWORD``/
    ``FEED_STORAGE_FTP_ACTIVE`` for ``ftp://``; ``acl_setting`` (``IMAGES_STORE``) adds the
    ACL of ``<acl_setting>_S3_ACL``/``_GCS_ACL``."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    get = settings.get
    if scheme == "s3":
        client: dict[str, Any] = {}
        for setting, name in (("AWS_ENDPOINT_URL", "endpoint_url"), ("AWS_REGION_NAME", "region_name")):
            if get(setting):
                client[name] = get(setting)
        if get("AWS_VERIFY") is not None:
            client["verify"] = get("AWS_VERIFY")
        options: dict[str, Any] = {"client_kwargs": client}
        for setting, name in (
            ("AWS_ACCESS_KEY_ID", "key"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("AWS_SESSION_TOKEN", "token"),
        ):
            if get(setting):
                options[name] = get(setting)
        if get("AWS_USE_SSL") is not None:
            options["use_ssl"] = _true(get("AWS_USE_SSL"))
        if acl_setting and get(f"{acl_setting}_S3_ACL"):
            options["s3_additional_kwargs"] = {"ACL": get(f"{acl_setting}_S3_ACL")}
        return options
    if scheme in ("gs", "gcs"):
        options = {"project": get("GCS_PROJECT_ID")} if get("GCS_PROJECT_ID") else {}
        if acl_setting and get(f"{acl_setting}_GCS_ACL"):
            options["default_acl"] = get(f"{acl_setting}_GCS_ACL")
        return options
    if scheme == "ftp":
        return {
            "username": get("FTP_USER") or "anonymous",
            "password": get("FTP_PASSWORD") or "guest",
            "active": _true(get("FEED_STORAGE_FTP_ACTIVE")),
        }
    return {}


def _true(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("1", "true", "yes", "on")


def open_blob_store(
    location: str | os.PathLike[str],
    options: Mapping[str, Any] | None = None,
    create: bool = True,
    durable: bool = True,
) -> BlobStore:
    """A folder path (or ``file://``) gives local files; any other URL scheme goes to fsspec.
    ``create=False``: a local folder that does not exist is an error; ``durable``: see
    :class:`LocalBlobStore` (object stores are durable once a PUT returns)."""
    text = os.fspath(location)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if "://" not in text:
        return LocalBlobStore(text, create, durable)
    return FsspecBlobStore(text, **(options or {}))


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


def is_temporary(key: str) -> bool:
    """A local write's temporary file, which only an interrupted write leaves behind."""
    return key.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)


def is_image_blob(key: str) -> bool:
    """A key of :func:`blob_key`'s shape (``ab/cd/abcd….ext``), named by its bytes' hash
    (thumbnails, also named by a hash, are not: theirs is the image's)."""
    parts = key.split("/")
    chash = hash_of_key(key)
    return len(parts) == 3 and parts[0] == chash[:2] and parts[1] == chash[2:4] and len(chash) == 64
