"""The store's interface: what every part of the package may ask of the cache, whatever holds it.

:class:`Store` is the protocol the pipeline, the middleware, the ingestor, the commands and
the server use; ``sql.SqlStore`` implements it over a database and a blob store,
``remote.RemoteStore`` over an imgcache REST service. The records it speaks in
(:class:`Entry`, :class:`PutResult`, :class:`Answer`, :class:`Usage`, :class:`GcReport`) and
the checks of its inputs live here too.

Importing this module loads no database, HTTP or imaging library: the settings and the
commands' help read it at start-up.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..hashing import ImageInfo, Inspector
    from .blobs.base import BlobStore

#: BLAKE2b-256 of the bytes: 64 lowercase hex digits
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
#: a 64-bit perceptual hash: 16 lowercase hex digits
PHASH_RE = re.compile(r"^[0-9a-f]{16}$")
BUCKET_LENGTH = 64
BUCKET_RE = re.compile(rf"^[A-Za-z0-9._-]{{0,{BUCKET_LENGTH}}}$")
MAX_DISTANCE = 32
#: the schemes of the URLs an image may be recorded at: the web, files, ``data:`` URIs, the
#: other schemes Scrapy downloads from (``ftp``, ``s3``), and ``visualsnoop``, the collections
#: API's own records. Nothing else is stored, so no page made from the cache can link to a
#: ``javascript:`` URL.
URL_SCHEMES = frozenset({"http", "https", "file", "data", "ftp", "s3", "visualsnoop"})
#: a URL of one of :data:`URL_SCHEMES` (any case) with no control character in it: the one
#: check of every URL recorded, by the store's writes and by the service's forms alike (so a
#: crawl through a RemoteStore records what one on the database would); a pattern both
#: Python's ``re`` and pydantic's Rust engine read the same way
URL_PATTERN = rf"^(?i:{'|'.join(sorted(URL_SCHEMES))}):[^\x00-\x1f\x7f]*$"
_URL_RE = re.compile(URL_PATTERN)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime) -> datetime:
    """Naive times are taken as UTC (as the database columns store them)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def validate_bucket(bucket: str) -> str:
    if not isinstance(bucket, str) or not BUCKET_RE.match(bucket):
        raise ValueError(f"bad bucket name {bucket!r}: up to {BUCKET_LENGTH} of A-Z a-z 0-9 . _ -")
    return bucket


def validate_url(url: str) -> str:
    """A URL of one of :data:`URL_SCHEMES`, with no control character in it."""
    if not isinstance(url, str) or _URL_RE.fullmatch(url) is None:
        shown = url[:100] if isinstance(url, str) else url
        raise ValueError(
            f"bad URL {shown!r}: a URL of one of the schemes {', '.join(sorted(URL_SCHEMES))}, "
            "without control characters, expected"
        )
    return url


def validate_phash(value: str) -> str:
    if not isinstance(value, str) or not PHASH_RE.match(value):
        raise ValueError(f"bad perceptual hash {value!r}: 16 lowercase hex digits expected")
    return value


def validate_distance(value: int) -> int:
    if not isinstance(value, int) or not 0 <= value <= MAX_DISTANCE:
        raise ValueError(f"bad max distance {value!r}: an integer from 0 to {MAX_DISTANCE}")
    return value


