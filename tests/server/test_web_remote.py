"""The web page over a ``RemoteStore``: the grid and the chart come through the API's
``GET /images/browse`` and ``GET /usage/daily``, from a service on SQLite, PostgreSQL and
MariaDB; thumbnails are kept in memory (a remote store has no blob store here)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from scrapy_imgcache.server.app import create_app
from scrapy_imgcache.store.base import BrowseQuery, utcnow
from scrapy_imgcache.store.remote import RemoteStore
from tests.helpers import fresh_jpegs, fresh_url


def test_the_web_page_works_over_a_remote_store(live):
    remote = RemoteStore(live.url)
    try:
        bucket = f"web{utcnow().timestamp():.0f}"
        stored = [remote.put(d, url=fresh_url(), client_name="far", bucket=bucket).entry for d in fresh_jpegs(5)]
        newest_first = [e.content_hash for e in reversed(stored)]
        page = remote.browse(BrowseQuery(bucket=bucket, limit=3))
        assert [e.content_hash for e in page.entries] == newest_first[:3] and page.older
        rest = remote.browse(BrowseQuery(bucket=bucket, limit=3, before=page.older))
        assert [e.content_hash for e in rest.entries] == newest_first[3:] and rest.older is None
        assert dict(remote.daily_counts(bucket, 7)) == {utcnow().date(): 5}

        client = TestClient(create_app(remote), follow_redirects=False)
        grid = client.get("/web/browse", params={"bucket": bucket}).text
        assert re.findall(r'data-hash="([0-9a-f]{64})"', grid) == newest_first
        thumb = client.get(f"/web/thumb/{stored[0].content_hash}", params={"bucket": bucket})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert client.app.state.web.thumbs.made == 1
        overview = client.get("/web/")
        assert overview.status_code == 200 and f'data-bucket="{bucket}"' in overview.text
    finally:
        remote.close()
