"""``RemoteStore``: the :class:`~scrapy_imgcache.store.base.Store` protocol over an imgcache service.

Set ``IMGCACHE_URL = "http://host:8010"`` and the pipeline and middleware share one cache
with every other crawler that talks to that service. Calls block (components run them in
threads). Each has a timeout, and connection failures, timeouts and 5xx answers are retried
a bounded number of times with a short backoff; after that the call raises
:class:`~scrapy_imgcache.errors.StoreError`, so a service that is down or stuck never hangs
a crawl. Refused images come back as the same typed errors a local store raises.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import httpx

from .. import errors
from ..errors import InvalidImage, StoreError
from ..hashing import ImageInfo, Inspector
from .base import (
    HASH_RE,
    Answer,
    BrowsePage,
    BrowseQuery,
    Entry,
    GcReport,
    NearQuery,
    PutResult,
    Usage,
    every_image,
    validate_bucket,
)

if TYPE_CHECKING:
    from ..config import ImgCacheConfig

RETRY_STATUSES = frozenset({500, 502, 503, 504})
#: the headers of ``GET /images/answer`` (see ``scrapy_imgcache.server.images``)
ENTRY_HEADER = "X-Imgcache-Entry"
FRESH_HEADER = "X-Imgcache-Fresh"


def _invalid_image_types() -> dict[str, type[InvalidImage]]:
    """reason -> class, for every typed refusal (the server's ``error`` field is the reason)."""
    out: dict[str, type[InvalidImage]] = {}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, InvalidImage):
            out[value.reason] = value
    return out


INVALID_BY_REASON = _invalid_image_types()


