"""The VisualSnoop collections API: a self-hosted stand-in for the service ``visualsnoop==0.2`` spoke to.

Mount the router under ``/api/v1``; the unmodified client then works with
``endpoint="http://HOST:PORT/api/v1"``. Every answer is JSON with ``status`` (the HTTP
status) and ``message``.

Authentication is the client's ``VSHMAC``: base64 HMAC-SHA1 of ``METHOD\\nPATH\\nDate`` with the
collection's secret, PATH being the raw request-line path (mount prefix and percent-encoding
included, so it comes from the ASGI scope, not from the decoded route). The scheme signs no
body, query or nonce, so identical reads inside a second are legitimate and allowed, while a
state-changing request identical to one already accepted inside the clock-skew window is
refused as a replay (recorded in the database, so every server process sees it).

Endpoints are ``async`` only to stream and cap the body; every database and image call runs
in the thread pool.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..collections import (
    Collection,
    CollectionImage,
    CollectionImages,
    IdTaken,
    Match,
    Registry,
    SecretBox,
)
from ..config import _float, _int
from ..errors import ConfigError, InvalidImage
from ..store.base import MAX_DISTANCE, validate_distance
from ..store.models import MAX_ID_LENGTH
from ..store.sql import SqlStore

PREFIX = "/api/v1"
SKEW_ENV = "IMGCACHE_VISUALSNOOP_SKEW"
DISTANCE_ENV = "IMGCACHE_VISUALSNOOP_DISTANCE"
DEFAULT_SKEW_SECONDS = 300.0
DEFAULT_SEARCH_DISTANCE = 8
DEFAULT_PAGE = 100
MAX_PAGE = 1000
SEARCH_LIMIT = 100
_AUTH_RE = re.compile(r"^VSHMAC ([0-9A-Za-z_-]{1,64}):([0-9A-Za-z+/=]{1,128})$")


class ApiError(Exception):
    """A refusal, answered as ``{"status": ..., "message": ..., **extra}``."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def answer(status: int, message: str, **fields: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": "VSHMAC"} if status == 401 else None
    return JSONResponse({"status": status, "message": message, **fields}, status_code=status, headers=headers)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message)


def signature(secret: str, method: str, raw_path: bytes, date: str) -> bytes:
    """What the client computes: base64(HMAC-SHA1(secret, METHOD\\nPATH\\nDate))."""
    message = method.encode() + b"\n" + raw_path + b"\n" + date.encode()
    return base64.b64encode(hmac.new(secret.strip().encode(), message, hashlib.sha1).digest())


