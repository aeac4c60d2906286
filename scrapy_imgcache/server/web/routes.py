"""The web page's routes: every page, its images, and logging in and out.

Routes that touch the store or Pillow are plain ``def`` routes, which FastAPI runs in its
thread pool: the event loop never waits on a database, a disk or a decode.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from ..images import IMAGE_CSP, Service
from .background import Background
from .figures import groups, overview
from .pages import add as add_pages
from .params import Text, bucket_of, hash_of, safe_next
from .render import HERE, NeedLogin, Renderer, WebError
from .search import add as add_search
from .session import Sessions, clear_cookie, same_origin, set_cookie
from .state import Web
from .thumbs import Thumbnails

#: the overview is recounted at most this often (seconds); groups are kept longer
OVERVIEW_TTL, GROUPS_TTL = 60.0, 600.0


def install(app: FastAPI, svc: Service) -> Web:
    """Mount the web page on ``app`` (``/web/``, and ``/`` leading to it)."""
    sessions = Sessions(svc.keys)
    store = svc.store
    web = Web(
        svc,
        sessions,
        Renderer(svc.keys.enabled, sessions.csrf_token),
        Thumbnails(store),
        Background(lambda _key: overview(store), OVERVIEW_TTL, wait=2.0, max_keys=1),
        Background(lambda key: groups(store, key), GROUPS_TTL, wait=3.0),
    )
    router = APIRouter(include_in_schema=False)
    _auth(router, web)
    add_pages(router, web)
    add_search(router, web)
    _pictures(router, web)
    app.include_router(router)
    app.mount("/web/static", StaticFiles(directory=HERE / "static"), name="web-static")
    _errors(app, web)
    return web


def _auth(router: APIRouter, web: Web) -> None:
    @router.get("/")
    def root(request: Request) -> Response:
        return RedirectResponse(request.scope.get("root_path", "").rstrip("/") + "/web/", status_code=303)

    @router.get("/web/login")
    def login_page(request: Request, next: Text = None) -> Response:
        return web.render.page(request, "login.html", None, next=next or "", title="Log in")

    @router.post("/web/login")
    def login(
        request: Request, key: Annotated[str, Form(max_length=1024)], next: Annotated[str, Form()] = ""
    ) -> Response:
        base = request.scope.get("root_path", "").rstrip("/") + "/web"
        found = web.sessions.login(key) if same_origin(request) else None
        if found is None:
            return web.render.page(
                request, "login.html", None, status=401, next=next, title="Log in", error="That key is not valid here."
            )
        response = RedirectResponse(safe_next(base, next), status_code=303)
        set_cookie(response, request, found[1])
        return response

    @router.post("/web/logout")
    def logout(request: Request, csrf: Annotated[str | None, Form()] = None) -> Response:
        web.posted(request, csrf)
        base = request.scope.get("root_path", "").rstrip("/") + "/web"
        response = RedirectResponse(base + "/login", status_code=303)
        clear_cookie(response, request)
        return response


def _pictures(router: APIRouter, web: Web) -> None:
    store = web.svc.store
    cache_control = "private" if web.svc.keys.enabled else "public"

    def picture(data: bytes, mime: str, content_hash: str) -> Response:
        headers = {
            "ETag": f'"{content_hash}"',
            "Cache-Control": f"{cache_control}, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": IMAGE_CSP,
        }
        return Response(content=data, media_type=mime, headers=headers)

    @router.get("/web/thumb/{content_hash}")
    def thumb(request: Request, content_hash: str, bucket: Text = None) -> Response:
        """A cached image's thumbnail, made on its first view (in this thread) and kept."""
        web.session(request)
        entry = store.get_meta(hash_of(content_hash), bucket_of(bucket))
        made = web.thumbs.get(entry) if entry is not None else None
        if made is None:
            return Response(status_code=404, headers={"Cache-Control": "no-store"})
        return picture(made[0], made[1], content_hash)

    @router.get("/web/raw/{content_hash}")
    def raw(request: Request, content_hash: str, bucket: Text = None) -> Response:
        """The image itself, as ``/serve`` gives it, for a browser holding a session."""
        web.session(request)
        entry = store.get_meta(hash_of(content_hash), bucket_of(bucket))
        data = store.get_bytes(entry.content_hash, entry.bucket) if entry is not None else None
        if entry is None or data is None:
            raise WebError(404, "There is no such image in that bucket.")
        return picture(data, entry.content_type, content_hash)


def _errors(app: FastAPI, web: Web) -> None:
    @app.exception_handler(WebError)
    async def web_error(request: Request, exc: WebError) -> Response:
        session = web.sessions.current(request)[0]
        return web.render.page(request, "error.html", session, status=exc.status, message=exc.message, title="Error")

    @app.exception_handler(NeedLogin)
    async def need_login(request: Request, _exc: NeedLogin) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        response = web.render.page(request, "login.html", None, status=401, next=target, title="Log in")
        response.headers["WWW-Authenticate"] = "X-API-Key"
        return response
