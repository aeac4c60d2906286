"""GET /metrics in the Prometheus text format, from a registry of each app's own."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from scrapy_imgcache.server.app import create_app
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import fresh_jpegs, fresh_url, noise_bytes

from .live import imgcache_server


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


def test_each_app_has_its_own_registry(tmp_path):
    store = SqlStore(f"sqlite:///{tmp_path / 'c.sqlite3'}", str(tmp_path / "f"))
    try:
        first, second = create_app(store), create_app(store)  # no "duplicated timeseries" error
        assert first.state.metrics.registry is not second.state.metrics.registry
        first.state.metrics.uploads.labels("created").inc()
        assert second.state.metrics.registry.get_sample_value("imgcache_uploads_total", {"outcome": "created"}) is None
    finally:
        store.close()
