"""The web page in a real headless Chromium: what each view shows, checked against the store,
the keys (no key: the 401 page; a read key looks; a write key deletes), and that the page
asks nothing of any host but the service. Each test leaves a screenshot in docs/img/."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import update

from scrapy_imgcache.commands.dupes import clusters
from scrapy_imgcache.commands.similar import inspected, matches
from scrapy_imgcache.server.auth import READ_KEYS_ENV, WRITE_KEYS_ENV
from scrapy_imgcache.store.base import BrowseQuery
from scrapy_imgcache.store.models import UrlRow
from scrapy_imgcache.store.sql import SqlStore
from tests.forked import imgcache_server
from tests.helpers import distinct_images, encode, near_duplicates

from .browser import browser, foreign, screenshot

READ_KEY = "read-key-for-the-web-page-0001"
WRITE_KEY = "write-key-for-the-web-page-0001"
HOSTILE_URL = 'https://evil.example/a.jpg?q="><img src=x onerror=alert(1)>&b=<script>alert(2)</script>'
HOSTILE_NAME = '<script>alert("name")</script><img src=x onerror=alert(3)>.jpg'
LEGACY_URL = "javascript:alert(document.domain)"


@dataclass
class Cache:
    origin: str
    db: str
    files: str
    original: str
    near: dict[str, str]
    twice: str
    hostile: str
    spare: str  # an image the write-key test deletes
    many: list[str] = field(default_factory=list)  # bucket "many", oldest first
    query: bytes = b""  # a near-duplicate of the original, never stored

    def store(self) -> SqlStore:
        return SqlStore(self.db, self.files, create=False)


def noise_png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def fill(store: SqlStore) -> dict[str, Any]:
    photos = distinct_images(10)
    variants = near_duplicates(photos[0])

    def put(data: bytes, url: str, client: str, **kw: Any) -> str:
        return store.put(data, url=url, client_name=client, **kw).entry.content_hash

    original = put(encode(photos[0]), "https://shop.example/img/mug.jpg", "shop", filename="mug.jpg")
    near = {
        "resized": put(variants["resized"], "https://blog.example/mug-small.jpg", "blog",
                       similar_to=original, similar_distance=2, similar_match="resized"),
        "recompressed": put(variants["recompressed"], "https://blog.example/mug-q55.jpg", "blog"),
        "cropped": put(variants["cropped"], "https://forum.example/mug-crop.jpg", "forum"),
    }  # fmt: skip
    twice = put(encode(photos[1]), "https://shop.example/img/lamp.jpg", "shop")
    put(encode(photos[1]), "https://blog.example/lamp-copy.jpg", "blog")
    for i, img in enumerate(photos[2:8]):
        put(encode(img, "PNG" if i == 2 else "JPEG"), f"https://shop.example/img/p{i}.jpg", "shop" if i % 2 else "blog")
    hostile = put(encode(photos[8]), HOSTILE_URL, "forum", filename=HOSTILE_NAME)
    store.record_url(hostile, url="https://placeholder.example/legacy.jpg", client_name="forum")
    with store.engine.begin() as conn:  # recorded before the store refused such URLs
        conn.execute(
            update(UrlRow).where(UrlRow.url == "https://placeholder.example/legacy.jpg").values(url=LEGACY_URL)
        )
    spare = put(encode(photos[9]), "https://shop.example/img/spare.jpg", "shop")
    many = [put(noise_png(i), f"https://many.example/{i}.png", "bulk", bucket="many") for i in range(70)]
    return {"original": original, "near": near, "twice": twice, "hostile": hostile, "spare": spare, "many": many,
            "query": variants["brightened"]}  # fmt: skip


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Iterator[Cache]:
    """A cache of photos, near-duplicates and hostile names, served with a read and a write key."""
    workdir = tmp_path_factory.mktemp("web")
    db, files = f"sqlite:///{workdir / 'cache.sqlite3'}", str(workdir / "files")
    store = SqlStore(db, files)
    try:
        filled = fill(store)
    finally:
        store.close()
    env = {READ_KEYS_ENV: READ_KEY, WRITE_KEYS_ENV: WRITE_KEY}
    with imgcache_server(db, workdir, env=env) as server:
        yield Cache(server.url, db, files, **filled)


@dataclass
class Browser:
    page: Any
    requested: list[str]
    console: list[str]
    dialogs: list[str]
    origin: str

    def goto(self, path: str) -> Any:
        return self.page.goto(self.origin + path)

    def login(self, key: str) -> None:
        self.goto("/web/login")
        self.page.fill("input[name=key]", key)
        self.page.click("form[action$='/login'] button[type=submit]")
        self.page.wait_for_url(self.origin + "/web/")

    def follow(self, selector: str) -> None:
        """Click a link or a form's button and wait until the page it leads to has loaded:
        a bare click returns once the navigation starts, and the DOM read right after it can
        be the new page half-parsed (a CI run saw 49 of 60 cards)."""
        with self.page.expect_navigation():
            self.page.click(selector)

    def texts(self, selector: str) -> list[str]:
        return [t.strip() for t in self.page.locator(selector).all_inner_texts()]

    def attrs(self, selector: str, name: str) -> list[str]:
        return self.page.eval_on_selector_all(selector, f"els => els.map(e => e.getAttribute('{name}'))")

    def thumbnails_shown(self, selector: str = ".card img") -> list[int]:
        return self.page.eval_on_selector_all(selector, "els => els.map(e => e.complete ? e.naturalWidth : -1)")


@pytest.fixture
def web(cache: Cache, tmp_path: Path) -> Iterator[Browser]:
    """A fresh Chromium profile; afterwards, no request went to another host and no console
    error (a CSP violation, a script error) happened."""
    with browser(tmp_path / "profile") as (context, requested):
        page = context.pages[0] if context.pages else context.new_page()
        console: list[str] = []
        dialogs: list[str] = []
        page.on("console", lambda msg: console.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: console.append(str(exc)))
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
        yield Browser(page, requested, console, dialogs, cache.origin)
        assert requested, "the browser made requests"
        assert foreign(requested, cache.origin) == []
        unexpected = [c for c in console if "401" not in c and "403" not in c]
        assert unexpected == []


def hashes_on(web: Browser, selector: str) -> list[str]:
    return web.attrs(f"{selector} .card[data-hash]", "data-hash")


def test_without_a_key_every_page_is_the_401_login_page(web: Browser, cache: Cache):
    for path in ("/web/", "/web/browse", f"/web/image/{cache.original}", "/web/groups", "/web/search"):
        response = web.goto(path)
        assert response.status == 401, path
        assert web.page.locator("input[name=key]").count() == 1
    assert web.goto(f"/web/thumb/{cache.original}").status == 401
    assert web.goto(f"/web/raw/{cache.original}").status == 401
    web.goto("/web/login")
    web.page.fill("input[name=key]", "not-a-key-of-this-service")
    web.page.click("form[action$='/login'] button[type=submit]")
    assert "not valid" in web.page.inner_text("main")
    screenshot(web.page, "login")


def test_overview_shows_the_stores_figures(web: Browser, cache: Cache):
    web.login(READ_KEY)
    web.page.wait_for_selector("#total-images", timeout=60_000)  # "still counting" reloads itself
    store = cache.store()
    try:
        usage, days = store.usage(), dict(store.daily_counts(None, 30))
    finally:
        store.close()
    images = sum(u.images for u in usage)
    assert web.page.inner_text("#total-images") == f"{images:,}"
    assert web.page.inner_text("#total-exact") == f"{sum(u.exact_duplicates for u in usage):,}"
    assert web.page.inner_text("#total-near") == f"{sum(u.similar_duplicates for u in usage):,}"
    bars = web.page.eval_on_selector_all("#chart rect", "els => els.map(e => [e.dataset.day, +e.dataset.images])")
    assert len(bars) == 30
    assert {day: n for day, n in bars if n} == {d.isoformat(): n for d, n in days.items()}
    for u in usage:
        row = web.page.locator(f"tr.bucket[data-bucket='{u.bucket}'] td").all_inner_texts()
        assert row[2] == f"{u.images:,}" and row[4] == f"{u.urls:,}"
        shown = web.attrs(f"tr.client[data-bucket='{u.bucket}']", "data-client")
        assert shown == sorted(u.clients)
    assert web.page.inner_text(".scope") == "read only"
    screenshot(web.page, "overview")


def test_the_grid_pages_through_a_bucket_newest_first(web: Browser, cache: Cache):
    web.login(READ_KEY)
    web.goto("/web/browse?bucket=many")
    first = hashes_on(web, "#grid")
    assert first == list(reversed(cache.many))[:60]
    assert web.page.locator("#newer").count() == 0
    web.follow("#older")
    assert hashes_on(web, "#grid") == list(reversed(cache.many))[60:]
    assert web.page.locator("#older").count() == 0
    web.follow("#newer")
    assert hashes_on(web, "#grid") == first
    web.goto("/web/browse")  # the default bucket: photos, each thumbnail decoded by the browser
    store = cache.store()
    try:
        expected = [e.content_hash for e in store.browse(BrowseQuery(limit=60)).entries]
        pngs = [e.content_hash for e in store.browse(BrowseQuery(content_type="image/png")).entries]
    finally:
        store.close()
    assert hashes_on(web, "#grid") == expected
    web.page.wait_for_load_state("networkidle")
    assert all(width > 0 for width in web.thumbnails_shown()), web.thumbnails_shown()
    screenshot(web.page, "browse")
    web.page.select_option("select[name=format]", "image/png")  # the filters submit themselves
    web.page.wait_for_url(re.compile(r".*format=image%2Fpng.*"))
    assert hashes_on(web, "#grid") == pngs


def test_one_image_shows_its_facts_urls_and_near_duplicates(web: Browser, cache: Cache):
    web.login(READ_KEY)
    web.goto(f"/web/image/{cache.original}")
    store = cache.store()
    try:
        entry, urls = store.get_meta(cache.original), store.urls(cache.original)
        near = store.near_cached(cache.original, 8, "", 24)
    finally:
        store.close()
    assert web.page.inner_text("#content-hash") == entry.content_hash
    assert web.page.inner_text("#phash") == entry.perceptual_hash
    assert web.page.inner_text("#format") == entry.content_type
    assert web.page.get_attribute("#size", "data-bytes") == str(entry.file_size_bytes)
    assert web.page.inner_text("#dimensions") == f"{entry.width}x{entry.height}"
    assert web.texts("#urls .url") == [u.url for u in urls]
    assert web.page.evaluate("document.getElementById('picture').naturalWidth") == entry.width
    assert near and hashes_on(web, "#near") == [cache.original] + [e.content_hash for e in near]
    captions = web.texts("#near .caption")[1:]
    assert captions == [f"{e.match + ', ' if e.match else ''}distance {e.hamming_distance}" for e in near]
    assert set(cache.near.values()) <= set(hashes_on(web, "#near"))
    assert web.page.locator("#delete-form").count() == 0, "a read key sees nothing that writes"
    screenshot(web.page, "image")


def test_groups_are_the_groups_of_imgcache_dupes(web: Browser, cache: Cache):
    web.login(READ_KEY)
    web.goto("/web/groups")
    web.page.wait_for_selector("#group-count", timeout=60_000)  # the page reloads while grouping
    store = cache.store()
    try:
        expected = clusters(store, "", 8, 2)
    finally:
        store.close()
    assert web.page.inner_text("#group-count").startswith(f"{len(expected)} group(s)")
    for number, group in enumerate(expected, 1):
        shown = web.attrs(f"section.group[data-group='{number}'] .card", "data-hash")
        assert shown == [e.content_hash for _, e in group]
    assert expected[0][0][1].content_hash == cache.original
    screenshot(web.page, "groups")


def test_search_by_upload_finds_what_imgcache_similar_finds(web: Browser, cache: Cache, tmp_path: Path):
    web.login(READ_KEY)
    web.goto("/web/search")
    upload = tmp_path / "brighter.jpg"
    upload.write_bytes(cache.query)
    web.page.set_input_files("#file", str(upload))  # choosing a file submits the form
    web.page.wait_for_selector("#query-description")
    store = cache.store()
    try:
        expected = matches(store, inspected("uploaded file", "brighter.jpg", cache.query, store.inspector), 8, "", 60)
    finally:
        store.close()
    assert expected and hashes_on(web, "#matches") == [e.content_hash for e in expected]
    assert cache.original in hashes_on(web, "#matches")
    assert web.page.evaluate("document.querySelector('#query img').naturalWidth") > 0
    screenshot(web.page, "search")
    web.goto("/web/search?url=https://shop.example/img/mug.jpg")  # a cached URL
    assert set(cache.near.values()) <= set(hashes_on(web, "#matches"))


def test_urls_and_file_names_from_the_cache_are_inert(web: Browser, cache: Cache):
    web.login(READ_KEY)
    web.goto(f"/web/image/{cache.hostile}")
    assert web.page.inner_text("#filename") == HOSTILE_NAME
    hrefs = web.attrs("a[href]", "href")
    assert [h for h in hrefs if not re.match(r"^(/|https?:)", h)] == [], hrefs
    assert LEGACY_URL in web.texts("#urls .url") and HOSTILE_URL in web.texts("#urls .url")
    assert web.page.evaluate("document.scripts.length") == 1  # web.js alone
    assert web.page.locator("img[src=x]").count() == 0
    web.page.wait_for_load_state("networkidle")
    assert web.dialogs == []


def test_a_read_key_cannot_delete_and_a_write_key_can_with_its_token(web: Browser, cache: Cache):
    web.login(READ_KEY)
    form = {"csrf": "", "bucket": ""}
    refused = web.page.request.post(f"{cache.origin}/web/image/{cache.spare}/delete", form=form)
    assert refused.status == 403
    assert web.page.request.get(f"{cache.origin}/web/logout").status == 405  # only the form's POST logs out
    web.goto("/web/")
    web.follow("form[action$='/logout'] button")
    assert web.goto("/web/").status == 401
    web.login(WRITE_KEY)
    assert web.page.inner_text(".scope") == "read and write"
    no_token = web.page.request.post(f"{cache.origin}/web/image/{cache.spare}/delete", form=form)
    assert no_token.status == 403
    web.goto(f"/web/image/{cache.spare}")
    web.page.click("#delete-form button")  # confirmed in the dialog
    web.page.wait_for_url(re.compile(r".*/web/browse.*"))
    assert web.dialogs and "Delete" in web.dialogs[0]
    store = cache.store()
    try:
        assert store.get_meta(cache.spare) is None
    finally:
        store.close()


@pytest.mark.parametrize("path, ready", [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1:has-text('imgcache')")])
def test_api_docs_pages_render_offline(web: Browser, path: str, ready: str):
    web.goto(path)
    web.page.wait_for_selector(ready)
    web.page.get_by_text("/images/browse").first.wait_for()  # the operations are listed
    web.page.wait_for_load_state("networkidle")
    # ReDoc's attribution logo, which its page asks of cdn.redoc.ly, is refused by the CSP before any request
    blocked = [c for c in web.console if "Content Security Policy" in c]
    assert all("cdn.redoc.ly" in c for c in blocked), blocked
    web.console[:] = [c for c in web.console if c not in blocked]
