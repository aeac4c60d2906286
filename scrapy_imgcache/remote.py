"""``RemoteStore``: the :class:`~scrapy_imgcache.store.Store` protocol over an imgcache service.

Set ``IMGCACHE_URL = "http://host:8010"`` and the pipeline and middleware share one cache
with every other crawler that talks to that service. Calls block (components run them in
threads). Each has a timeout, and connection failures, timeouts and 5xx answers are retried
a bounded number of times with a short backoff; after that the call raises
:class:`~scrapy_imgcache.errors.StoreError`, so a service that is down or stuck never hangs
a crawl. Refused images come back as the same typed errors a local store raises.
"""

from __future__ import annotations

import time
from dataclasses import fields
from datetime import datetime
from typing import Any

import httpx

from . import errors
from .errors import InvalidImage, StoreError
from .hashing import ImageInfo, Inspector
from .store import HASH_RE, Entry, PutResult, Usage, validate_bucket

RETRY_STATUSES = frozenset({500, 502, 503, 504})
_ENTRY_FIELDS = {f.name for f in fields(Entry)}
_USAGE_COUNTS = {f.name for f in fields(Usage)} - {"bucket", "clients"}


def _invalid_image_types() -> dict[str, type[InvalidImage]]:
    """reason -> class, for every typed refusal (the server's ``error`` field is the reason)."""
    out: dict[str, type[InvalidImage]] = {}
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, InvalidImage):
            out[value.reason] = value
    return out


INVALID_BY_REASON = _invalid_image_types()


def entry_from_json(data: dict[str, Any]) -> Entry:
    """An :class:`Entry` from the API's entry JSON (unknown extra fields are ignored)."""
    values = {k: v for k, v in data.items() if k in _ENTRY_FIELDS}
    for name in ("lookup_time", "created_at"):
        values[name] = datetime.fromisoformat(values[name])
    return Entry(**values)


def usage_from_json(data: dict[str, Any]) -> Usage:
    counts = {k: int(v) for k, v in data.items() if k in _USAGE_COUNTS}
    clients = {name: usage_from_json(per) for name, per in (data.get("clients") or {}).items()}
    return Usage(bucket=data["bucket"], clients=clients, **counts)


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
            return StoreError(f"imgcache service at {self.url} refused {method} {path}: {resp.status_code} {detail} (check IMGCACHE_API_KEY)")
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
        return [entry_from_json(e) for e in self._json("GET", path, params=params) or []]

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
        }
        form.update({k: str(v) for k, v in optional.items() if v is not None})
        resp = self._request("POST", "/images", data=form, files={"file": (filename or "image", data)})
        if resp.status_code not in (200, 201):
            raise StoreError(f"imgcache service at {self.url}: POST /images answered {resp.status_code}")
        return PutResult(entry_from_json(resp.json()), created=resp.status_code == 201)

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
        """Record ``url`` for an image the service has: the REST API has no call for this.

        So the bytes are fetched and stored again under the new URL; the service dedupes
        them (a 200, not a second copy) and records the URL. Two round trips instead of
        none, and the record counts as an exact duplicate on the service (``duplicate``
        and ``saved_bytes`` cannot be sent). None when the image is not in the bucket.
        """
        data = self.get_bytes(content_hash, bucket)
        if data is None:
            return None
        meta = self.get_meta(content_hash, bucket)
        result = self.put(
            data,
            url=url,
            client_name=client_name,
            bucket=bucket,
            lookup_time=lookup_time,
            filename=meta.original_filename if meta else None,
            etag=etag,
            last_modified=last_modified,
        )
        return result.entry

    # A malformed hash names no image (as in a local store), and is never put in a path.

    def get_bytes(self, content_hash: str, bucket: str = "") -> bytes | None:
        if not HASH_RE.match(content_hash):
            return None
        resp = self._request("GET", f"/images/{content_hash}", params={"bucket": bucket})
        return None if resp.status_code == 404 else resp.content

    def get_meta(self, content_hash: str, bucket: str = "") -> Entry | None:
        if not HASH_RE.match(content_hash):
            return None
        data = self._json("GET", f"/images/meta/{content_hash}", params={"bucket": bucket})
        return None if data is None else entry_from_json(data)

    def lookup(self, url: str, bucket: str = "") -> Entry | None:
        data = self._json("GET", "/images/lookup", params={"url": url, "bucket": bucket})
        return None if data is None else entry_from_json(data)

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

    def urls(self, content_hash: str, bucket: str = "") -> list[Entry]:
        if not HASH_RE.match(content_hash):
            return []
        return self._entries(f"/images/urls/{content_hash}", {"bucket": bucket})

    def delete(self, content_hash: str, bucket: str = "") -> bool:
        if not HASH_RE.match(content_hash):
            return False
        resp = self._request("DELETE", f"/images/{content_hash}", params={"bucket": bucket})
        return resp.status_code != 404

    def usage(self) -> list[Usage]:
        return [usage_from_json(u) for u in self._json("GET", "/usage") or []]

    def health(self) -> bool:
        """True when the service answers ``/health`` (one attempt, no retries)."""
        try:
            return self._http.get("/health").json() == {"status": "ok"}
        except (httpx.HTTPError, ValueError):
            return False


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
            f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', '')}" if isinstance(d, dict) else str(d) for d in detail
        )
    return str(detail)
