"""The VisualSnoop collections API: a self-hosted stand-in for the service ``visualsnoop==0.2`` spoke to.

Mount the router under ``/api/v1``; the unmodified client then works with
``endpoint="http://HOST:PORT/api/v1"``. Every answer is JSON with ``status`` (the HTTP
status) and ``message``.

Authentication is the client's ``VSHMAC``: base64 HMAC-SHA1 of ``METHOD\\nPATH\\nDate`` with the
collection's secret, PATH being the raw request-line path (mount prefix and percent-encoding
included, so it comes from the ASGI scope, not from the decoded route). The scheme signs no
body, query or nonce, so identical reads inside a second are legitimate and allowed, while a
signature is good for one change of an image: a state-changing request whose method, raw
path, ``Date`` and signature are those of one already accepted inside the clock-skew window is
refused as a replay, whatever its query string and body (``POST /image``, which adds an image
under a new id, is told apart by its body too; see :class:`Replay`). Accepted requests are
recorded in the database, so every server process sees them.

Endpoints are ``async`` only to stream and cap the body; every database and image call runs
in the thread pool.
"""

from __future__ import annotations

import base64
import enum
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
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.convertors import Convertor, register_url_convertor

from ..config import float_setting, int_setting
from ..errors import ConfigError, InvalidImage, StoreError
from ..store.base import MAX_DISTANCE, validate_distance
from ..store.models import MAX_ID_LENGTH
from ..store.sql import SqlStore
from .images import CollectionImage, CollectionImages, IdTaken, Match
from .keys import SecretBox
from .registry import Collection, Registry

PREFIX = "/api/v1"
SKEW_ENV = "IMGCACHE_VISUALSNOOP_SKEW"
DISTANCE_ENV = "IMGCACHE_VISUALSNOOP_DISTANCE"
DEFAULT_SKEW_SECONDS = 300.0
DEFAULT_SEARCH_DISTANCE = 8
DEFAULT_PAGE = 100
MAX_PAGE = 1000
SEARCH_LIMIT = 100
_AUTH_RE = re.compile(r"^VSHMAC ([0-9A-Za-z_-]{1,64}):([0-9A-Za-z+/=]{1,128})$")
#: what an image id may not contain: control characters (C0, DEL, C1) and lone surrogates
_NOT_IN_IDS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class Replay(enum.Enum):
    """Which signed request a state-changing call refuses as a replay of one already accepted."""

    #: a read: the client repeats identical signed reads legitimately
    NONE = "none"
    #: its signature was used already (whatever the query string or body): a signature is
    #: good for one change of the image its path names
    SIGNATURE = "signature"
    #: its signature was used already with the same body: ``POST /image`` adds a new image
    #: under a generated id, and the client signs every such call within a second alike
    BODY = "body"


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


REPLAYED = "replayed request: this signed request was already accepted"


class Replayed(ApiError):
    """A state-changing request whose signature was used already (401), from ``collection``;
    ``exact``: with the same body too."""

    def __init__(self, collection: Collection, exact: bool) -> None:
        super().__init__(401, REPLAYED)
        self.collection = collection
        self.exact = exact


