"""The imgcache REST service: an ASGI app made from a store by :func:`create_app`.

It speaks the contract of the published ``dwilson-imgcache-client`` (docs/server.md), so
that client works against it unmodified. Every input is checked by the route's declared
constraints (which also make the OpenAPI schema exact) before it reaches the store or
the disk; refused images map their typed error's ``http_status`` and ``reason`` to a JSON
4xx. Store calls block, so every endpoint that touches the store is a plain ``def``:
FastAPI runs those in its thread pool, and the event loop never waits on a database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import MISSING, asdict, fields
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Annotated, Any, get_type_hints

from fastapi import APIRouter, Depends, FastAPI, File, Form, Path, Query, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, create_model
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException

from ..errors import InvalidImage, StoreError, TooManyBytes
from ..hashing import ALGORITHMS, ALLOWED_FORMATS
from ..store import BUCKET_RE, HASH_RE, MAX_DISTANCE, PHASH_RE, Entry, Store
from .auth import HEADER, READ, WRITE, ApiKeys
from .limits import BodyLimitMiddleware
from .metrics import Metrics, MetricsMiddleware

#: multipart framing and the form's text fields, on top of the image itself
FORM_OVERHEAD = 64 * 1024
MAX_URL = 8192
MAX_RESULTS = 1000
#: printable text: no control characters (PostgreSQL refuses NUL; logs and headers hate the rest)
TEXT = r"^[^\x00-\x1f\x7f]*$"
URL = r"^[A-Za-z][A-Za-z0-9+.\-]*:[^\x00-\x20\x7f]+$"
IMAGE_TYPES = sorted({mime for mime, _ext in ALLOWED_FORMATS.values()})
IMAGE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"

ContentHash = Annotated[str, Path(pattern=HASH_RE.pattern, description="BLAKE2b-256 of the bytes, 64 lowercase hex digits")]
Bucket = Annotated[
    str,
    Query(pattern=BUCKET_RE.pattern, max_length=64, description='namespace; "" (the default) when omitted'),
]
Limit = Annotated[int, Query(ge=1, le=MAX_RESULTS, description="most results to return")]


def _entry_model() -> type[BaseModel]:
    """The entry schema, derived from :class:`Entry`: its fields without defaults are the
    contract's required ones; the rest are the extras the server also sends."""
    hints = get_type_hints(Entry)
    spec: dict[str, Any] = {}
    for f in fields(Entry):
        kind = str if hints[f.name] is datetime else hints[f.name]  # sent as ISO 8601 text
        spec[f.name] = (kind, ...) if f.default is MISSING else (kind, f.default)
    return create_model("EntryOut", __config__=ConfigDict(extra="allow"), **spec)


EntryOut = _entry_model()


class ErrorOut(BaseModel):
    error: str
    detail: Any = None


class ApiError(Exception):
    """A refusal with a status and a machine-readable reason."""

    def __init__(self, status: int, reason: str, detail: Any) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorOut, "description": HTTPStatus(code).phrase} for code in codes}


def _image_responses() -> dict[int | str, dict[str, Any]]:
    ok = {"description": "the image bytes", "content": {mime: {"schema": {"type": "string", "format": "binary"}} for mime in IMAGE_TYPES}}
    return {200: ok, 304: {"description": "Not Modified (If-None-Match matched the ETag)"}, **_errors(401, 403, 404, 422)}


def _json(entry: Entry, status: int = 200) -> JSONResponse:
    return JSONResponse(entry.to_json(), status_code=status)


def _error_response(status: int, reason: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status_code=status, headers=headers)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


def _parse_time(value: str | None) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        parsed = parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise ApiError(422, "invalid_request", f"lookup_time {value!r} is not an ISO 8601 time: {exc}") from exc
    if not 1970 <= parsed.year <= 9998:
        raise ApiError(422, "invalid_request", f"lookup_time {value!r} is outside 1970..9998")
    return parsed


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


def _auth_dependency(keys: ApiKeys, scope: str) -> Callable[..., None]:
    """A dependency that lets a request through only with a key of ``scope`` (when keys exist)."""
    if not keys.enabled:

        def open_access() -> None:
            return None

        return open_access

    header = APIKeyHeader(name=HEADER, auto_error=False, description="a read or write API key")

    def check(key: str | None = Security(header)) -> None:  # a default: ``header`` is local
        granted = keys.scope_of(key)
        if granted is None:
            raise ApiError(401, "unauthorized", f"a valid {HEADER} header is required")
        if scope == WRITE and granted != WRITE:
            raise ApiError(403, "forbidden", "this key may read but not store or delete")

    return check


