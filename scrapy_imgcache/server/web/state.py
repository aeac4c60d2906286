"""What every route of the web page shares: the service, the sessions, the renderer, the
thumbnails and the figures computed in the background, and the session checks a route makes."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from ..auth import WRITE
from ..images import Service
from .background import Background
from .figures import GroupsKey, Overview
from .render import NeedLogin, Renderer, WebError
from .session import Session, Sessions, same_origin
from .thumbs import Thumbnails


@dataclass
class Web:
    """What the routes share."""

    svc: Service
    sessions: Sessions
    render: Renderer
    thumbs: Thumbnails
    overview: Background[None, Overview]
    groups: Background[GroupsKey, list]  # type: ignore[type-arg]

    def session(self, request: Request, scope: str = "read") -> Session:
        """The request's session, or the 401 page; a write scope for what changes things."""
        session, new_cookie = self.sessions.current(request)
        if session is None:
            raise NeedLogin()
        request.state.new_cookie = new_cookie
        if scope == WRITE and not session.may_write:
            raise WebError(403, "This key may look but not change anything: log in with a write key.")
        return session

    def posted(self, request: Request, csrf: str | None, scope: str = "read") -> Session:
        """The session of a form post from this site with its CSRF token."""
        session = self.session(request, scope)
        if not same_origin(request) or not self.sessions.check_csrf(session, csrf):
            raise WebError(403, "This form expired or came from another site: reload the page and try again.")
        return session
