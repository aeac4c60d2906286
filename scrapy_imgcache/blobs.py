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
import itertools
import json
import os
import tempfile
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

    def copy_from(self, source: BlobStore, source_key: str, key: str) -> bool:
        """Make ``key`` hold what ``source`` holds at ``source_key`` without moving the bytes
        through here (a hard link, a server-side copy); False when that is not possible."""
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
    (the cache's blobs); without it, as plain file writes do (``IMAGES_STORE``, a view)."""

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

    def replace(self, key: str, data: bytes) -> None:
        """A temporary file in the same folder, renamed over the name. When durable, the data is
        on disk before the rename (a file never shows partly written after a crash) and the
        rename before returning (so a row written next never points at nothing)."""
        path = self.path(key)
        folder = os.path.dirname(path)
        with _failing_as_store_error("write", path):
            try:  # the folder is there but for the first file of its prefix: no makedirs call
                fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
            except FileNotFoundError:
                os.makedirs(folder, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=folder)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                if self._sync is not None:
                    self._sync.wait()
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            if self._sync is not None:
                self._sync.wait()

    def copy_from(self, source: BlobStore, source_key: str, key: str) -> bool:
        """A hard link to a file of another local store, put in place by rename (so a reader
        never sees a missing or partial file); False across file systems or where links are
        not allowed (the caller then writes the bytes)."""
        if not isinstance(source, LocalBlobStore):
            return False
        src, dest = source.path(source_key), self.path(key)
        folder = os.path.dirname(dest)
        # unique: a random token drawn once a process (a crash may leave a name behind for a
        # later process with the same pid), the pid (forked children) and a counter
        tmp = os.path.join(folder, f"{_LINK_PREFIX}{os.getpid()}-{next(_LINK_NAMES)}")
        try:
            try:  # the folder is there but for the first file of its prefix: no makedirs call
                os.link(src, tmp)
            except FileNotFoundError:  # no folder yet (or no source: the second link says which)
                os.makedirs(folder, exist_ok=True)
                os.link(src, tmp)
            os.replace(tmp, dest)
            if self._sync is not None:
                self._sync.wait()
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                return False
            if isinstance(exc, FileNotFoundError):  # the blob went (gc): write the bytes instead
                return False
            raise StoreError(f"cannot link {dest}: {exc.strerror or exc}") from exc
        return True

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

    def probe(self) -> None:
        _probe(self)


_BAD_SEGMENTS = frozenset({"", ".", ".."})
#: the temporary names of copy_from's links (a uuid4 a link cost more than the link itself;
#: itertools.count's next() is atomic under the GIL)
_LINK_PREFIX = f"{TEMP_PREFIX}{uuid.uuid4().hex[:16]}-"
_LINK_NAMES = itertools.count()


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

    def put(self, key: str, data: bytes) -> None:
        if not self.exists(key):
            self.replace(key, data)

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

    def iter_keys(self) -> Iterator[tuple[str, float, int]]:
        def find() -> Any:
            return self.fs.find(self.root, detail=True).items() if self.fs.exists(self.root) else ()

        found = self._call("list", "", find)
        for path, info in found:
            key = path[len(self.root) + 1 :]
            if key != OWNER_KEY:
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
            f"with IMGCACHE_FILES_STORE (or, if that cache is gone for good, delete {OWNER_KEY} there)"
        )


def is_temporary(key: str) -> bool:
    """A local write's temporary file, which only an interrupted write leaves behind."""
    return key.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)