class RemoteStore:
    """A store that is an imgcache REST service (``scrapy_imgcache.server`` or compatible).

    ``api_key`` is sent as ``X-API-Key``; a read key suffices for a crawl that only looks
    images up, storing needs a write key. ``timeout`` bounds each attempt, ``retries`` the
    extra attempts after a connection error, timeout or 5xx.
    """

    def __init__(
        self,
        url: str,
        *,
        inspector: Inspector | None = None,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.inspector = inspector or Inspector()
        self.retries = max(0, retries)
        self.backoff = backoff
        headers = {"User-Agent": "scrapy-imgcache"}
        if api_key:
            headers["X-API-Key"] = api_key
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers, transport=transport)
        #: the service keeps the bytes: there are none here
        self.blobs = None

    @classmethod
    def from_config(cls, config: ImgCacheConfig, create: bool = True) -> RemoteStore:
        """The service ``IMGCACHE_URL`` names, with ``IMGCACHE_API_KEY``, ``_TIMEOUT`` and ``_RETRIES``,
        checked as :meth:`check_access` does (``create``: the caller stores images, so the key
        must be allowed to write), so a crawl that could not use it stops at its start."""
        store = cls(
            config.url,
            inspector=config.inspector(),
            api_key=config.api_key,
            timeout=config.timeout,
            retries=config.retries,
        )
        try:
            store.check_access(write=create)
        except BaseException:
            store.close()
            raise
        return store

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r})"

    def close(self) -> None:
        self._http.close()

    # -- transport ------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with bounded retries; 2xx, 304 and 404 are answers, the rest are errors."""
        attempts = self.retries + 1
        problem = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                resp = self._http.request(method, path, **kwargs)
            except httpx.TimeoutException as exc:
                problem = f"timed out ({type(exc).__name__})"
                continue
            except httpx.TransportError as exc:
                problem = f"cannot connect: {exc}"
                continue
            if resp.status_code in RETRY_STATUSES:
                problem = f"answered {resp.status_code}: {_detail(resp)}"
                continue
            if resp.is_success or resp.status_code == 404:
                return resp
            raise self._refusal(resp, method, path)
        raise StoreError(f"imgcache service at {self.url}: {method} {path} {problem} (after {attempts} attempt(s))")

    def _refusal(self, resp: httpx.Response, method: str, path: str) -> Exception:
        reason, detail = _error_of(resp)
        if reason in INVALID_BY_REASON:
            return INVALID_BY_REASON[reason](detail)
        if resp.status_code in (401, 403):
            return StoreError(
                f"imgcache service at {self.url} refused {method} {path}: {resp.status_code} {detail}"
                " (check IMGCACHE_API_KEY)"
            )
        # a 422 here is input a local store would take (a URL over the service's length limit,
        # say): a StoreError, so IMGCACHE_ON_STORE_ERROR decides, as for any service trouble
        return StoreError(f"imgcache service at {self.url}: {method} {path} answered {resp.status_code}: {detail}")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._request(method, path, **kwargs)
        if resp.status_code == 404:
            return None
        try:
            return resp.json()
        except ValueError as exc:
            raise StoreError(f"imgcache service at {self.url}: {method} {path} answered non-JSON") from exc

    def _entries(self, path: str, params: dict[str, Any]) -> list[Entry]:
        return [Entry.from_json(e) for e in self._json("GET", path, params=params) or []]

    # -- the Store protocol -----------------------------------------------------------------

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
        """POST /images. The service inspects the bytes itself; ``info`` is not sent.

        Without ``filename`` the part is named ``"image"``, as the published client does.
        Storing is idempotent (content-addressed), so a retried upload whose first attempt
        did land comes back as ``created=False``.
        """
        validate_bucket(bucket)
        form: dict[str, Any] = {"url": url, "client_name": client_name, "bucket": bucket}
        optional = {
            "lookup_time": lookup_time.isoformat() if lookup_time else None,
            "etag": etag,
            "last_modified": last_modified,
            "similar_to": similar_to,
            "similar_distance": similar_distance,
            "similar_match": similar_match,
        }
        form.update({k: str(v) for k, v in optional.items() if v is not None})
        resp = self._request("POST", "/images", data=form, files={"file": (filename or "image", data)})
        if resp.status_code not in (200, 201):
            raise StoreError(f"imgcache service at {self.url}: POST /images answered {resp.status_code}")
        return PutResult(Entry.from_json(resp.json()), created=resp.status_code == 201)

    def put_bytes(self, data: bytes, info: ImageInfo) -> None:
        """Nothing to do ahead: the bytes travel with ``put``."""

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
        """POST /images/urls/{hash}: one small request, no bytes; None when the image is not there."""
        validate_bucket(bucket)
        if not HASH_RE.match(content_hash):
            return None
        form: dict[str, Any] = {
            "url": url,
            "client_name": client_name,
            "bucket": bucket,
            "saved_bytes": str(saved_bytes),
        }
        optional = {
            "lookup_time": lookup_time.isoformat() if lookup_time else None,
            "etag": etag,
            "last_modified": last_modified,
            "duplicate": duplicate,
        }
        form.update({k: v for k, v in optional.items() if v is not None})
        data = self._json("POST", f"/images/urls/{content_hash}", data=form)
        return None if data is None else Entry.from_json(data)

    def answer(self, url: str, *, bucket: str, client_name: str, fresh_since: datetime) -> Answer | None:
        """GET /images/answer: the entry, and the bytes when fresh, in one request."""
        params = {"url": url, "bucket": bucket, "client_name": client_name, "fresh_since": fresh_since.isoformat()}
        resp = self._request("GET", "/images/answer", params=params)
        if resp.status_code == 404:
            return None
        try:
            entry = Entry.from_json(json.loads(resp.headers[ENTRY_HEADER]))
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(f"imgcache service at {self.url}: GET /images/answer answered no usable entry") from exc
        fresh = resp.headers.get(FRESH_HEADER) == "true"
        return Answer(entry, resp.content if fresh else None)

    # A malformed hash names no image (as in a local store), and is never put in a path.

    def get_bytes(self, content_hash: str, bucket: str = "") -> bytes | None:
        if not HASH_RE.match(content_hash):
            return None
        resp = self._request("GET", f"/images/{content_hash}", params={"bucket": bucket})
        return None if resp.status_code == 404 else resp.content

    def has_bytes(self, entry: Entry) -> bool:
        """HEAD /images/{hash}."""
        if not HASH_RE.match(entry.content_hash):
            return False
        resp = self._request("HEAD", f"/images/{entry.content_hash}", params={"bucket": entry.bucket})
        return resp.status_code == 200

    def get_meta(self, content_hash: str, bucket: str = "") -> Entry | None:
        if not HASH_RE.match(content_hash):
            return None
        data = self._json("GET", f"/images/meta/{content_hash}", params={"bucket": bucket})
        return None if data is None else Entry.from_json(data)

    def lookup(self, url: str, bucket: str = "") -> Entry | None:
        data = self._json("GET", "/images/lookup", params={"url": url, "bucket": bucket})
        return None if data is None else Entry.from_json(data)

    def search(self, url_contains: str, bucket: str = "", limit: int = 100) -> list[Entry]:
        return self._entries("/images/search", {"url_contains": url_contains, "bucket": bucket, "limit": limit})

    def similar(
        self,
        perceptual_hash: str,
        max_distance: int = 4,
        bucket: str = "",
        limit: int = 100,
        algorithm: str = "phash",
    ) -> list[Entry]:
        params = {
            "perceptual_hash": perceptual_hash,
            "max_hamming_distance": max_distance,
            "bucket": bucket,
            "limit": limit,
            "algorithm": algorithm,
        }
        return self._entries("/images/similar", params)

    def near(self, query: NearQuery, max_distance: int = 8, bucket: str = "", limit: int = 100) -> list[Entry]:
        """POST /images/near: the query's hashes and signature travel, never the image."""
        body = {**query.to_json(), "max_hamming_distance": max_distance, "bucket": bucket, "limit": limit}
        return [Entry.from_json(e) for e in self._json("POST", "/images/near", json=body) or []]

    def near_cached(
        self, content_hash: str, max_distance: int = 8, bucket: str = "", limit: int = 100
    ) -> list[Entry] | None:
        """GET /images/near/{content_hash}."""
        if not HASH_RE.match(content_hash):
            return None
        params = {"max_hamming_distance": max_distance, "bucket": bucket, "limit": limit}
        found = self._json("GET", f"/images/near/{content_hash}", params=params)
        return None if found is None else [Entry.from_json(e) for e in found]

    def urls(self, content_hash: str, bucket: str = "") -> list[Entry]:
        if not HASH_RE.match(content_hash):
            return []
        return self._entries(f"/images/urls/{content_hash}", {"bucket": bucket})

    def delete(self, content_hash: str, bucket: str = "") -> bool:
        if not HASH_RE.match(content_hash):
            return False
        resp = self._request("DELETE", f"/images/{content_hash}", params={"bucket": bucket})
        return resp.status_code != 404

    def images(self, bucket: str | None = None) -> Iterator[Entry]:
        return every_image(self.image_page, bucket)

    def image_page(self, bucket: str | None, after: int = 0, limit: int = 1000) -> tuple[list[Entry], int | None]:
        """GET /images/list (the service decides the page size)."""
        params: dict[str, Any] = {"after": after, "bucket": bucket or "", "all_buckets": bucket is None}
        data = self._json("GET", "/images/list", params=params) or {}
        return [Entry.from_json(e) for e in data.get("images", [])], data.get("next")

    def collect_garbage(
        self, *, grace_seconds: float, older_than: datetime | None = None, dry_run: bool = False
    ) -> GcReport:
        """POST /admin/gc: the service collects its own garbage, next to its data."""
        body = {
            "grace_seconds": grace_seconds,
            "older_than": older_than.isoformat() if older_than else None,
            "dry_run": dry_run,
        }
        return GcReport.from_json(self._json("POST", "/admin/gc", json=body))

    def usage(self) -> list[Usage]:
        return [Usage.from_json(u) for u in self._json("GET", "/usage") or []]

    def browse(self, query: BrowseQuery) -> BrowsePage:
        """GET /images/browse."""
        return BrowsePage.from_json(self._json("GET", "/images/browse", params=query.to_params()) or {"images": []})

    def daily_counts(self, bucket: str | None, days: int) -> list[tuple[date, int]]:
        """GET /usage/daily."""
        params: dict[str, Any] = {"days": days} if bucket is None else {"days": days, "bucket": bucket}
        found = self._json("GET", "/usage/daily", params=params) or []
        return [(date.fromisoformat(row["day"]), int(row["images"])) for row in found]

    def check_access(self, write: bool) -> None:
        """The service answers ``/health``, takes the key, and (``write``) lets it store, or a
        :class:`StoreError` says which does not (two requests). A service without
        ``GET /auth/whoami`` (another implementation of the API) is not asked about the key."""
        health = self._request("GET", "/health")
        if health.status_code != 200 or _body(health) != {"status": "ok"}:
            raise StoreError(
                f"{self.url} is not an imgcache service: GET /health answered {health.status_code} {_detail(health)}"
            )
        granted = _body(self._request("GET", "/auth/whoami"))  # a key refused: StoreError (check IMGCACHE_API_KEY)
        if write and isinstance(granted, dict) and granted.get("scope") == "read":
            raise StoreError(
                f"imgcache service at {self.url}: the key in IMGCACHE_API_KEY may read but not store images, "
                "which a crawl does: use a write key"
            )

    def health(self) -> bool:
        """True when the service answers ``/health`` (one attempt, no retries)."""
        try:
            answer: object = self._http.get("/health").json()
            return answer == {"status": "ok"}
        except (httpx.HTTPError, ValueError):
            return False


def _body(resp: httpx.Response) -> Any:
    """The JSON answer, or None when it is not JSON."""
    try:
        return resp.json()
    except ValueError:
        return None


def _error_of(resp: httpx.Response) -> tuple[str, str]:
    try:
        body = resp.json()
    except ValueError:
        return "", resp.text[:200]
    if isinstance(body, dict):
        return str(body.get("error", "")), _flatten(body.get("detail", body))
    return "", str(body)[:200]


def _detail(resp: httpx.Response) -> str:
    return _error_of(resp)[1] or resp.reason_phrase


def _flatten(detail: Any) -> str:
    if isinstance(detail, list):  # validation errors: where and what
        return "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', '')}" if isinstance(d, dict) else str(d)
            for d in detail
        )
    return str(detail)
