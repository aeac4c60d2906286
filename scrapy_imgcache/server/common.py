"""What the imgcache API's routes share: input types, the entry model, refusals and their JSON.

Every input is checked by the route's declared constraints (which also make the OpenAPI
schema exact) before it reaches the store or the disk; every refusal is JSON
``{"error": reason, "detail": ...}`` with the right 4xx (or 503 when the store is down).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from datetime import datetime, timezone
from http import HTTPStatus
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, create_model
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException

from ..errors import InvalidImage, StoreError
from ..store.base import BUCKET_RE, HASH_RE, URL_PATTERN, Entry

#: multipart framing and the form's text fields, on top of the image itself
FORM_OVERHEAD = 64 * 1024
MAX_URL = 8192
MAX_RESULTS = 1000
#: printable text: no control characters (PostgreSQL refuses NUL; logs and headers hate the rest)
TEXT = r"^[^\x00-\x1f\x7f]*$"
#: a URL of a scheme an image may come from (the store's own check: nothing else is stored,
#: and so never linked to)
URL = URL_PATTERN

ContentHash = Annotated[
    str, Path(pattern=HASH_RE.pattern, description="BLAKE2b-256 of the bytes, 64 lowercase hex digits")
]
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


if TYPE_CHECKING:  # a model class built at run time; to the checker, a BaseModel of that name

    class EntryOut(BaseModel):
        pass

else:
    EntryOut = _entry_model()


class ErrorOut(BaseModel):
    error: str
    detail: Any = None


class ApiError(Exception):
    """A refusal with a status and a machine-readable reason."""

    def __init__(self, status: int, reason: str, detail: Any) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


def not_found(content_hash: str, bucket: str) -> ApiError:
    return ApiError(404, "not_found", f"no image {content_hash} in bucket {bucket!r}")


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these refusals."""
    return {code: {"model": ErrorOut, "description": HTTPStatus(code).phrase} for code in codes}


def entry_json(entry: Entry, status: int = 200) -> JSONResponse:
    return JSONResponse(entry.to_json(), status_code=status)


def error_response(status: int, reason: str, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason, "detail": detail}, status_code=status, headers=headers)


def parse_time(value: str | None, name: str = "lookup_time") -> datetime | None:
    """An ISO 8601 time from a form or query field, as aware UTC; None when empty."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        parsed = parsed.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise ApiError(422, "invalid_request", f"{name} {value!r} is not an ISO 8601 time: {exc}") from exc
    if not 1970 <= parsed.year <= 9998:
        raise ApiError(422, "invalid_request", f"{name} {value!r} is outside 1970..9998")
    return parsed


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


def install_error_handlers(app: FastAPI, auth_header: str) -> None:
    """Every refusal is JSON ``{"error": reason, "detail": ...}`` with the right 4xx/5xx."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": auth_header} if exc.status == 401 else None
        return error_response(exc.status, exc.reason, exc.detail, headers)

    @app.exception_handler(InvalidImage)
    async def invalid_image(_request: Request, exc: InvalidImage) -> JSONResponse:
        return error_response(exc.http_status, exc.reason, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # only loc/msg/type: the raw input may be binary and is the client's own anyway
        detail = [
            {
                "loc": [str(part) for part in err.get("loc", ())],
                "msg": str(err.get("msg", "")),
                "type": str(err.get("type", "")),
            }
            for err in exc.errors()
        ]
        return error_response(422, "invalid_request", detail)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 304 or exc.status_code < 200:
            return Response(status_code=exc.status_code, headers=exc.headers)
        return error_response(exc.status_code, _reason(exc.status_code), exc.detail, exc.headers)

    @app.exception_handler(ValueError)
    async def bad_value(_request: Request, exc: ValueError) -> JSONResponse:
        return error_response(422, "invalid_request", str(exc))

    async def store_down(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(503, "store_unavailable", f"the store cannot be reached: {type(exc).__name__}")

    # a database that is down or refusing connections is the service's trouble, not the client's
    for unavailable in (StoreError, OperationalError, InterfaceError):
        app.add_exception_handler(unavailable, store_down)
