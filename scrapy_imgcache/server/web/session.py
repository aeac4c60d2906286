"""How a browser presents a key: a signed session cookie, and CSRF tokens for its forms.

A browser cannot send the ``X-API-Key`` header, so the login form takes a key once and
answers with a cookie that names the key's *scope*, never the key: ``imgcache_session`` =
payload + HMAC-SHA256 of it under a secret drawn when the app starts. The cookie is
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it) and
``Secure`` over HTTPS, and lasts :data:`SESSION_SECONDS`; restarting the service (with new
keys, say) ends every session.

Every form that changes something (and the search upload, and logout) carries a CSRF token:
an HMAC of the session's random nonce, checked in constant time, and a POST whose ``Origin``
is another site's is refused whatever it carries.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import Response

from ..auth import WRITE, ApiKeys

COOKIE = "imgcache_session"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    scope: str  # "read" or "write"
    nonce: str
    expires: int

    @property
    def may_write(self) -> bool:
        return self.scope == WRITE


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Sessions signed with a secret of this app's own (``secret``: for tests)."""

    def __init__(self, keys: ApiKeys, secret: bytes | None = None) -> None:
        self.keys = keys
        self._secret = secret or os.urandom(32)

    def _sign(self, payload: bytes, purpose: bytes) -> bytes:
        return hmac.new(self._secret, purpose + b"\0" + payload, hashlib.sha256).digest()

    def open(self, scope: str) -> tuple[Session, str]:
        """A new session of ``scope`` and its cookie value."""
        session = Session(scope, _b64(os.urandom(16)), int(time.time()) + SESSION_SECONDS)
        payload = json.dumps({"s": session.scope, "n": session.nonce, "e": session.expires}).encode()
        return session, f"{_b64(payload)}.{_b64(self._sign(payload, b'session'))}"

    def current(self, request: Request) -> tuple[Session | None, str | None]:
        """The request's session, and a cookie to set when one was made here: with no key
        configured everyone holds an open session (the API is open too), made on first sight
        so that its forms have a CSRF token."""
        cookie = request.cookies.get(COOKIE, "")
        session = self._verify(cookie) if cookie else None
        if session is not None and (self.keys.enabled or session.scope == WRITE):
            return session, None
        if not self.keys.enabled:
            return self.open(WRITE)  # a fresh open session and its cookie
        return None, None

    def _verify(self, cookie: str) -> Session | None:
        try:
            payload_text, signature = cookie.split(".", 1)
            payload = _unb64(payload_text)
            if not hmac.compare_digest(_unb64(signature), self._sign(payload, b"session")):
                return None
            data = json.loads(payload)
            session = Session(str(data["s"]), str(data["n"]), int(data["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def login(self, key: str) -> tuple[Session, str] | None:
        """A session for a valid key (the scope it grants); None for a wrong one."""
        scope = self.keys.scope_of(key)
        return None if scope is None else self.open(scope)

    def csrf_token(self, session: Session) -> str:
        return _b64(self._sign(session.nonce.encode(), b"csrf"))

    def check_csrf(self, session: Session, token: str | None) -> bool:
        return bool(session.nonce) and hmac.compare_digest((token or "").encode(), self.csrf_token(session).encode())


def same_origin(request: Request) -> bool:
    """A POST from this site: its ``Origin`` (when the browser sends one) names this host. The
    scheme is not compared: behind a TLS proxy the service itself sees plain HTTP."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.headers.get("host", "")


def set_cookie(response: Response, request: Request, value: str) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