def create_app(
    store: Store,
    *,
    keys: ApiKeys | None = None,
    max_upload_bytes: int | None = None,
    public_serve: bool = False,
    routers: Sequence[tuple[APIRouter, str]] = (),
) -> FastAPI:
    """The service over ``store``; nothing is global, so several apps can share a process.

    ``max_upload_bytes`` caps an image (default: the store inspector's byte limit);
    ``public_serve`` lets browsers fetch ``/serve/{hash}`` without a key;
    ``routers`` are extra ``(router, prefix)`` pairs to mount.
    """
    keys = keys or ApiKeys()
    max_image = max_upload_bytes or store.inspector.limits.max_bytes
    metrics = Metrics()
    app = FastAPI(
        title="imgcache",
        version="1",
        description="A shared, content-addressed image cache (the imgcache REST API). See docs/server.md.",
    )
    app.state.store = store
    app.state.keys = keys
    app.state.metrics = metrics
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_image + FORM_OVERHEAD)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _install_error_handlers(app)

    readers = [Depends(_auth_dependency(keys, READ))]
    writers = [Depends(_auth_dependency(keys, WRITE))]
    cache_control = "private" if keys.enabled else "public"

    def image_response(request: Request, content_hash: str, bucket: str) -> Response:
        entry = store.get_meta(content_hash, bucket)
        if entry is None:
            raise ApiError(404, "not_found", f"no image {content_hash} in bucket {bucket!r}")
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
            raise ApiError(404, "not_found", f"no image {content_hash} in bucket {bucket!r}")
        return Response(content=data, media_type=entry.content_type, headers=headers)

    @app.get("/health", tags=["service"])
    async def health() -> dict[str, str]:
        """Liveness: always open, never touches the store."""
        return {"status": "ok"}

    @app.get(
        "/metrics",
        tags=["service"],
        dependencies=readers,
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}, **_errors(401)},
    )
    async def prometheus() -> Response:
        """Prometheus text format, from this app's own registry."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post(
        "/images",
        tags=["images"],
        dependencies=writers,
        status_code=201,
        response_model=EntryOut,
        responses={200: {"model": EntryOut, "description": "identical bytes were already stored"}, **_errors(401, 403, 413, 415, 422, 503)},
    )
    def store_image(
        file: Annotated[UploadFile, File(description="the image bytes; the part's filename is the filename hint")],
        url: Annotated[str, Form(min_length=1, max_length=MAX_URL, pattern=URL)],
        client_name: Annotated[str, Form(min_length=1, max_length=255, pattern=TEXT)],
        bucket: Annotated[str, Form(pattern=BUCKET_RE.pattern, max_length=64)] = "",
        lookup_time: Annotated[str | None, Form(max_length=64, description="ISO 8601; default now")] = None,
        etag: Annotated[str | None, Form(max_length=255, pattern=TEXT)] = None,
        last_modified: Annotated[str | None, Form(max_length=64, pattern=TEXT)] = None,
        similar_to: Annotated[str | None, Form(pattern=HASH_RE.pattern)] = None,
        similar_distance: Annotated[int | None, Form(ge=0, le=64)] = None,
    ) -> Response:
        """Store an image: 201 when new in the bucket, 200 when identical bytes were there."""
        when = _parse_time(lookup_time)
        data = file.file.read(max_image + 1)
        if len(data) > max_image:
            metrics.uploads.labels(TooManyBytes.reason).inc()
            raise TooManyBytes(f"image is over the limit of {max_image} bytes")
        try:
            result = store.put(
                data,
                url=url,
                client_name=client_name,
                bucket=bucket,
                lookup_time=when,
                filename=_filename(file.filename),
                etag=etag or None,
                last_modified=last_modified or None,
                similar_to=similar_to or None,
                similar_distance=similar_distance,
            )
        except InvalidImage as exc:
            metrics.uploads.labels(exc.reason).inc()
            raise
        metrics.uploads.labels("created" if result.created else "duplicate").inc()
        if result.created:
            metrics.upload_bytes.inc(len(data))
        return _json(result.entry, 201 if result.created else 200)

    # The fixed /images/... paths come before /images/{content_hash} so it never shadows them.
    @app.get("/images/meta/{content_hash}", tags=["images"], dependencies=readers, response_model=EntryOut, responses=_errors(401, 404, 422))
    def get_meta(content_hash: ContentHash, bucket: Bucket = "") -> Response:
        entry = store.get_meta(content_hash, bucket)
        if entry is None:
            raise ApiError(404, "not_found", f"no image {content_hash} in bucket {bucket!r}")
        return _json(entry)

    @app.get("/images/lookup", tags=["images"], dependencies=readers, response_model=EntryOut, responses=_errors(401, 404, 422))
    def lookup(
        url: Annotated[str, Query(min_length=1, max_length=MAX_URL, pattern=TEXT)], bucket: Bucket = ""
    ) -> Response:
        """The most recent entry seen at exactly ``url`` (in the default bucket unless one is named)."""
        entry = store.lookup(url, bucket)
        if entry is None:
            raise ApiError(404, "not_found", f"no image recorded for that URL in bucket {bucket!r}")
        return _json(entry)

    @app.get("/images/search", tags=["images"], dependencies=readers, response_model=list[EntryOut], responses=_errors(401, 422))
    def search(
        url_contains: Annotated[str, Query(min_length=1, max_length=MAX_URL, pattern=TEXT)],
        bucket: Bucket = "",
        limit: Limit = 100,
    ) -> Response:
        """Entries whose source URL contains the substring, most recent first."""
        return JSONResponse([e.to_json() for e in store.search(url_contains, bucket, limit)])

    @app.get("/images/similar", tags=["images"], dependencies=readers, response_model=list[EntryOut], responses=_errors(401, 422))
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

    @app.get("/images/urls/{content_hash}", tags=["images"], dependencies=readers, response_model=list[EntryOut], responses=_errors(401, 422))
    def urls(content_hash: ContentHash, bucket: Bucket = "") -> Response:
        """Every URL record of one image, most recent first (an extension; the client has no call)."""
        return JSONResponse([e.to_json() for e in store.urls(content_hash, bucket)])

    @app.get("/images/{content_hash}", tags=["images"], dependencies=readers, response_class=Response, responses=_image_responses())
    def get_bytes(request: Request, content_hash: ContentHash, bucket: Bucket = "") -> Response:
        return image_response(request, content_hash, bucket)

    @app.delete("/images/{content_hash}", tags=["images"], dependencies=writers, status_code=204, response_class=Response, responses=_errors(401, 403, 404, 422))
    def delete(content_hash: ContentHash, bucket: Bucket = "") -> Response:
        """Remove the entry, every URL record of it, and its bytes (unless another bucket holds them)."""
        if not store.delete(content_hash, bucket):
            raise ApiError(404, "not_found", f"no image {content_hash} in bucket {bucket!r}")
        return Response(status_code=204)

    serve_deps = [] if public_serve else readers

    @app.get("/serve/{content_hash}", tags=["images"], dependencies=serve_deps, response_class=Response, responses=_image_responses())
    def serve(request: Request, content_hash: ContentHash, bucket: Bucket = "") -> Response:
        """The image for a browser: its detected type, nosniff, a locked-down CSP, immutable caching."""
        return image_response(request, content_hash, bucket)

    @app.get("/usage", tags=["service"], dependencies=readers, responses=_errors(401))
    def usage() -> list[dict[str, Any]]:
        """Images, bytes, URLs and duplicates saved, per bucket and per client (an extension)."""
        return [asdict(u) for u in store.usage()]

    # ---- extension point ------------------------------------------------------------------
    # More APIs mount here, e.g. the VisualSnoop router:
    #     app.include_router(visualsnoop_router(store, keys), prefix="/api/v1")
    # Pass them as ``routers=[(router, "/api/v1")]`` or add the include_router call here.
    for router, prefix in routers:
        app.include_router(router, prefix=prefix)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every refusal is JSON ``{"error": reason, "detail": ...}`` with the right 4xx/5xx."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": HEADER} if exc.status == 401 else None
        return _error_response(exc.status, exc.reason, exc.detail, headers)

    @app.exception_handler(InvalidImage)
    async def invalid_image(_request: Request, exc: InvalidImage) -> JSONResponse:
        return _error_response(exc.http_status, exc.reason, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # only loc/msg/type: the raw input may be binary and is the client's own anyway
        detail = [
            {"loc": [str(part) for part in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
            for err in exc.errors()
        ]
        return _error_response(422, "invalid_request", detail)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 304 or exc.status_code < 200:
            return Response(status_code=exc.status_code, headers=exc.headers)
        return _error_response(exc.status_code, _reason(exc.status_code), exc.detail, exc.headers)

    @app.exception_handler(ValueError)
    async def bad_value(_request: Request, exc: ValueError) -> JSONResponse:
        return _error_response(422, "invalid_request", str(exc))

    async def store_down(_request: Request, exc: Exception) -> JSONResponse:
        return _error_response(503, "store_unavailable", f"the store cannot be reached: {type(exc).__name__}")

    # a database that is down or refusing connections is the service's trouble, not the client's
    for unavailable in (StoreError, OperationalError, InterfaceError):
        app.add_exception_handler(unavailable, store_down)