@dataclass(frozen=True)
class Entry:
    """One cached image as seen at one URL: the imgcache API's entry schema, plus extras."""

    url: str
    content_hash: str
    content_type: str
    file_size_bytes: int
    original_filename: str | None
    width: int | None
    height: int | None
    perceptual_hash: str | None
    client_name: str
    lookup_time: datetime
    created_at: datetime
    bucket: str
    hash_algorithm: str = "phash"
    flat: bool = False
    etag: str | None = None
    last_modified: str | None = None
    path: str | None = None
    similar_to: str | None = None
    similar_distance: int | None = None
    similar_match: str | None = None
    #: how this URL's record came to be: ``"exact"`` (the bytes were cached already from another
    #: URL), ``"similar"`` (a near-duplicate not stored again), or None (it brought the bytes)
    duplicate: str | None = None
    #: when this URL's record was made: the URL was first seen with this image (``lookup_time``
    #: is when it was last fetched or revalidated)
    first_seen: datetime | None = None
    #: in near-duplicate results: how it matched the query (``identical``, ``resized``,
    #: ``cropped``, ``mirrored``, ``rotated``, ``bordered``, ``edited``; None when only the pHash
    #: said so)
    match: str | None = None
    #: in search results: the bits between its pHash and the query's
    hamming_distance: int | None = None
    #: in robust search results: the bits between the query's hash that found it and its row's
    #: (the pHash's, or a mirrored, rotated or cropped window's; docs/near-duplicates.md)
    match_distance: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["lookup_time"] = self.lookup_time.isoformat()
        data["created_at"] = self.created_at.isoformat()
        data["first_seen"] = None if self.first_seen is None else self.first_seen.isoformat()
        for name in ("match", "hamming_distance", "match_distance"):  # fields of search results only
            if data[name] is None:
                del data[name]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        """An entry from the API's entry JSON (unknown extra fields are ignored)."""
        values = {k: v for k, v in data.items() if k in _ENTRY_FIELDS}
        for name in ("lookup_time", "created_at"):
            values[name] = datetime.fromisoformat(values[name])
        if values.get("first_seen") is not None:
            values["first_seen"] = datetime.fromisoformat(values["first_seen"])
        return cls(**values)


_ENTRY_FIELDS = frozenset(f.name for f in fields(Entry))