class Gate:
    """Authenticates requests and refuses replays of state-changing ones."""

    def __init__(self, registry: Registry, skew_seconds: float, max_bytes: int) -> None:
        self.registry = registry
        self.skew = timedelta(seconds=skew_seconds)
        self.max_bytes = max_bytes

    async def admit(self, request: Request, changes_state: bool) -> tuple[Collection, bytes]:
        """The caller's collection and the request body, or an :class:`ApiError`.

        ``changes_state`` (adding, updating, deleting) turns on the replay check; searches
        by upload are POSTs too, but reads that the client repeats legitimately.
        """
        public_key, given, date_text, date = self._credentials(request)
        found = await run_in_threadpool(self.registry.by_public_key, public_key)
        if found is None:
            raise unauthorized("unknown public key")
        collection, secret = found
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        expected = signature(secret, request.method, raw_path, date_text)
        if not hmac.compare_digest(expected, given.encode()):
            raise unauthorized("wrong signature")
        body = await self._body(request) if request.method in ("POST", "PUT") else b""
        if changes_state:
            digest = hashlib.sha256(
                b"\0".join(
                    [
                        request.method.encode(),
                        raw_path,
                        request.scope.get("query_string", b""),
                        hashlib.sha256(body).digest(),
                        date_text.encode(),
                        given.encode(),
                    ]
                )
            ).hexdigest()
            fresh = await run_in_threadpool(
                self.registry.remember_request, digest, date + self.skew + timedelta(seconds=1)
            )
            if not fresh:
                raise unauthorized("replayed request: this signed request was already accepted")
        return collection, body

    def _credentials(self, request: Request) -> tuple[str, str, str, datetime]:
        header = request.headers.get("authorization")
        date_text = request.headers.get("date")
        if not header:
            raise unauthorized("missing Authorization header (VSHMAC public_key:signature)")
        if not date_text:
            raise unauthorized("missing Date header")
        if not (header.isascii() and date_text.isascii()):
            raise unauthorized("Authorization and Date must be ASCII")
        match = _AUTH_RE.match(header.strip())
        if match is None:
            raise unauthorized("malformed Authorization header: VSHMAC public_key:signature expected")
        try:
            date = parsedate_to_datetime(date_text)
        except (TypeError, ValueError):
            raise unauthorized("malformed Date header: an RFC 1123 date expected") from None
        if date.tzinfo is None:
            date = date.replace(tzinfo=timezone.utc)
        if abs(datetime.now(timezone.utc) - date) > self.skew:
            raise unauthorized(f"Date is more than {self.skew.total_seconds():.0f} s from the server's clock")
        return match.group(1), match.group(2), date_text, date

    async def _body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise ApiError(413, f"body of {declared} bytes is over the limit of {self.max_bytes}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_bytes:
                raise ApiError(413, f"body is over the limit of {self.max_bytes} bytes")
            chunks.append(chunk)
        if not size:
            raise ApiError(400, "empty body: the image bytes are expected as the request body")
        return b"".join(chunks)


def create_router(
    store: SqlStore,
    *,
    skew_seconds: float = DEFAULT_SKEW_SECONDS,
    search_distance: int = DEFAULT_SEARCH_DISTANCE,
    box: SecretBox | None = None,
) -> APIRouter:
    """The VisualSnoop API over ``store``; include it with ``prefix="/api/v1"``."""
    validate_distance(search_distance)
    gate = Gate(Registry(store.engine, box), skew_seconds, store.inspector.limits.max_bytes)
    router = APIRouter(tags=["visualsnoop"])
    Work = Callable[[CollectionImages, bytes], JSONResponse]

    async def serve(request: Request, work: Work, changes_state: bool = False) -> JSONResponse:
        try:
            collection, body = await gate.admit(request, changes_state)
            return await run_in_threadpool(work, CollectionImages(store, collection), body)
        except ApiError as exc:
            return answer(exc.status, exc.message, **exc.extra)
        except InvalidImage as exc:
            return answer(exc.http_status, exc.message, error=exc.reason)
        except ConfigError as exc:  # e.g. an encrypted secret and no server key
            return answer(500, f"server misconfigured: {exc}")

    def found(images: CollectionImages, image_id: str) -> CollectionImage:
        image = images.get(checked_id(image_id))
        if image is None:
            raise ApiError(404, f"no image {image_id!r} in this collection", image_id=image_id)
        return image

    def about(images: CollectionImages, image: CollectionImage, status: int, message: str, **more: Any) -> JSONResponse:
        return answer(
            status,
            message,
            image_id=image.image_id,
            image_time=image.image_time.isoformat(),
            collection_id=images.collection.collection_id,
            **more,
        )

    def results(matches: list[Match]) -> list[dict[str, Any]]:
        return [{"id": m.image_id, "rank": rank, "distance": m.distance} for rank, m in enumerate(matches)]

    def add(image_id: str | None, overwrite: bool) -> Work:
        def work(images: CollectionImages, body: bytes) -> JSONResponse:
            if image_id is not None:
                checked_id(image_id)
            info = store.inspector.inspect(body)
            try:
                image, created = images.add(body, info, image_id, overwrite)
            except IdTaken:
                raise ApiError(
                    409,
                    f"image {image_id!r} already exists; use update_existing=True to replace it",
                    image_id=image_id,
                ) from None
            return about(images, image, 201 if created else 200, "Added" if created else "Updated")

        return work

    @router.get("/collection")
    async def get_collection(request: Request) -> JSONResponse:
        def work(images: CollectionImages, _: bytes) -> JSONResponse:
            c = images.collection
            return answer(200, "OK", collection_id=c.collection_id, collection_name=c.name, user=c.user)

        return await serve(request, work)

    @router.post("/image")
    async def add_generated(request: Request) -> JSONResponse:
        return await serve(request, add(None, overwrite=False), changes_state=True)

    @router.post("/image/{image_id:path}")
    async def add_named(request: Request, image_id: str) -> JSONResponse:
        return await serve(request, add(image_id, overwrite=False), changes_state=True)

    @router.put("/image/{image_id:path}")
    async def add_or_update(request: Request, image_id: str) -> JSONResponse:
        return await serve(request, add(image_id, overwrite=True), changes_state=True)

    @router.get("/image/{image_id:path}")
    async def get_image(request: Request, image_id: str) -> JSONResponse:
        return await serve(request, lambda images, _: about(images, found(images, image_id), 200, "OK"))

    @router.delete("/image/{image_id:path}")
    async def delete_image(request: Request, image_id: str) -> JSONResponse:
        def work(images: CollectionImages, _: bytes) -> JSONResponse:
            image = images.delete(checked_id(image_id))
            if image is None:
                raise ApiError(404, f"no image {image_id!r} in this collection", image_id=image_id)
            return about(images, image, 200, "Deleted")

        return await serve(request, work, changes_state=True)

    @router.get("/images")
    async def list_images(request: Request) -> JSONResponse:
        start = request.query_params.get("start") or None
        count_text = request.query_params.get("count") or str(DEFAULT_PAGE)

        def work(images: CollectionImages, _: bytes) -> JSONResponse:
            if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_PAGE:
                raise ApiError(400, f"count must be an integer from 1 to {MAX_PAGE}")
            page = images.page(None if start is None else checked_id(start), int(count_text))
            if page is None:
                raise ApiError(404, f"no image {start!r} in this collection to start from", image_id=start)
            rows, next_id = page
            listed = [{"id": i.image_id, "image_time": i.image_time.isoformat()} for i in rows]
            return answer(
                200, "OK", collection_id=images.collection.collection_id, images=listed, next_image_id=next_id
            )

        return await serve(request, work)

    @router.get("/search/{image_id:path}")
    async def search_by_id(request: Request, image_id: str) -> JSONResponse:
        def work(images: CollectionImages, _: bytes) -> JSONResponse:
            image = found(images, image_id)
            meta = store.get_meta(image.content_hash, images.bucket)
            matches: list[Match] = []
            if meta is not None and meta.perceptual_hash and not meta.flat:
                matches = images.similar(
                    meta.perceptual_hash, meta.hash_algorithm, search_distance, SEARCH_LIMIT, leave_out=image.image_id
                )
            return about(images, image, 200, "OK", results=results(matches))

        return await serve(request, work)

    @router.post("/search")
    async def search_by_upload(request: Request) -> JSONResponse:
        def work(images: CollectionImages, body: bytes) -> JSONResponse:
            info = store.inspector.inspect(body)  # inspected only: nothing is stored
            matches = (
                [] if info.flat else images.similar(info.perceptual_hash, info.algorithm, search_distance, SEARCH_LIMIT)
            )
            return answer(200, "OK", collection_id=images.collection.collection_id, results=results(matches))

        return await serve(request, work)

    @router.api_route(
        "/{rest:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"], include_in_schema=False
    )
    async def unknown(request: Request, rest: str) -> JSONResponse:
        return answer(404, f"no such call: {request.method} /{rest}")

    return router


def routers_for(store: SqlStore, environ: Mapping[str, str] | None = None) -> list[tuple[APIRouter, str]]:
    """``[(router, "/api/v1")]``: the collections live in the store's database.

    The clock-skew window and search threshold come from ``IMGCACHE_VISUALSNOOP_SKEW``
    (seconds) and ``IMGCACHE_VISUALSNOOP_DISTANCE`` (bits).
    """
    env = os.environ if environ is None else environ
    skew = _float(SKEW_ENV, env.get(SKEW_ENV, DEFAULT_SKEW_SECONDS), 1)
    distance = _int(DISTANCE_ENV, env.get(DISTANCE_ENV, DEFAULT_SEARCH_DISTANCE), 0, MAX_DISTANCE)
    return [(create_router(store, skew_seconds=skew, search_distance=distance), PREFIX)]


def checked_id(image_id: str) -> str:
    if not 1 <= len(image_id) <= MAX_ID_LENGTH:
        raise ApiError(400, f"an image id is 1 to {MAX_ID_LENGTH} characters; this one has {len(image_id)}")
    return image_id
