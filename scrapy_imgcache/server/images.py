"""The imgcache API (``/images``, ``/serve``): the contract of the published client, and the
calls ``RemoteStore`` adds to it so that a crawler's cache hit costs one request.

Store calls block, so every route that touches the store is a plain ``def``: FastAPI runs
those in its thread pool, and the event loop never waits on a database.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..contract import MATCHES
from ..errors import InvalidImage, TooManyBytes
from ..hashing import ALGORITHMS
from ..imaging import ALLOWED_FORMATS
from ..store.base import BUCKET_RE, HASH_RE, MAX_DISTANCE, PHASH_RE, NearQuery, Store
from .auth import READ, WRITE, ApiKeys, require
from .common import (
    MAX_RESULTS,
    MAX_URL,
    TEXT,
    URL,
    ApiError,
    Bucket,
    ContentHash,
    EntryOut,
    Limit,
    entry_json,
    errors,
    not_found,
    parse_time,
)
from .metrics import Metrics

IMAGE_TYPES = sorted({mime for mime, _ext in ALLOWED_FORMATS.values()})
IMAGE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"
#: the headers of ``GET /images/answer``: the entry as JSON, and whether the body is the image
ENTRY_HEADER = "X-Imgcache-Entry"
FRESH_HEADER = "X-Imgcache-Fresh"
PAGE = 500

MATCH_PATTERN = "^(" + "|".join(MATCHES) + ")$"


class NearQueryIn(BaseModel):
    """The body of ``POST /images/near`` (see ``scrapy_imgcache.store.base.NearQuery``)."""

    perceptual_hash: str = Field(pattern=PHASH_RE.pattern)
    algorithm: str = Field("phash", pattern="^(" + "|".join(ALGORITHMS) + ")$")
    signature: str | None = Field(None, max_length=1024, pattern=r"^[A-Za-z0-9+/=]*$", description="base64")
    query_hashes: list[tuple[str, str]] = Field(default_factory=list, max_length=16)
    content_hash: str | None = Field(None, pattern=HASH_RE.pattern, description="a hit with these bytes: identical")
    max_hamming_distance: int = Field(8, ge=0, le=MAX_DISTANCE)
    bucket: str = Field("", pattern=BUCKET_RE.pattern, max_length=64)
    limit: int = Field(100, ge=1, le=MAX_RESULTS)


UrlField = Annotated[str, Form(min_length=1, max_length=MAX_URL, pattern=URL)]
ClientField = Annotated[str, Form(min_length=1, max_length=255, pattern=TEXT)]
BucketField = Annotated[str, Form(pattern=BUCKET_RE.pattern, max_length=64)]
TimeField = Annotated[str | None, Form(max_length=64, description="ISO 8601; default now")]
EtagField = Annotated[str | None, Form(max_length=255, pattern=TEXT)]
ModifiedField = Annotated[str | None, Form(max_length=64, pattern=TEXT)]


@dataclass(frozen=True)
class Service:
    """What every route of the API needs: the store and the service's own settings."""

    store: Store
    keys: ApiKeys
    metrics: Metrics
    max_image: int
    public_serve: bool

    @property
    def readers(self) -> list[Any]:
        return [Depends(require(self.keys, READ))]

    @property
    def writers(self) -> list[Any]:
        return [Depends(require(self.keys, WRITE))]


def images_router(service: Service) -> APIRouter:
    router = APIRouter(tags=["images"])
    # the fixed /images/... paths come before /images/{content_hash} so it never shadows them
    _storing(router, service)
    _reading(router, service)
    _near(router, service)
    _crawling(router, service)
    _bytes(router, service)
    return router


