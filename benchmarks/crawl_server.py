"""The crawl benchmark's web server: a dataset folder served from memory by aiohttp.

Run as its own process (``python -m benchmarks.crawl_server DATA_DIR PORT_FILE``) so that
its CPU is not the crawler's; it writes its port to PORT_FILE once listening. Every body is
read into memory at start, so serving is a dict lookup and a socket write.

Images are served with the Content-Type of their format (by the file's extension) and carry
an ETag (BLAKE2b of the bytes) and a fixed Last-Modified; a matching ``If-None-Match`` (or,
without one, a late enough ``If-Modified-Since``) is answered 304.
The server counts what it serves; ``GET /_stats`` returns the counters and the server's
own CPU seconds, ``GET /_reset`` zeroes the counters.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

from aiohttp import web

MTIME = 1_700_000_000
#: what an image is served as, by its file's extension
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
LAST_MODIFIED = formatdate(MTIME, usegmt=True)
COUNTERS = ("image_requests", "image_200", "image_304", "image_bytes", "page_requests", "not_found")


def load(data_dir: Path) -> dict[str, tuple[bytes, str, str | None]]:
    """path -> (body, content type, ETag or None for pages)."""
    manifest = json.loads((data_dir / "manifest.json").read_text())
    files: dict[str, tuple[bytes, str]] = {}
    routes: dict[str, tuple[bytes, str, str | None]] = {}
    for route in manifest["routes"]:
        name = route["file"]
        if name not in files:
            body = (data_dir / name).read_bytes()
            files[name] = (body, '"' + hashlib.blake2b(body, digest_size=8).hexdigest() + '"')
        body, etag = files[name]
        routes[route["path"]] = (body, CONTENT_TYPES[name.rsplit(".", 1)[-1]], etag)
    pages = manifest["pages"]
    for k, paths in enumerate(pages):
        html = "".join(f'<img src="{p}">' for p in paths)
        routes[f"/page/{k}.html"] = (f"<html><body>{html}</body></html>".encode(), "text/html; charset=utf-8", None)
    links = "".join(f'<a href="/page/{k}.html">{k}</a>' for k in range(len(pages)))
    routes["/"] = (f"<html><body>{links}</body></html>".encode(), "text/html; charset=utf-8", None)
    return routes


def make_app(routes: dict[str, tuple[bytes, str, str | None]]) -> web.Application:
    counts = dict.fromkeys(COUNTERS, 0)

    def not_modified(request: web.Request, etag: str) -> bool:
        inm = request.headers.get("If-None-Match")
        if inm is not None:
            return inm == etag
        ims = request.headers.get("If-Modified-Since")
        if ims:
            try:
                return parsedate_to_datetime(ims).timestamp() >= MTIME
            except (TypeError, ValueError):
                return False
        return False

    async def handle(request: web.Request) -> web.Response:
        path = request.path
        if path == "/_stats":
            return web.json_response({**counts, "cpu_seconds": time.process_time()})
        if path == "/_reset":
            counts.update(dict.fromkeys(COUNTERS, 0))
            return web.json_response(counts)
        route = routes.get(path)
        if route is None:
            counts["not_found"] += 1
            return web.Response(status=404, text="not found")
        body, ctype, etag = route
        if etag is None:
            counts["page_requests"] += 1
            return web.Response(body=body, headers={"Content-Type": ctype})
        counts["image_requests"] += 1
        headers = {"ETag": etag, "Last-Modified": LAST_MODIFIED}
        if not_modified(request, etag):
            counts["image_304"] += 1
            return web.Response(status=304, headers=headers)
        counts["image_200"] += 1
        counts["image_bytes"] += len(body)
        return web.Response(body=body, headers={**headers, "Content-Type": ctype})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


async def serve(data_dir: Path, port_file: Path) -> None:
    runner = web.AppRunner(make_app(load(data_dir)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), Path(sys.argv[2])))
