"""``IMGCACHE_*`` settings, parsed and checked once into a typed config.

A bad value raises :class:`~scrapy_imgcache.errors.ConfigError` naming the setting when the
crawler starts, not deep inside a callback. Every setting is documented in the README.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .hashing import (
    ALGORITHMS,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageLimits,
    Inspector,
)
from .store.base import BUCKET_RE, MAX_DISTANCE

if TYPE_CHECKING:
    pass

ON_SIMILAR = ("annotate", "skip", "drop")
SIMILARITY = ("robust", "phash")
ON_STORE_ERROR = ("fail", "continue")
DEFAULT_DB_NAME = "imgcache.sqlite3"
DEFAULT_FILES_NAME = "imgcache-files"

#: name -> default; the single list of what this package reads from Scrapy settings
DEFAULTS: dict[str, Any] = {
    "IMGCACHE_ENABLED": True,
    "IMGCACHE_URL": None,  # None: sqlite:///<project>/.scrapy/imgcache.sqlite3
    "IMGCACHE_FILES_STORE": None,  # None: <project>/.scrapy/imgcache-files
    "IMGCACHE_INDEX_DIR": None,  # None: beside a SQLite file, else <project>/.scrapy
    "IMGCACHE_BUCKET": "",
    "IMGCACHE_CLIENT_NAME": None,  # None: the spider's name
    "IMGCACHE_HASH": "phash",
    "IMGCACHE_FAST_HASH": False,
    "IMGCACHE_HASH_PROCESSES": None,  # None: one worker process a core; 0: hash in threads
    "IMGCACHE_SIMILARITY": "robust",
    "IMGCACHE_SIMILARITY_THRESHOLD": 8,
    "IMGCACHE_ON_SIMILAR": "annotate",
    "IMGCACHE_EXPIRES": None,  # None: IMAGES_EXPIRES days (90 unless set)
    "IMGCACHE_MAX_BYTES": DEFAULT_MAX_BYTES,
    "IMGCACHE_MAX_PIXELS": DEFAULT_MAX_PIXELS,
    "IMGCACHE_API_KEY": None,
    "IMGCACHE_TIMEOUT": 10.0,
    "IMGCACHE_RETRIES": 2,
    "IMGCACHE_ON_STORE_ERROR": "fail",
    "IMGCACHE_GC_GRACE": 3600,
    "IMGCACHE_STORE_SCHEMES": {},
}

#: the service's environment variables (docs/server.md, docs/visualsnoop.md): no crawl reads
#: them, but a project may keep them in its settings beside the rest, so they are no typos
SERVICE_NAMES = frozenset(
    {
        "IMGCACHE_SERVER_DB",
        "IMGCACHE_SERVER_FILES",
        "IMGCACHE_SERVER_READ_KEYS",
        "IMGCACHE_SERVER_WRITE_KEYS",
        "IMGCACHE_SECRETS_KEY",
        "IMGCACHE_SECRETS_KEY_FILE",
        "IMGCACHE_VISUALSNOOP_SKEW",
        "IMGCACHE_VISUALSNOOP_DISTANCE",
    }
)
_PREFIX = "IMGCACHE_"


def unknown_settings(settings: Any) -> list[str]:
    """A warning for each ``IMGCACHE_*`` name in ``settings`` (at any priority: the project's,
    a spider's ``custom_settings``, ``-s``) that nothing reads, with the closest known name:
    ``IMGCACHE_ON_SIMILAR`` mistyped without its second underscore was ignored without a word."""
    known = sorted(n[len(_PREFIX) :] for n in (*DEFAULTS, *SERVICE_NAMES))
    warnings = []
    for name in sorted(n for n in settings if isinstance(n, str) and n.startswith(_PREFIX)):
        if name in DEFAULTS or name in SERVICE_NAMES:
            continue
        # compared without the prefix every name shares, which would make any two look alike
        closest = difflib.get_close_matches(name[len(_PREFIX) :], known, n=1)
        hint = f"did you mean {_PREFIX}{closest[0]}?" if closest else "docs/reference/settings.md lists them"
        warnings.append(f"{name} is not a scrapy-imgcache setting, so it is ignored; {hint}")
    return warnings


@dataclass(frozen=True)
class ImgCacheConfig:
    enabled: bool = True
    url: str = ""
    files_store: str = ""
    #: the folder of the similarity index file the processes of a host share (docs/store.md)
    index_dir: str = ""
    bucket: str = ""
    client_name: str | None = None
    hash: str = "phash"
    fast_hash: bool = False
    hash_processes: int = 0
    similarity: str = "robust"
    similarity_threshold: int = 8
    on_similar: str = "annotate"
    expires: float = 90 * 86400
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    api_key: str | None = None
    timeout: float = 10.0
    retries: int = 2
    on_store_error: str = "fail"
    gc_grace: float = 3600
    #: URL scheme -> store class (or its import path), over the built-in table
    store_schemes: Mapping[str, Any] = field(default_factory=dict)
    #: whether IMGCACHE_URL was left to its default (whose folder is made when missing)
    url_is_default: bool = False
    #: whether IMGCACHE_EXPIRES was set (else the pipeline's own IMAGES_EXPIRES applies)
    expires_set: bool = False
    #: Scrapy's storage settings (AWS_*, GCS_*, FTP_*), for object-storage blob stores
    storage_settings: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Any) -> ImgCacheConfig:
        """Read ``IMGCACHE_*`` from Scrapy settings (or any mapping with ``get``)."""

        def get(name: str) -> Any:
            value = settings.get(name)
            return DEFAULTS[name] if value is None else value

        url = _str("IMGCACHE_URL", get("IMGCACHE_URL") or f"sqlite:///{project_data_path(DEFAULT_DB_NAME)}")
        files = get("IMGCACHE_FILES_STORE") or _default_files(url)
        bucket = _str("IMGCACHE_BUCKET", get("IMGCACHE_BUCKET"))
        if not BUCKET_RE.match(bucket):
            raise ConfigError(f"IMGCACHE_BUCKET={bucket!r}: up to 64 of A-Z a-z 0-9 . _ -")
        algorithm = _choice("IMGCACHE_HASH", get("IMGCACHE_HASH"), ALGORITHMS)
        threshold = int_setting("IMGCACHE_SIMILARITY_THRESHOLD", get("IMGCACHE_SIMILARITY_THRESHOLD"), 0, MAX_DISTANCE)
        return cls(
            enabled=_bool("IMGCACHE_ENABLED", get("IMGCACHE_ENABLED")),
            url=url,
            files_store=_str("IMGCACHE_FILES_STORE", files),
            index_dir=_str("IMGCACHE_INDEX_DIR", get("IMGCACHE_INDEX_DIR") or _default_index_dir(url)),
            bucket=bucket,
            client_name=_str("IMGCACHE_CLIENT_NAME", get("IMGCACHE_CLIENT_NAME") or "") or None,
            hash=algorithm,
            fast_hash=_bool("IMGCACHE_FAST_HASH", get("IMGCACHE_FAST_HASH")),
            hash_processes=_hash_processes(settings.get("IMGCACHE_HASH_PROCESSES")),
            similarity=_choice("IMGCACHE_SIMILARITY", get("IMGCACHE_SIMILARITY"), SIMILARITY),
            similarity_threshold=threshold,
            on_similar=_choice("IMGCACHE_ON_SIMILAR", get("IMGCACHE_ON_SIMILAR"), ON_SIMILAR),
            expires=_expires(settings),
            expires_set=settings.get("IMGCACHE_EXPIRES") is not None,
            max_bytes=int_setting("IMGCACHE_MAX_BYTES", get("IMGCACHE_MAX_BYTES"), 1),
            max_pixels=int_setting("IMGCACHE_MAX_PIXELS", get("IMGCACHE_MAX_PIXELS"), 1),
            api_key=_str("IMGCACHE_API_KEY", get("IMGCACHE_API_KEY") or "") or None,
            timeout=float_setting("IMGCACHE_TIMEOUT", get("IMGCACHE_TIMEOUT"), 0.001),
            retries=int_setting("IMGCACHE_RETRIES", get("IMGCACHE_RETRIES"), 0, 10),
            on_store_error=_choice("IMGCACHE_ON_STORE_ERROR", get("IMGCACHE_ON_STORE_ERROR"), ON_STORE_ERROR),
            gc_grace=float_setting("IMGCACHE_GC_GRACE", get("IMGCACHE_GC_GRACE"), 0),
            store_schemes=_schemes(settings.get("IMGCACHE_STORE_SCHEMES")),
            url_is_default=not settings.get("IMGCACHE_URL"),
            storage_settings={name: settings.get(name) for name in STORAGE_SETTINGS},
        )

    @property
    def is_remote(self) -> bool:
        return self.url.startswith(("http://", "https://"))

    def inspector(self) -> Inspector:
        return Inspector(
            ImageLimits(self.max_bytes, self.max_pixels), self.hash, self.fast_hash, self.similarity == "robust"
        )


#: Scrapy's settings for its files stores, which the cache's blob stores honour too
STORAGE_SETTINGS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_REGION_NAME",
    "AWS_USE_SSL",
    "AWS_VERIFY",
    "GCS_PROJECT_ID",
    "FTP_USER",
    "FTP_PASSWORD",
    "FEED_STORAGE_FTP_ACTIVE",
)


def enabled(settings: Any) -> bool:
    """``IMGCACHE_ENABLED`` alone (the add-on reads it before anything else)."""
    value = settings.get("IMGCACHE_ENABLED")
    return True if value is None else _bool("IMGCACHE_ENABLED", value)


def _expires(settings: Any) -> float:
    """``IMGCACHE_EXPIRES`` seconds, else ``IMAGES_EXPIRES`` days (Scrapy's), else 90 days."""
    if settings.get("IMGCACHE_EXPIRES") is not None:
        return float_setting("IMGCACHE_EXPIRES", settings.get("IMGCACHE_EXPIRES"), 0)
    days = settings.get("IMAGES_EXPIRES")
    return 90 * 86400.0 if days is None else float_setting("IMAGES_EXPIRES", days, 0) * 86400


def project_data_path(name: str) -> str:
    """``<project>/.scrapy/<name>`` inside a Scrapy project, ``./.scrapy/<name>`` elsewhere."""
    from scrapy.utils.project import data_path

    try:
        return os.path.abspath(data_path(name))
    except FileExistsError:  # Scrapy makes .scrapy/ if it did not exist a moment ago: another
        # crawl starting in the same project at the same moment (scrapyd) made it first
        return os.path.abspath(data_path(name))


def _default_index_dir(url: str) -> str:
    """The project's data folder for a database server; "" for SQLite (the store puts the
    file beside the database's; none for an in-memory one) and a remote service (it holds
    the index)."""
    if url.startswith(("http://", "https://", "sqlite")):
        return ""
    return os.path.dirname(project_data_path(DEFAULT_DB_NAME))


def _default_files(url: str) -> str:
    """``<name>-files`` beside a SQLite file ``<name>.sqlite3`` (so each SQLite cache of a
    folder has its own: ``imgcache.sqlite3`` → ``imgcache-files``), else in the project's data."""
    if url.startswith(("http://", "https://")):
        return ""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = os.path.abspath(url[len("sqlite:///") :].split("?", 1)[0])
        stem = os.path.splitext(os.path.basename(path))[0] or "imgcache"
        return os.path.join(os.path.dirname(path), f"{stem}-files")
    return project_data_path(DEFAULT_FILES_NAME)


def _hash_processes(value: Any) -> int:
    if value is None or value == "":
        from .workers import default_hash_processes

        return default_hash_processes()
    return int_setting("IMGCACHE_HASH_PROCESSES", value, 0, 256)


def _schemes(value: Any) -> dict[str, Any]:
    if value is None or value == "":
        return {}
    if hasattr(value, "copy_to_dict"):  # a Scrapy BaseSettings given as a dict setting
        value = value.copy_to_dict()
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"IMGCACHE_STORE_SCHEMES={value!r}: a dict of URL scheme -> store class is expected")
    return {k.lower(): v for k, v in value.items()}


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name}={value!r}: a string is expected")
    return value


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name}={value!r}: true or false is expected")


def int_setting(name: str, value: Any, low: int, high: int | None = None) -> int:
    """An integer setting (or environment variable) ``name`` in ``low..high``, or a ConfigError naming it."""
    try:
        number = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or number < low or (high is not None and number > high):
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ConfigError(f"{name}={value!r}: an integer {span} is expected")
    return number


def float_setting(name: str, value: Any, low: float) -> float:
    """A number setting ``name`` of at least ``low``, or a ConfigError naming it."""
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < low or number != number:
        raise ConfigError(f"{name}={value!r}: a number of at least {low} is expected")
    return number


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: one of {', '.join(choices)} is expected")
    return str(value)