def _storing(router: APIRouter, svc: Service) -> None:
    store, metrics, max_image = svc.store, svc.metrics, svc.max_image

    @router.post(
        "/images",
        dependencies=svc.writers,
        status_code=201,
        response_model=EntryOut,
        responses={
            200: {"model": EntryOut, "description": "identical bytes were already stored"},
            **errors(400, 401, 403, 413, 415, 422, 503),
        },
    )
    def store_image(
        file: Annotated[UploadFile, File(description="the image bytes; the part's filename is the filename hint")],
        url: UrlField,
        client_name: ClientField,
        bucket: BucketField = "",
        lookup_time: TimeField = None,
        etag: EtagField = None,
        last_modified: ModifiedField = None,
        similar_to: Annotated[str | None, Form(pattern=HASH_RE.pattern)] = None,
        similar_distance: Annotated[int | None, Form(ge=0, le=64)] = None,
        similar_match: Annotated[str | None, Form(pattern=MATCH_PATTERN)] = None,
    ) -> Response:
        """Store an image: 201 when new in the bucket, 200 when identical bytes were there."""
        when = parse_time(lookup_time)
        data = file.file.read(max_image + 1)
        if len(data) > max_image:
            metrics.uploads.labels(TooManyBytes.reason).inc()
            raise TooManyBytes(f"image is over the limit of {max_image} bytes")
        try:
            result = store.put(
                data, url=url, client_name=client_name, bucket=bucket, lookup_time=when,
                filename=_filename(file.filename), etag=etag or None, last_modified=last_modified or None,
                similar_to=similar_to or None, similar_distance=similar_distance, similar_match=similar_match or None,
            )  # fmt: skip
        except InvalidImage as exc:
            metrics.uploads.labels(exc.reason).inc()
            raise
        metrics.uploads.labels("created" if result.created else "duplicate").inc()
        if result.created:
            metrics.upload_bytes.inc(len(data))
        return entry_json(result.entry, 201 if result.created else 200)

    @router.delete(
        "/images/{content_hash}",
        dependencies=svc.writers,
        status_code=204,
        response_class=Response,
        responses=errors(401, 403, 404, 422),
    )
    def delete(content_hash: ContentHash, bucket: Bucket = "") -> Response:
        """Remove the entry, every URL record of it, and its bytes (unless another bucket holds them)."""
        if not store.delete(content_hash, bucket):
            raise not_found(content_hash, bucket)
        return Response(status_code=204)


def _reading(router: APIRouter, svc: Service) -> None:
    store, readers = svc.store, svc.readers
    listed = errors(401, 422)

    @router.get(
        "/images/meta/{content_hash}", dependencies=readers, response_model=EntryOut, responses=errors(401, 404, 422)
    )
    def get_meta(content_hash: ContentHash, bucket: Bucket = "") -> Response:
        entry = store.get_meta(content_hash, bucket)
        if entry is None:
            raise not_found(content_hash, bucket)
        return entry_json(entry)

    @router.get("/images/lookup", dependencies=readers, response_model=EntryOut, responses=errors(401, 404, 422))
    def lookup(
        url: Annotated[str, Query(min_length=1, max_length=MAX_URL, pattern=TEXT)], bucket: Bucket = ""
    ) -> Response:
        """The most recent entry seen at exactly ``url`` (in the default bucket unless one is named)."""
        entry = store.lookup(url, bucket)
        if entry is None:
            raise ApiError(404, "not_found", f"no image recorded for that URL in bucket {bucket!r}")
        return entry_json(entry)

    @router.get("/images/search", dependencies=readers, response_model=list[EntryOut], responses=listed)
    def search(
        url_contains: Annotated[str, Query(min_length=1, max_length=MAX_URL, pattern=TEXT)],
        bucket: Bucket = "",
        limit: Limit = 100,
    ) -> Response:
        """Entries whose source URL contains the substring, most recent first."""
        return JSONResponse([e.to_json() for e in store.search(url_contains, bucket, limit)])

    @router.get("/images/similar", dependencies=readers, response_model=list[EntryOut], responses=listed)
    def similar(
        perceptual_hash: Annotated[str, Query(pattern=PHASH_RE.pattern, description="16 lowercase hex digits")],
        max_hamming_distance: Annotated[int, Query(ge=0, le=MAX_DISTANCE)] = 4,
        bucket: Bucket = "",
        limit: Limit = 100,
        algorithm: Annotated[str, Query(pattern="^(" + "|".join(ALGORITHMS) + ")$")] = "phash",
    ) -> Response:
        """Entries within ``max_hamming_distance`` bits, nearest first, each with ``hamming_distance``."""
        hits = store.similar(perceptual_hash, max_hamming_distance, bucket, limit, algorithm)
        return JSONResponse([e.to_json() for e in hits])

    @router.get("/images/urls/{content_hash}", dependencies=readers, response_model=list[EntryOut], responses=listed)
    def urls(content_hash: ContentHash, bucket: Bucket = "") -> Response:
        """Every URL record of one image, most recent first (an extension; the client has no call)."""
        return JSONResponse([e.to_json() for e in store.urls(content_hash, bucket)])

    @router.get("/images/list", dependencies=readers, responses=errors(401, 422))
    def listing(
        bucket: Bucket = "",
        all_buckets: bool = False,
        after: Annotated[int, Query(ge=0, le=2**63 - 1, description="the `next` of the previous page")] = 0,
    ) -> dict[str, Any]:
        """Every image (with its most recent URL), oldest first, a page at a time (an extension)."""
        page, following = store.image_page(None if all_buckets else bucket, after, PAGE)
        return {"images": [e.to_json() for e in page], "next": following}