@dataclass(frozen=True)
class NearQuery:
    """What a near-duplicate search asks with: the query image's perceptual hash and, for robust
    search, its extra query hashes and verification signature (:mod:`scrapy_imgcache.nearsig`)."""

    perceptual_hash: str
    algorithm: str = "phash"
    signature: bytes | None = None
    query_hashes: tuple[tuple[str, int], ...] = ()
    #: the query image's content hash, when it has bytes: a hit with the same bytes is ``identical``
    content_hash: str | None = None

    @classmethod
    def of(cls, info: ImageInfo) -> NearQuery:
        return cls(info.perceptual_hash, info.algorithm, info.signature, info.query_hashes, info.content_hash)

    def to_json(self) -> dict[str, Any]:
        return {
            "perceptual_hash": self.perceptual_hash,
            "algorithm": self.algorithm,
            "signature": None if self.signature is None else base64.b64encode(self.signature).decode("ascii"),
            "query_hashes": [[kind, f"{value:016x}"] for kind, value in self.query_hashes],
            "content_hash": self.content_hash,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NearQuery:
        signature = data.get("signature")
        content_hash = data.get("content_hash")
        if content_hash is not None and not HASH_RE.match(content_hash):
            raise ValueError(f"bad content hash {content_hash!r}")
        return cls(
            perceptual_hash=validate_phash(data["perceptual_hash"]),
            algorithm=str(data.get("algorithm", "phash")),
            signature=None if signature is None else base64.b64decode(signature, validate=True),
            query_hashes=tuple((str(kind), int(value, 16)) for kind, value in data.get("query_hashes", ())),
            content_hash=content_hash,
        )


def near_result(entry: Entry, query: NearQuery) -> Entry:
    """A verified hit of robust search, whose ``hamming_distance`` is that of the hash that found
    it, as reported: ``hamming_distance`` the bits between the two pHashes, ``match_distance``
    the found hash's, and ``match`` ``identical`` when it has the query's own bytes."""
    phash = entry.perceptual_hash
    distance = (int(phash, 16) ^ int(query.perceptual_hash, 16)).bit_count() if phash else entry.hamming_distance
    same_bytes = query.content_hash is not None and entry.content_hash == query.content_hash
    match = "identical" if same_bytes else entry.match
    return replace(entry, hamming_distance=distance, match_distance=entry.hamming_distance, match=match)


@dataclass(frozen=True)
class PutResult:
    entry: Entry
    created: bool  # False: identical bytes were already in the bucket


@dataclass(frozen=True)
class Answer:
    """What the cache knows of a URL, in one call: its newest entry and, when that entry is
    fresh, the image's bytes (None: stale, to be revalidated with the entry's validators)."""

    entry: Entry
    body: bytes | None
    #: the entry is fresh but its bytes are gone, or no longer match their hash (damaged on
    #: disk): to be fetched again from scratch, its validators being of no use
    damaged: bool = False


@dataclass
class Usage:
    """Counts for one bucket (and, in ``clients``, per client name)."""

    bucket: str
    images: int = 0
    bytes: int = 0
    urls: int = 0
    exact_duplicates: int = 0
    exact_bytes_saved: int = 0
    similar_duplicates: int = 0
    similar_bytes_saved: int = 0
    clients: dict[str, Usage] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        counts = {k: int(v) for k, v in data.items() if k in _USAGE_COUNTS}
        clients = {name: cls.from_json(per) for name, per in (data.get("clients") or {}).items()}
        return cls(bucket=data["bucket"], clients=clients, **counts)


_USAGE_COUNTS = frozenset(f.name for f in fields(Usage)) - {"bucket", "clients"}

#: the duplicate kinds :class:`BrowseQuery` filters by: ``exact`` (seen at another URL too, as
#: the same bytes), ``near`` (stored as a near-duplicate of another image, or a near-duplicate
#: URL was recorded against it), ``none`` (neither)
DUPLICATE_KINDS = ("exact", "near", "none")
#: a browsing cursor: an image's creation time (microseconds since the epoch) and its row id
CURSOR_RE = re.compile(r"^(\d{1,19})-(\d{1,19})$")
MAX_PAGE = 500


@dataclass(frozen=True)
class BrowseQuery:
    """A page of one bucket's images, newest first, filtered: by the client that stored it,
    its content type, its duplicate kind (:data:`DUPLICATE_KINDS`) and its size in bytes.
    ``before``/``after``: a cursor of a :class:`BrowsePage` (the older/newer page)."""

    bucket: str = ""
    client: str | None = None
    content_type: str | None = None
    duplicate: str | None = None
    min_size: int | None = None
    max_size: int | None = None
    before: str | None = None
    after: str | None = None
    limit: int = 60

    def __post_init__(self) -> None:
        validate_bucket(self.bucket)
        if self.duplicate is not None and self.duplicate not in DUPLICATE_KINDS:
            raise ValueError(f"bad duplicate kind {self.duplicate!r}: one of {', '.join(DUPLICATE_KINDS)}")
        for cursor in (self.before, self.after):
            if cursor is not None:
                parse_cursor(cursor)
        if self.before is not None and self.after is not None:
            raise ValueError("a page is either before or after a cursor, not both")
        if not 1 <= self.limit <= MAX_PAGE:
            raise ValueError(f"bad page size {self.limit!r}: 1 to {MAX_PAGE}")

    def to_params(self) -> dict[str, Any]:
        """The query as URL parameters (``GET /images/browse``), the unset ones left out."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class BrowsePage:
    """Images newest first, and the cursors of the newer and older pages (None: there is none)."""

    entries: list[Entry]
    newer: str | None
    older: str | None

    def to_json(self) -> dict[str, Any]:
        return {"images": [e.to_json() for e in self.entries], "newer": self.newer, "older": self.older}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BrowsePage:
        return cls([Entry.from_json(e) for e in data["images"]], data.get("newer"), data.get("older"))


def make_cursor(created_at: datetime, row_id: int) -> str:
    moment = as_utc(created_at) - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return f"{moment // _MICROSECOND}-{row_id}"


def parse_cursor(cursor: str) -> tuple[datetime, int]:
    """(creation time, row id) of a cursor made by :func:`make_cursor`; ValueError if malformed."""
    match = CURSOR_RE.match(cursor) if isinstance(cursor, str) else None
    if match is None or int(match.group(2)) >= 2**63:  # row ids are 64-bit signed integers
        raise ValueError(f"bad cursor {cursor!r}")
    try:
        moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + int(match.group(1)) * _MICROSECOND
    except OverflowError as exc:
        raise ValueError(f"bad cursor {cursor!r}") from exc
    return moment, int(match.group(2))


_MICROSECOND = timedelta(microseconds=1)


def every_image(
    image_page: Callable[[str | None, int], tuple[list[Entry], int | None]], bucket: str | None
) -> Iterator[Entry]:
    """``Store.images()`` over a store's ``image_page()``: page after page until the last."""
    after: int | None = 0
    while after is not None:
        page, after = image_page(bucket, after)
        yield from page


@dataclass
class GcReport:
    """What a garbage collection removed (or, in a dry run, would remove)."""

    dry_run: bool
    #: rows whose bytes were deleted by hand: damage, reported first
    missing: list[Entry] = field(default_factory=list)
    #: images no URL was seen at since the cutoff (only when one was given)
    expired: list[Entry] = field(default_factory=list)
    expired_bytes: int = 0
    #: blobs and thumbnails no row references, and temporary files of interrupted writes
    orphans: int = 0
    orphan_bytes: int = 0

    @property
    def freed(self) -> int:
        return self.expired_bytes + self.orphan_bytes

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["missing"] = [e.to_json() for e in self.missing]
        data["expired"] = [e.to_json() for e in self.expired]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GcReport:
        return cls(
            dry_run=bool(data["dry_run"]),
            missing=[Entry.from_json(e) for e in data["missing"]],
            expired=[Entry.from_json(e) for e in data["expired"]],
            expired_bytes=int(data["expired_bytes"]),
            orphans=int(data["orphans"]),
            orphan_bytes=int(data["orphan_bytes"]),
        )


class Store(Protocol):
    """The cache as every component sees it. Blocking (call it from a thread); safe to call
    from many threads at once. A malformed content hash names no image (None/False/[])."""

    @property
    def inspector(self) -> Inspector:
        """How the store judges bytes (its limits and hash algorithm)."""
        ...

    @property
    def blobs(self) -> BlobStore | None:
        """Where the cache's own files (image bytes, thumbnails) are, when it keeps any
        locally or in object storage; None for a remote service, which keeps them itself."""
        ...

    # -- writing ---------------------------------------------------------------------------

    def put(
        self,
        data: bytes,
        *,
        url: str,
        client_name: str,
        bucket: str = "",
        lookup_time: datetime | None = None,
        filename: str | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        info: ImageInfo | None = None,
        similar_to: str | None = None,
        similar_distance: int | None = None,
        similar_match: str | None = None,
    ) -> PutResult:
        """Store ``data`` (once per bucket) and record ``url`` for it.

        ``info``: :meth:`Inspector.inspect` of exactly these bytes, when the caller has it
        (they are then not decoded again); without it the bytes are inspected here.
        """
        ...

    def put_bytes(self, data: bytes, info: ImageInfo) -> None:
        """Make the bytes durable ahead of the ``put`` that will record them (a store that
        writes files can do this outside any lock; others need not do anything)."""
        ...

    def record_url(
        self,
        content_hash: str,
        *,
        url: str,
        client_name: str,
        bucket: str = "",
        lookup_time: datetime | None = None,
        etag: str | None = None,
        last_modified: str | None = None,
        duplicate: str | None = None,
        saved_bytes: int = 0,
    ) -> Entry | None:
        """Record a sighting of ``url`` for an image already cached (a 304, an exact copy, a
        skipped near-duplicate, another spider's hit); None when the image is not there."""
        ...

    def delete(self, content_hash: str, bucket: str = "") -> bool:
        """Remove the image from ``bucket``: its record, every URL record of it, and its bytes
        (unless another bucket holds the same). True when this call removed it, False when it
        was not there: of calls racing to delete one image exactly one is True (the service
        answers 204 to it and 404 to the others), so finding the row and removing it must be
        one step (the row count of the DELETE), not a look then a removal."""
        ...

    # -- reading ---------------------------------------------------------------------------

    def get_meta(self, content_hash: str, bucket: str = "") -> Entry | None: ...
    def get_bytes(self, content_hash: str, bucket: str = "") -> bytes | None: ...

    def has_bytes(self, entry: Entry) -> bool:
        """Whether the bytes of a cached image are present (rows can outlive them)."""
        ...

    def lookup(self, url: str, bucket: str = "") -> Entry | None: ...

    def answer(self, url: str, *, bucket: str, client_name: str, fresh_since: datetime) -> Answer | None:
        """A URL's newest entry, with its bytes when seen since ``fresh_since``: the cache hit
        in one call. A fresh hit by another client than the one that last recorded the URL is
        recorded for ``client_name`` too (with the original fetch time, so freshness is not
        extended). None when the URL is unknown; a fresh entry whose bytes are gone is stale."""
        ...

    def search(self, url_contains: str, bucket: str = "", limit: int = 100) -> list[Entry]: ...

    def similar(
        self,
        perceptual_hash: str,
        max_distance: int = 4,
        bucket: str = "",
        limit: int = 100,
        algorithm: str = "phash",
    ) -> list[Entry]:
        """Images whose hash is within ``max_distance`` bits, nearest first (flat ones never)."""
        ...

    def near(self, query: NearQuery, max_distance: int = 8, bucket: str = "", limit: int = 100) -> list[Entry]:
        """Near-duplicates of the query image, best first, each with ``match`` (how it matched)
        and ``hamming_distance``: with a signature, the candidates the query's hashes find
        (``max_distance`` bits for the perceptual hash) and that verification accepts; without
        one, as :meth:`similar`."""
        ...

    def near_cached(
        self, content_hash: str, max_distance: int = 8, bucket: str = "", limit: int = 100
    ) -> list[Entry] | None:
        """:meth:`near` for a cached image (None when there is no such image), itself left out:
        searched with the hashes and signature its record keeps, and its recorded near-duplicate
        links checked too, so nothing is decoded again."""
        ...

    def urls(self, content_hash: str, bucket: str = "") -> list[Entry]:
        """Every URL record of one image, most recent first."""
        ...

    def images(self, bucket: str | None = None) -> Iterator[Entry]:
        """Every image (with its most recent URL), oldest first; None walks every bucket."""
        ...

    def image_page(self, bucket: str | None, after: int = 0, limit: int = 1000) -> tuple[list[Entry], int | None]:
        """A page of :meth:`images` past the cursor ``after`` (0: the first), and the next cursor
        (None after the last page)."""
        ...

    def usage(self) -> list[Usage]: ...

    def browse(self, query: BrowseQuery) -> BrowsePage:
        """A page of a bucket's images (each with its most recent URL), newest first, as
        ``query`` filters them; the cost of a page does not grow with how deep it is."""
        ...

    def daily_counts(self, bucket: str | None, days: int) -> list[tuple[date, int]]:
        """Images stored per day (UTC) over the last ``days`` days, oldest first, days with
        none left out; ``bucket`` None counts every bucket."""
        ...

    # -- looking after it ------------------------------------------------------------------

    def collect_garbage(
        self, *, grace_seconds: float, older_than: datetime | None = None, dry_run: bool = False
    ) -> GcReport:
        """Remove rows whose bytes are gone, images not seen since ``older_than``, and files
        no row references that are older than ``grace_seconds`` (``dry_run``: only count)."""
        ...

    def close(self) -> None: ...
