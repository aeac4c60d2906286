"""Pages out: Jinja2 templates (autoescaped: every URL, file name and id taken from the cache
is text, never markup), the headers every page carries, and the HTML error pages.

The Content-Security-Policy allows scripts, styles and images from this service alone (no
inline script or style, no other host), forms that post here only, and no framing; with
keys configured, pages are ``private, no-store`` so that no shared cache keeps them.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ...commands import dimensions, human_size
from .session import Session, set_cookie

HERE = Path(__file__).parent
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
#: the URLs shown as links: the scheme read from the first character on, as browsers do
LINKABLE = re.compile(r"(?:https?|file):", re.IGNORECASE)


class WebError(Exception):
    """A refusal shown as a page (the API's refusals are JSON)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class NeedLogin(Exception):
    """No session (keys are configured): the 401 page, with the login form."""


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _linkable(url: str) -> bool:
    return bool(LINKABLE.match(url))


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(size=human_size, dims=dimensions, when=_when, qs=lambda d: urlencode(d))
    env.tests["linkable"] = _linkable
    return env


def page_headers(private: bool) -> dict[str, str]:
    return {
        "Content-Security-Policy": PAGE_CSP,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",  # "no-referrer" would send "Origin: null" with our own forms
        "Cache-Control": "private, no-store" if private else "no-cache",
    }


class Renderer:
    def __init__(self, private: bool, csrf: Any) -> None:
        self.env = environment()
        self.private = private
        self.csrf = csrf  # Session -> token

    def page(self, request: Request, name: str, session: Session | None, status: int = 200, **context: Any) -> Response:
        base = request.scope.get("root_path", "").rstrip("/") + "/web"
        html = self.env.get_template(name).render(
            base=base,
            session=session,
            may_write=session is not None and session.may_write,
            csrf=self.csrf(session) if session is not None else "",
            keys_enabled=self.private,
            **context,
        )
        response = HTMLResponse(html, status_code=status, headers=page_headers(self.private))
        new_cookie = getattr(request.state, "new_cookie", None)
        if new_cookie:
            set_cookie(response, request, new_cookie)
        return response
