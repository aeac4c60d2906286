"""The demo's web site: a real HTTP server on 127.0.0.1 serving pages and images, counting what it serves.

Images carry an ETag and a Last-Modified and answer conditional requests with 304, so the
demo (and the tests) can show that a second crawl downloaded no image bytes and that
revalidation worked.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    body: bytes
    content_type: str
    is_image: bool
    status: int = 200
    validators: bool = True
    mtime: float = 1_700_000_000.0
    #: seconds to wait before answering
    delay: float = 0.0
    #: set: answer only once it is set (a test holds a request in flight while it acts)
    hold: threading.Event | None = None
    #: extra response headers (Location, Content-Encoding...)
    headers: dict[str, str] = field(default_factory=dict)
    #: > 0: stream this many bytes (the body repeated) with no Content-Length
    stream: int = 0
    #: called before answering, in the server's thread (tests: act when a page is asked for, or hold it)
    before: Callable[[], None] | None = None

    @property
    def etag(self) -> str:
        return '"' + hashlib.blake2b(self.body, digest_size=8).hexdigest() + '"'

    @property
    def last_modified(self) -> str:
        return formatdate(self.mtime, usegmt=True)


class Site:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.hits: Counter[str] = Counter()
        self.not_modified: Counter[str] = Counter()
        self.image_bytes = 0
        #: path -> the headers of each request for it
        self.requests: defaultdict[str, list[dict[str, str]]] = defaultdict(list)
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- content -----------------------------------------------------------------------

    def image(self, path: str, body: bytes, content_type: str = "image/jpeg", **kw: object) -> str:
        self.routes[path] = Route(body, content_type, True, **kw)  # type: ignore[arg-type]
        return self.url(path)

    def page(self, path: str, image_paths: list[str], links: list[str] = ()) -> str:  # type: ignore[assignment]
        """A bare page: its images, then its links."""
        imgs = "".join(f'<img src="{p}">' for p in image_paths)
        anchors = "".join(f'<a href="{p}">next</a>' for p in links)
        return self.html(path, f"<html><body>{imgs}{anchors}</body></html>")

    def redirect(self, path: str, target: str, status: int = 302) -> str:
        self.routes[path] = Route(
            b"", "text/plain", True, status=status, validators=False, headers={"Location": target}
        )
        return self.url(path)

    def html(self, path: str, text: str) -> str:
        self.routes[path] = Route(text.encode(), "text/html; charset=utf-8", False)
        return self.url(path)

    def url(self, path: str) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def reset_counts(self) -> None:
        with self.lock:
            self.hits.clear()
            self.not_modified.clear()
            self.requests.clear()
            self.image_bytes = 0

    @property
    def image_hits(self) -> int:
        return sum(n for p, n in self.hits.items() if p in self.routes and self.routes[p].is_image)

    # -- server ------------------------------------------------------------------------

    def start(self) -> Site:
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                route = site.routes.get(path)
                with site.lock:
                    site.hits[path] += 1
                    site.requests[path].append(dict(self.headers.items()))
                if route is None:
                    return self._send(404, b"not found", "text/plain")
                if route.before is not None:
                    route.before()
                if route.delay:
                    time.sleep(route.delay)
                if route.hold is not None:
                    route.hold.wait(timeout=600)
                if route.stream:
                    return self._stream(route)
                headers = dict(route.headers)
                if route.validators:
                    headers.update({"ETag": route.etag, "Last-Modified": route.last_modified})
                    if self._not_modified(route):
                        with site.lock:
                            site.not_modified[path] += 1
                        return self._send(304, b"", route.content_type, headers)
                if route.is_image and route.status == 200:
                    with site.lock:
                        site.image_bytes += len(route.body)
                return self._send(route.status, route.body, route.content_type, headers)

            def _not_modified(self, route: Route) -> bool:
                inm = self.headers.get("If-None-Match")
                if inm is not None:
                    return inm == route.etag
                ims = self.headers.get("If-Modified-Since")
                if ims:
                    try:
                        return parsedate_to_datetime(ims).timestamp() >= int(route.mtime)
                    except (TypeError, ValueError):
                        return False
                return False

            def _stream(self, route: Route) -> None:
                """``route.stream`` bytes, chunked: the size is known only by reading it all."""
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                sent = 0
                try:
                    while sent < route.stream:
                        chunk = route.body[: route.stream - sent]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        sent += len(chunk)
                        with site.lock:
                            site.image_bytes += len(chunk)
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client hung up: that is the point of the test
                    pass

            def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if status != 304:
                    self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            # a listen backlog as a real web server's (nginx: 511): the standard library's 5
            # overflowed when a crawl's image requests came at once (Scrapy 2.19 starts every
            # request queued in a download slot in one go), and the kernel then dropped
            # connections' first packets: requests that sat unanswered until their timeout
            request_queue_size = 512

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