def replay_digest(method: str, raw_path: bytes, date: str, given: str, body: bytes | None = None) -> str:
    """What an accepted state-changing request is remembered by: what its signature covers (the
    method, the raw path without the query string, the Date) and the signature, so another
    query string or body makes no new request; ``body``: its digest counts too."""
    parts = [method.encode(), raw_path, date.encode(), given.encode()]
    if body is not None:
        parts.append(hashlib.sha256(body).digest())
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


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

    async def admit(self, request: Request, replay: Replay = Replay.NONE) -> tuple[Collection, bytes]:
        """The caller's collection and the request body, or an :class:`ApiError`.

        ``replay`` says which earlier accepted request this one may not repeat (see
        :class:`Replay`); searches by upload are POSTs too, but reads that the client repeats
        legitimately.
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
        if replay is not Replay.NONE:
            exact = replay_digest(request.method, raw_path, date_text, given, body)
            signed = exact if replay is Replay.BODY else replay_digest(request.method, raw_path, date_text, given)
            await self._remember(signed, exact, date, collection)
        return collection, body

    async def _remember(self, signed: str, exact: str, date: datetime, collection: Collection) -> None:
        """Record an accepted state-changing request by ``signed`` (what may not be used again)
        and ``exact`` (its digest with the body), or raise :class:`Replayed`."""
        more = () if exact == signed else (exact,)
        expires = date + self.skew + timedelta(seconds=1)
        if not await run_in_threadpool(self.registry.remember_request, signed, expires, *more):
            seen = exact == signed or await run_in_threadpool(self.registry.remembers, exact)
            raise Replayed(collection, exact=seen)

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


Work = Callable[[CollectionImages, bytes], JSONResponse]


class IdConvertor(Convertor[str]):
    """An image id in a path: anything, as ``path`` takes it, line breaks included (``.*`` stops
    at one, and the request then matched no route at all), so :func:`checked_id` judges it."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("image_id", IdConvertor())


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
    api = Api(store, gate, search_distance)
    router = APIRouter(tags=["visualsnoop"])

    @router.get("/collection")
    async def get_collection(request: Request) -> JSONResponse:
        return await api.serve(request, describe_collection)

    @router.post("/image")
    async def add_generated(request: Request) -> JSONResponse:
        return await api.serve(request, api.adding(None, overwrite=False), Replay.BODY)

    @router.post("/image/{image_id:image_id}")
    async def add_named(request: Request, image_id: str) -> JSONResponse:
        adding = api.adding(image_id, overwrite=False)
        return await api.serve(request, adding, Replay.SIGNATURE, if_replayed=refusing_taken(image_id))

    @router.put("/image/{image_id:image_id}")
    async def add_or_update(request: Request, image_id: str) -> JSONResponse:
        return await api.serve(request, api.adding(image_id, overwrite=True), Replay.SIGNATURE)

    @router.get("/image/{image_id:image_id}")
    async def get_image(request: Request, image_id: str) -> JSONResponse:
        return await api.serve(request, lambda images, _: about(images, found(images, image_id), 200, "OK"))

    @router.delete("/image/{image_id:image_id}")
    async def delete_image(request: Request, image_id: str) -> JSONResponse:
        return await api.serve(request, deleting(image_id), Replay.SIGNATURE)

    @router.get("/images")
    async def list_images(request: Request) -> JSONResponse:
        params = request.query_params
        return await api.serve(request, listing(params.get("start") or None, params.get("count") or str(DEFAULT_PAGE)))

    @router.get("/search/{image_id:image_id}")
    async def search_by_id(request: Request, image_id: str) -> JSONResponse:
        return await api.serve(request, api.searching_by_id(image_id))

    @router.post("/search")
    async def search_by_upload(request: Request) -> JSONResponse:
        return await api.serve(request, api.searching_by_upload)

    @router.api_route("/{rest:image_id}", methods=list(UNKNOWN_CALL_METHODS), include_in_schema=False)
    async def unknown(request: Request, rest: str) -> JSONResponse:
        return answer(404, f"no such call: {request.method} /{rest}")

    return router


UNKNOWN_CALL_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")


class Api:
    """What the routes do: authenticate through the gate, then one blocking ``Work`` in a thread."""

    def __init__(self, store: SqlStore, gate: Gate, search_distance: int) -> None:
        self.store = store
        self.gate = gate
        self.search_distance = search_distance

    async def serve(
        self, request: Request, work: Work, replay: Replay = Replay.NONE, if_replayed: Work | None = None
    ) -> JSONResponse:
        """``if_replayed``: what answers a replay with another body instead of the plain 401
        (it must change nothing)."""
        try:
            try:
                collection, body = await self.gate.admit(request, replay)
            except Replayed as exc:
                if if_replayed is None or exc.exact:
                    raise
                collection, body, work = exc.collection, b"", if_replayed
            return await run_in_threadpool(work, CollectionImages(self.store, collection), body)
        except ApiError as exc:
            return answer(exc.status, exc.message, **exc.extra)
        except InvalidImage as exc:
            return answer(exc.http_status, exc.message, error=exc.reason)
        except ConfigError as exc:  # e.g. an encrypted secret and no server key
            return answer(500, f"server misconfigured: {exc}")
        except StoreError as exc:  # the database is down (raised by the store), or the collection stayed locked
            if isinstance(exc.__cause__, SQLAlchemyError):  # the driver's message (hosts, values): not for clients
                return answer(503, f"the store cannot be reached: {type(exc.__cause__).__name__}")
            return answer(503, f"the store cannot be used now: {exc}")
        except (OperationalError, InterfaceError) as exc:  # the database is down (a query of the collections')
            return answer(503, f"the store cannot be reached: {type(exc).__name__}")

    def adding(self, image_id: str | None, overwrite: bool) -> Work:
        def work(images: CollectionImages, body: bytes) -> JSONResponse:
            if image_id is not None:
                checked_id(image_id)
            info = self.store.inspector.inspect(body)
            try:
                image, created = images.add(body, info, image_id, overwrite)
            except IdTaken:
                raise taken(str(image_id)) from None
            return about(images, image, 201 if created else 200, "Added" if created else "Updated")

        return work

    def searching_by_id(self, image_id: str) -> Work:
        def work(images: CollectionImages, _: bytes) -> JSONResponse:
            image = found(images, image_id)
            meta = self.store.get_meta(image.content_hash, images.bucket)
            matches: list[Match] = []
            if meta is not None and meta.perceptual_hash and not meta.flat:
                matches = images.similar(
                    meta.perceptual_hash, meta.hash_algorithm, self.search_distance, SEARCH_LIMIT, image.image_id
                )
            return about(images, image, 200, "OK", results=results(matches))

        return work

    def searching_by_upload(self, images: CollectionImages, body: bytes) -> JSONResponse:
        info = self.store.inspector.inspect(body)  # inspected only: nothing is stored
        matches = []
        if not info.flat:
            matches = images.similar(info.perceptual_hash, info.algorithm, self.search_distance, SEARCH_LIMIT)
        return answer(200, "OK", collection_id=images.collection.collection_id, results=results(matches))


