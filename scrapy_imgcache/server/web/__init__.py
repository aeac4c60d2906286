"""The cache in a browser: a web page served by the service itself, under ``/web/``.

Server-rendered HTML (Jinja2), a little plain JavaScript, every asset served from the
package: nothing is loaded from another host and nothing is built. Pages: the overview
(:mod:`.figures`), a grid of thumbnails (:mod:`.thumbs`), one image, the near-duplicate
groups and a search; the routes are in :mod:`.routes`, the session cookie and CSRF tokens
that stand in for the ``X-API-Key`` header in :mod:`.session`. docs/server.md, "Web page".
"""

from __future__ import annotations

from .routes import install

__all__ = ["install"]
