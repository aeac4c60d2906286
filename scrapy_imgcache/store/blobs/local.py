"""Blobs as files under one folder: atomic, durable writes (restic's local backend), locks
that keep the garbage collector off writes in flight, copy-on-write clones.

A write goes to a temporary file in the destination folder, is flushed, renamed over the
final name, and the folder flushed. Two processes writing the same bytes at once both rename
a complete file into place; the survivor is intact either way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import itertools
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ...errors import StoreError
from .base import OWNER_KEY, TEMP_PREFIX, BlobStore, probe_store


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
            fd, tmp = new_temp(str(self.root))
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
        fd, tmp = new_temp(os.path.dirname(path))
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
                fd, tmp = new_temp(os.path.dirname(dest))
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
                try:
                    os.unlink(path)
                except FileNotFoundError:  # a temporary file its writer renamed into place meanwhile
                    return False
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
        probe_store(self)


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


def new_temp(folder: str) -> tuple[int, str]:
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
