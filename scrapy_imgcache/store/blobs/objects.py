"""Blobs in object storage (``s3://``, ``gs://``, ``ftp://``, ``memory://``…) through fsspec,
configured from Scrapy's own ``AWS_*``, ``GCS_*`` and ``FTP_*`` settings (:func:`storage_options`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from ...errors import ConfigError, StoreError
from .base import OWNER_KEY, BlobStore, probe_store

_T = TypeVar("_T")
#: what each object-storage scheme needs installed
BACKENDS = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


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
        probe_store(self)


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
