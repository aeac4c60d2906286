"""A cap on request bodies, enforced while they stream in.

Multipart parsing spools uploads to disk past 1 MB, so the cap must bite *before* the form
parser sees the bytes: a declared ``Content-Length`` over the cap is refused without reading
a byte, and a chunked or lying body is counted as it arrives and cut off at the cap. Either
way the client gets a JSON 413 and nothing reaches the parser's temporary files or the store.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    """Raised inside ``receive`` once the body passes the cap."""


def error_body(reason: str, detail: object, status: int | None = None) -> bytes:
    body: dict[str, object] = {"error": reason, "detail": detail}
    if status is not None:  # the VisualSnoop API (/api/v1) answers with status and message
        body.update(status=status, message=str(detail))
    return json.dumps(body).encode()


class BodyLimitMiddleware:
    """Answer 413 to any HTTP request whose body exceeds ``max_bytes``."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send, f"request body of {declared} bytes is over the limit of {self.max_bytes}")
            return
        seen = 0
        overflow = False
        started = False

        async def counting_receive() -> Message:
            nonlocal seen, overflow
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    overflow = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if overflow:  # the app's answer to a cut-off body is replaced by the 413
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            overflow = True
        except Exception:
            if not overflow:
                raise
        if overflow and not started:
            await self._refuse(send, f"request body is over the limit of {self.max_bytes} bytes")

    @staticmethod
    async def _refuse(send: Send, detail: str) -> None:
        body = error_body("too_many_bytes", detail, 413)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
