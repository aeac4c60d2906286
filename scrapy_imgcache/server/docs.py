"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) with every asset served by the service.

FastAPI's own pages load their scripts and styles from a CDN (and ReDoc its fonts from
Google), so offline they are blank. The same viewers are served here from the files of the
``fastapi-offline`` package (MIT; Swagger UI 5 and ReDoc 2 bundles, part of the ``server``
extra), under ``/docs/static``. Swagger UI's validator badge, which would ask
validator.swagger.io about the schema, is turned off. Without that package the two pages
are off (404), and ``/openapi.json`` is served either way.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = "/docs/static"
#: the viewers' pages hold no data of the cache, only the schema; their own inline start-up
#: script and styles are allowed, and nothing from another host: ReDoc's sidebar shows a
#: logo from cdn.redoc.ly that no option turns off, which this blocks before any request
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'"
)


def assets() -> Path | None:
    """The folder of the viewers' files, or None when fastapi-offline is not installed."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


def install_docs(app: FastAPI) -> bool:
    """Serve ``/docs`` and ``/redoc`` from the package's files; False (and no pages) without them.
    ``app`` must have been made with ``docs_url=None, redoc_url=None``."""
    folder = assets()
    if folder is None:
        return False
    app.mount(STATIC, StaticFiles(directory=folder), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _locked(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - Swagger UI",
                swagger_js_url=f"{root}{STATIC}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{STATIC}/swagger-ui.css",
                swagger_favicon_url=f"{root}{STATIC}/favicon.png",
                swagger_ui_parameters={"validatorUrl": None},
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return _locked(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{app.title} - ReDoc",
                redoc_js_url=f"{root}{STATIC}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{STATIC}/favicon.png",
                with_google_fonts=False,
            )
        )

    return True


def _locked(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page
