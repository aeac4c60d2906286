"""The search page: drop or choose an image file, or give a cached URL or content hash, and
see the cached images like it, found as ``imgcache-similar`` finds them (its own functions).

An uploaded file is inspected here (never stored): its robust hashes and signature are the
query. Its thumbnail comes back inline as a ``data:`` URI, so nothing of it is kept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from ...commands.sheet import thumbnail_uri
from ...commands.similar import Query as Target
from ...commands.similar import cached_query, inspected, matches
from ...errors import InvalidImage
from ...store.base import Entry
from .params import Text, bucket_of, distance_of, hash_of

if TYPE_CHECKING:
    from .session import Session
    from .state import Web

LIMIT = 60


def add(router: APIRouter, web: Web) -> None:

    store = web.svc.store

    def results(request: Request, session: Session, target: Target | None, bucket: str, distance: int,
                status: int = 200, error: str = "", preview: str | None = None) -> Response:  # fmt: skip
        found: list[Entry] = [] if target is None else matches(store, target, distance, bucket, LIMIT)
        return web.render.page(
            request, "search.html", session, status=status, nav="search", title="Search", target=target,
            found=found, bucket=bucket, distance=distance, error=error, preview=preview,
        )  # fmt: skip

    @router.get("/web/search")
    def search_form(
        request: Request, url: Text = None, hash: Text = None, bucket: Text = None, distance: Text = None
    ) -> Response:
        """The form; with ``url`` (a URL the cache has seen) or ``hash``, that image's look-alikes."""
        session = web.session(request)
        chosen, dist = bucket_of(bucket), distance_of(distance)
        if not url and not hash:
            return results(request, session, None, chosen, dist)
        entry = store.get_meta(hash_of(hash), chosen) if hash else store.lookup(url or "", chosen)
        if entry is None:
            missing = "No image was recorded at that URL" if url else "There is no such image"
            return results(request, session, None, chosen, dist, 404, f"{missing} in bucket {chosen!r}.")
        return results(request, session, cached_query(entry, None), chosen, dist)

    @router.post("/web/search")
    def search_upload(
        request: Request,
        file: Annotated[UploadFile, File()],
        csrf: Annotated[str | None, Form()] = None,
        bucket: Annotated[str | None, Form(max_length=64)] = None,
        distance: Annotated[str | None, Form(max_length=4)] = None,
    ) -> Response:
        """Look-alikes of an uploaded image (read scope: nothing is stored)."""
        session = web.posted(request, csrf)
        chosen, dist = bucket_of(bucket), distance_of(distance)
        data = file.file.read(web.svc.max_image + 1)
        name = (file.filename or "upload").replace("\\", "/").rsplit("/", 1)[-1][:255]
        if len(data) > web.svc.max_image:
            return results(request, session, None, chosen, dist, 413, f"{name} is over the limit of "
                           f"{web.svc.max_image} bytes.")  # fmt: skip
        try:
            target = inspected("uploaded file", name, data, store.inspector)
        except InvalidImage as exc:
            return results(request, session, None, chosen, dist, exc.http_status, f"{name}: {exc.message}")
        return results(request, session, target, chosen, dist, preview=thumbnail_uri(data))
