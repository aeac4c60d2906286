"""The queries of the web page, on SQLite, PostgreSQL and MariaDB: a bucket's images newest
first by keyset pages, filtered, the images stored per day, and each URL's first sighting."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest
from PIL import Image
from sqlalchemy import update

from scrapy_imgcache.store import browsing
from scrapy_imgcache.store.base import BrowseQuery, make_cursor, parse_cursor, utcnow
from scrapy_imgcache.store.models import ImageRow
from tests.helpers import fresh_jpegs, fresh_url


def png(seed: int) -> bytes:
    img = Image.new("RGB", (40 + seed, 30), (seed * 40 % 256, 90, 200))
    for x in range(0, 40, 4):
        img.putpixel((x, seed % 30), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def stocked(store):
    """Bucket '': 7 JPEGs by spider_a (one also seen by spider_b: an exact copy), 3 PNGs by
    spider_b (one noted as a near-duplicate of the first JPEG), each a second apart;
    bucket 'other': one JPEG."""
    start = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    hashes = []
    for i, data in enumerate(fresh_jpegs(7)):
        hashes.append(store.put(data, url=fresh_url(f"j{i}"), client_name="spider_a").entry.content_hash)
    first = hashes[0]
    for i in range(3):
        kw = {"similar_to": first, "similar_distance": 3, "similar_match": "resized"} if i == 1 else {}
        hashes.append(store.put(png(i), url=fresh_url(f"p{i}"), client_name="spider_b", **kw).entry.content_hash)
    copy = store.get_bytes(hashes[2])
    store.put(copy, url=fresh_url("copy"), client_name="spider_b")
    store.put(fresh_jpegs(1)[0], url=fresh_url("o"), client_name="spider_a", bucket="other")
    with store.engine.begin() as conn:  # one a second, in the order stored
        for i, h in enumerate(hashes):
            conn.execute(
                update(ImageRow).where(ImageRow.content_hash == h).values(created_at=start + timedelta(seconds=i))
            )
    return hashes  # oldest first


def walk(store, **filters) -> list[str]:
    """Every page from the newest, following ``older``; then back up, following ``newer``."""
    down, page = [], store.browse(BrowseQuery(limit=3, **filters))
    assert page.newer is None
    seen_pages = [page]
    while True:
        down += [e.content_hash for e in page.entries]
        if page.older is None:
            break
        page = store.browse(BrowseQuery(limit=3, before=page.older, **filters))
        seen_pages.append(page)
    up = [e.content_hash for e in page.entries]
    while page.newer is not None:
        page = store.browse(BrowseQuery(limit=3, after=page.newer, **filters))
        up = [e.content_hash for e in page.entries] + up
    assert up == down, "paging back up gives the same images"
    return down


def test_pages_walk_every_image_newest_first_and_back(store, stocked):
    assert walk(store) == list(reversed(stocked))
    assert [e.content_hash for e in store.browse(BrowseQuery(bucket="other")).entries] != []


def test_filters_by_client_format_duplicate_kind_and_size(store, stocked):
    pngs = stocked[7:]
    assert walk(store, client="spider_b") == list(reversed(pngs))
    assert walk(store, content_type="image/png") == list(reversed(pngs))
    assert walk(store, content_type="image/jpeg", client="spider_b") == []
    assert walk(store, duplicate="exact") == [stocked[2]]
    assert walk(store, duplicate="near") == [pngs[1]]
    assert walk(store, duplicate="none") == [h for h in reversed(stocked) if h not in (stocked[2], pngs[1])]
    sizes = {h: store.get_meta(h).file_size_bytes for h in stocked}
    cut = sorted(sizes.values())[5]
    assert walk(store, min_size=cut) == [h for h in reversed(stocked) if sizes[h] >= cut]
    assert walk(store, max_size=cut) == [h for h in reversed(stocked) if sizes[h] <= cut]


def test_a_page_has_entries_with_their_newest_url(store, stocked):
    page = store.browse(BrowseQuery(limit=20))
    by_hash = {e.content_hash: e for e in page.entries}
    assert by_hash[stocked[2]].client_name == "spider_b"  # the exact copy was seen last
    assert by_hash[stocked[2]].duplicate == "exact"


def test_ties_in_creation_time_are_paged_by_id(store, stocked):
    same = datetime(2026, 3, 2, tzinfo=timezone.utc)
    with store.engine.begin() as conn:
        conn.execute(update(ImageRow).where(ImageRow.bucket == "").values(created_at=same))
    assert sorted(walk(store)) == sorted(stocked)
    assert len(walk(store)) == len(stocked)


def test_bad_queries_are_refused():
    for bad in ({"bucket": "a b"}, {"duplicate": "maybe"}, {"before": "x"}, {"limit": 0}, {"limit": 501}):
        with pytest.raises(ValueError):
            BrowseQuery(**bad)
    with pytest.raises(ValueError):
        BrowseQuery(before="1-1", after="2-2")


def test_cursors_round_trip():
    when = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
    assert parse_cursor(make_cursor(when, 42)) == (when, 42)
    for bad in ("9" * 19 + "-1", "1-" + "9" * 19, "1-1-1", "-1-1"):
        with pytest.raises(ValueError):
            parse_cursor(bad)


def test_daily_counts_per_bucket_and_in_all(store, stocked):
    today = utcnow().replace(hour=1, minute=0, second=0, microsecond=0)
    with store.engine.begin() as conn:
        for i, h in enumerate(stocked):  # 4 today, 3 yesterday, 3 forty days ago
            moment = today - timedelta(days=0 if i < 4 else 1 if i < 7 else 40)
            conn.execute(update(ImageRow).where(ImageRow.content_hash == h).values(created_at=moment))
    days = store.daily_counts("", 30)
    assert days == [(today.date() - timedelta(days=1), 3), (today.date(), 4)]
    assert store.daily_counts("", 60)[0] == (today.date() - timedelta(days=40), 3)
    everywhere = dict(store.daily_counts(None, 30))
    assert everywhere[today.date()] == 4 + 1  # the image of bucket "other" was stored today


def test_each_url_record_knows_when_it_was_first_seen(store):
    data = fresh_jpegs(1)[0]
    url = fresh_url()
    before = utcnow()
    stored = store.put(data, url=url, client_name="a").entry
    first = stored.content_hash
    assert stored.first_seen == store.urls(first)[0].first_seen == stored.created_at  # what put() says is stored
    later = utcnow() + timedelta(days=3)
    store.record_url(first, url=url, client_name="a", lookup_time=later)
    (record,) = store.urls(first)
    assert record.lookup_time == later
    assert record.first_seen is not None and before <= record.first_seen < later


def test_a_filtered_page_examines_at_most_the_scan_budget(store, stocked, monkeypatch):
    monkeypatch.setattr(browsing, "SCAN_BUDGET", 4)
    assert walk(store, client="spider_b") == list(reversed(stocked[7:]))  # pages carry on where one stopped
    assert walk(store, duplicate="exact") == [stocked[2]]
    first = store.browse(BrowseQuery(limit=3, duplicate="exact"))  # the 8th newest: not in the newest 4
    assert first.entries == [] and first.older is not None and first.newer is None
    second = store.browse(BrowseQuery(limit=3, duplicate="exact", before=first.older))
    assert [e.content_hash for e in second.entries] == [stocked[2]]
