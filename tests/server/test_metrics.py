"""GET /metrics in the Prometheus text format, from a registry of each app's own."""

from __future__ import annotations

import random
import string
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from scrapy_imgcache.server.app import create_app
from scrapy_imgcache.store.sql import SqlStore
from tests.forked import imgcache_server
from tests.helpers import fresh_jpegs, fresh_url, noise_bytes


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_count_requests_by_route_template_and_uploads_by_outcome(tmp_path):
    with (
        imgcache_server(f"sqlite:///{tmp_path / 'c.sqlite3'}", tmp_path) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        (data,) = fresh_jpegs(1)
        for _ in range(2):
            http.post("/images", data={"url": fresh_url(), "client_name": "s"}, files={"file": ("a.jpg", data)})
        http.post("/images", data={"url": fresh_url(), "client_name": "s"}, files={"file": ("n.bin", noise_bytes())})
        for chash in ("0" * 64, "1" * 64):
            http.get(f"/images/meta/{chash}")
        resp = http.get("/metrics")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        got = samples(resp.text)
    assert got[("imgcache_uploads_total", (("outcome", "created"),))] == 1
    assert got[("imgcache_uploads_total", (("outcome", "duplicate"),))] == 1
    assert got[("imgcache_uploads_total", (("outcome", "not_an_image"),))] == 1
    assert got[("imgcache_upload_bytes_total", ())] == len(data)
    route = (("method", "GET"), ("route", "/images/meta/{content_hash}"), ("status", "404"))
    assert got[("imgcache_http_requests_total", route)] == 2  # one series for both hashes
    assert got[("imgcache_http_request_duration_seconds_count", route[:2])] == 2
    assert not [k for k in got if "0" * 64 in str(k)]  # raw paths never become labels


def test_a_mounted_routers_routes_are_labelled_with_their_prefix(tmp_path):
    """``GET /api/v1/images`` (VisualSnoop's listing) was counted as ``/images``, the route of
    the imgcache API's uploads: FastAPI hands the middleware the router's own route, whose
    template lacks the prefix it was mounted under."""
    with (
        imgcache_server(f"sqlite:///{tmp_path / 'c.sqlite3'}", tmp_path) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        assert http.get("/api/v1/images").status_code == 401  # unsigned
        assert http.post("/images").status_code == 422  # no form
        assert http.get("/api/v1/image/some-id").status_code == 401
        got = samples(http.get("/metrics").text)
    requests = {dict(labels)["route"]: n for (name, labels), n in got.items() if name.endswith("requests_total")}
    assert requests["/api/v1/images"] == 1 and requests["/images"] == 1, requests
    assert requests["/api/v1/image/{image_id:image_id}"] == 1, requests


def test_each_app_has_its_own_registry(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 'c.sqlite3'}", str(tmp_path / "f"))
    try:
        first, second = create_app(store), create_app(store)  # no "duplicated timeseries" error
        assert first.state.metrics.registry is not second.state.metrics.registry
        first.state.metrics.uploads.labels("created").inc()
        assert second.state.metrics.registry.get_sample_value("imgcache_uploads_total", {"outcome": "created"}) is None
    finally:
        store.close()


def test_random_methods_and_paths_leave_the_metrics_small(tmp_path):
    """Unauthenticated junk (unknown methods, unknown paths) must not grow /metrics: every
    method outside a fixed set is ``other``, every path that matches no route ``unmatched``."""
    rng = random.Random(13)

    def junk_method() -> str:
        return "X" + "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 20)))

    def junk_path(i: int) -> str:
        return rng.choice(
            [
                "/health",
                "/metrics",
                f"/images/{rng.getrandbits(256):064x}",
                f"/images/meta/{i}",
                f"/no/such/{i}/{rng.random()}",
                f"/api/v1/x{i}",
                f"/api/v1/image/id{i}",
            ]
        )

    with (
        imgcache_server(f"sqlite:///{tmp_path / 'c.sqlite3'}", tmp_path) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        sizes = []
        for batch in range(2):  # the second batch of junk must add no series
            for i in range(batch * 600, batch * 600 + 600):
                method = junk_method() if i % 3 else rng.choice(["GET", "OPTIONS", "TRACE", "PATCH", "delete"])
                http.request(method, junk_path(i))
            text = http.get("/metrics").text
            sizes.append(len(text))
    labels = [s.labels for key, s in _samples(text) if key == "imgcache_http_requests_total"]
    methods = {label["method"] for label in labels}
    routes = {label["route"] for label in labels}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "other"}
    assert "other" in methods
    assert "unmatched" in routes and not [r for r in routes if "/no/" in r or "id1" in r]
    assert len(labels) < 60, sorted(labels, key=str)
    assert sizes[1] - sizes[0] < 5_000 and sizes[1] < 200_000, sizes  # (3,000 requests made 8.6 MB)


def _samples(text: str) -> list[tuple[str, Any]]:
    return [(s.name, s) for family in text_string_to_metric_families(text) for s in family.samples]