def _near(router: APIRouter, svc: Service) -> None:
    """Robust near-duplicate search (extensions): by an image's hashes, or of a cached image."""
    store = svc.store

    @router.post(
        "/images/near", dependencies=svc.readers, response_model=list[EntryOut], responses=errors(400, 401, 422)
    )
    def near(query: NearQueryIn) -> Response:
        """Near-duplicates of an image by its robust hashes and signature (an extension, what
        RemoteStore asks with): verified matches, best first, each with ``match``,
        ``hamming_distance`` (between the pHashes) and ``match_distance`` (of the hash that
        found it); the image itself never travels."""
        try:
            near_query = NearQuery.from_json(query.model_dump())
        except (ValueError, TypeError) as exc:
            raise ApiError(422, "invalid_request", f"bad query: {exc}") from exc
        hits = store.near(near_query, query.max_hamming_distance, query.bucket, query.limit)
        return JSONResponse([e.to_json() for e in hits])

    @router.get(
        "/images/near/{content_hash}", dependencies=svc.readers, response_model=list[EntryOut],
        responses=errors(401, 404, 422),
    )  # fmt: skip
    def near_cached(
        content_hash: ContentHash,
        max_hamming_distance: Annotated[int, Query(ge=0, le=MAX_DISTANCE)] = 8,
        bucket: Bucket = "",
        limit: Limit = 100,
    ) -> Response:
        """Near-duplicates of a cached image, verified as ``POST /images/near``'s (an extension)."""
        hits = store.near_cached(content_hash, max_hamming_distance, bucket, limit)
        if hits is None:
            raise not_found(content_hash, bucket)
        return JSONResponse([e.to_json() for e in hits])