def refusing_taken(image_id: str) -> Work:
    """A named add signed alike as one accepted, with another body: 409 when the id exists (the
    client's own second ``add_image`` of that id within a second is signed alike, and must be
    told to use ``update_existing``), else the replay's 401."""

    def work(images: CollectionImages, _: bytes) -> JSONResponse:
        if images.get(checked_id(image_id)) is not None:
            raise taken(image_id)
        raise ApiError(401, REPLAYED)

    return work


def taken(image_id: str) -> ApiError:
    return ApiError(
        409, f"image {image_id!r} already exists; use update_existing=True to replace it", image_id=image_id
    )


def describe_collection(images: CollectionImages, _: bytes) -> JSONResponse:
    c = images.collection
    return answer(200, "OK", collection_id=c.collection_id, collection_name=c.name, user=c.user)


def deleting(image_id: str) -> Work:
    def work(images: CollectionImages, _: bytes) -> JSONResponse:
        image = images.delete(checked_id(image_id))
        if image is None:
            raise ApiError(404, f"no image {image_id!r} in this collection", image_id=image_id)
        return about(images, image, 200, "Deleted")

    return work


def listing(start: str | None, count_text: str) -> Work:
    def work(images: CollectionImages, _: bytes) -> JSONResponse:
        if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_PAGE:
            raise ApiError(400, f"count must be an integer from 1 to {MAX_PAGE}")
        page = images.page(None if start is None else checked_id(start), int(count_text))
        if page is None:
            raise ApiError(404, f"no image {start!r} in this collection to start from", image_id=start)
        rows, next_id = page
        listed = [{"id": i.image_id, "image_time": i.image_time.isoformat()} for i in rows]
        return answer(200, "OK", collection_id=images.collection.collection_id, images=listed, next_image_id=next_id)

    return work


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


def routers_for(store: SqlStore, environ: Mapping[str, str] | None = None) -> list[tuple[APIRouter, str]]:
    """``[(router, "/api/v1")]``: the collections live in the store's database.

    The clock-skew window and search threshold come from ``IMGCACHE_VISUALSNOOP_SKEW``
    (seconds) and ``IMGCACHE_VISUALSNOOP_DISTANCE`` (bits).
    """
    env = os.environ if environ is None else environ
    skew = float_setting(SKEW_ENV, env.get(SKEW_ENV, DEFAULT_SKEW_SECONDS), 1)
    distance = int_setting(DISTANCE_ENV, env.get(DISTANCE_ENV, DEFAULT_SEARCH_DISTANCE), 0, MAX_DISTANCE)
    return [(create_router(store, skew_seconds=skew, search_distance=distance), PREFIX)]


def checked_id(image_id: str) -> str:
    """An id as every database stores it alike: 1 to 100 characters (else 400), none of them a
    control character (C0, DEL, C1; PostgreSQL cannot store NUL) or a lone surrogate (else 422)."""
    if not 1 <= len(image_id) <= MAX_ID_LENGTH:
        raise ApiError(400, f"an image id is 1 to {MAX_ID_LENGTH} characters; this one has {len(image_id)}")
    bad = _NOT_IN_IDS.search(image_id)
    if bad is not None:
        raise ApiError(
            422, f"an image id may not contain control characters; this one has {bad.group()!r} at {bad.start()}"
        )
    return image_id