def _crawling(router: APIRouter, svc: Service) -> None:
    """The calls a crawler's ``RemoteStore`` makes beyond the published client's."""
    store, keys = svc.store, svc.keys

    @router.get("/images/answer", dependencies=svc.readers, response_class=Response, responses=errors(401, 404, 422))
    def answer(
        request: Request,
        url: Annotated[str, Query(min_length=1, max_length=MAX_URL, pattern=TEXT)],
        client_name: Annotated[str, Query(min_length=1, max_length=255, pattern=TEXT)],
        fresh_since: Annotated[str, Query(min_length=1, max_length=64, description="ISO 8601")],
        bucket: Bucket = "",
    ) -> Response:
        """A crawler's cache hit in one call: the URL's newest entry in the ``X-Imgcache-Entry``
        header and, when it was seen after ``fresh_since``, the image as the body
        (``X-Imgcache-Fresh: true``). A fresh hit is recorded for ``client_name`` when the
        caller may write. 404 when the URL is unknown."""
        since = parse_time(fresh_since, "fresh_since")
        if since is None:
            raise ApiError(422, "invalid_request", "fresh_since: an ISO 8601 time is expected")
        writer = keys.scope_of(request.headers.get("x-api-key")) == WRITE or not keys.enabled
        found = store.answer(url, bucket=bucket, client_name=client_name if writer else "", fresh_since=since)
        if found is None or found.damaged:  # bytes gone or changed on disk: to be fetched again
            raise ApiError(404, "not_found", f"no usable image recorded for that URL in bucket {bucket!r}")
        headers = {ENTRY_HEADER: json.dumps(found.entry.to_json()), FRESH_HEADER: str(found.body is not None).lower()}
        media = found.entry.content_type if found.body is not None else None
        return Response(content=found.body or b"", media_type=media, headers=headers)

    @router.post(
        "/images/urls/{content_hash}",
        dependencies=svc.writers,
        response_model=EntryOut,
        responses=errors(400, 401, 403, 404, 422),
    )
    def record_url(
        content_hash: ContentHash,
        url: UrlField,
        client_name: ClientField,
        bucket: BucketField = "",
        lookup_time: TimeField = None,
        etag: EtagField = None,
        last_modified: ModifiedField = None,
        duplicate: Annotated[str | None, Form(pattern="^(exact|similar)$")] = None,
        saved_bytes: Annotated[int, Form(ge=0)] = 0,
    ) -> Response:
        """Record that ``url`` showed an image the cache already has (an extension): no upload."""
        entry = store.record_url(
            content_hash, url=url, client_name=client_name, bucket=bucket, lookup_time=parse_time(lookup_time),
            etag=etag or None, last_modified=last_modified or None, duplicate=duplicate, saved_bytes=saved_bytes,
        )  # fmt: skip
        if entry is None:
            raise not_found(content_hash, bucket)
        return entry_json(entry)


def _bytes(router: APIRouter, svc: Service) -> None:
    store = svc.store
    cache_control = "private" if svc.keys.enabled else "public"
    ok = {
        "description": "the image bytes",
        "content": {m: {"schema": {"type": "string", "format": "binary"}} for m in IMAGE_TYPES},
    }
    responses: dict[int | str, dict[str, Any]] = {
        200: ok,
        304: {"description": "Not Modified"},
        **errors(401, 403, 404, 422),
    }

    def image_response(request: Request, content_hash: str, bucket: str) -> Response:
        entry = store.get_meta(content_hash, bucket)
        if entry is None:
            raise not_found(content_hash, bucket)
        etag = f'"{entry.content_hash}"'
        headers = {
            "ETag": etag,
            "Cache-Control": f"{cache_control}, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": IMAGE_CSP,
        }
        if _matches_etag(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        data = store.get_bytes(content_hash, bucket)
        if data is None:  # deleted between the two reads
            raise not_found(content_hash, bucket)
        return Response(content=data, media_type=entry.content_type, headers=headers)

    @router.get("/images/{content_hash}", dependencies=svc.readers, response_class=Response, responses=responses)
    def get_bytes(request: Request, content_hash: ContentHash, bucket: Bucket = "") -> Response:
        return image_response(request, content_hash, bucket)

    @router.head("/images/{content_hash}", dependencies=svc.readers, response_class=Response, responses=responses)
    def has_bytes(content_hash: ContentHash, bucket: Bucket = "") -> Response:
        """200 when the image and its bytes are there (an extension), else 404."""
        entry = store.get_meta(content_hash, bucket)
        if entry is None or not store.has_bytes(entry):
            raise not_found(content_hash, bucket)
        return Response(headers={"Content-Length": str(entry.file_size_bytes)}, media_type=entry.content_type)

    serve_deps = [] if svc.public_serve else svc.readers

    @router.get("/serve/{content_hash}", dependencies=serve_deps, response_class=Response, responses=responses)
    def serve(request: Request, content_hash: ContentHash, bucket: Bucket = "") -> Response:
        """The image for a browser: its detected type, nosniff, a locked-down CSP, immutable caching."""
        return image_response(request, content_hash, bucket)


def _filename(name: str | None) -> str | None:
    """The filename hint, reduced to a printable base name."""
    if not name:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable())[:255]
    return base or None


def _matches_etag(header: str | None, etag: str) -> bool:
    if not header:
        return False
    for candidate in header.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False
