"""The HTML pages of ``imgcache-similar --html`` and ``imgcache-dupes --html`` link only to web
and file URLs: an image recorded at a ``javascript:``, ``data:`` or any other URL shows it as
text, never as an ``href`` a click would run."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sqlalchemy import update

from scrapy_imgcache.store.models import UrlRow

from .conftest import Filled

LINKABLE = re.compile(r"^(?:https?|file):", re.IGNORECASE)
#: recorded before the store refused such schemes (written here as an older version would have)
LEGACY = [
    "javascript:alert(document.domain)",
    "JaVaScRiPt:alert(1)",
    " javascript:alert(2)",
    "java\tscript:alert(3)",
    "vbscript:msgbox(4)",
    "data:text/html,<script>alert(5)</script>",
]
#: what the store records today and a page must still not link to
STORED = ["data:image/png;base64,iVBORw0KGgo=", "visualsnoop://0123456789abcdef/image/mine", "ftp://ftp.example/a.jpg"]
#: and what it links to, as before
LINKED = ["http://plain.example/a.jpg", "HTTPS://LOUD.EXAMPLE/A.JPG", "file:///srv/photos/a.jpg"]


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.hrefs += [value or "" for name, value in attrs if name in ("href", "xlink:href", "action", "formaction")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture
def odd(filled: Filled) -> None:
    """Two near-duplicates of A seen at the URLs above too (a card shows up to ten URLs)."""
    with filled.project.opened() as store:
        for url in STORED + LINKED:
            assert store.record_url(filled.near["cropped"], url=url, client_name="spider_c") is not None
        for i, url in enumerate(LEGACY):
            placeholder = f"https://placeholder.example/{i}.jpg"
            assert store.record_url(filled.near["recompressed"], url=placeholder, client_name="spider_c")
            with store.engine.begin() as conn:
                conn.execute(update(UrlRow).where(UrlRow.url == placeholder).values(url=url))


@pytest.mark.parametrize("command", ["imgcache-similar", "imgcache-dupes"])
def test_pages_link_only_to_web_and_file_urls(filled: Filled, odd: None, tmp_path: Path, command: str):
    page = tmp_path / "page.html"
    args = [filled.original] if command == "imgcache-similar" else []
    proc = filled.project.run(command, *args, "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    assert parser.hrefs, "the page links to the images' web URLs"
    assert [h for h in parser.hrefs if not LINKABLE.match(h)] == []
    assert {html.unescape(h) for h in parser.hrefs} >= set(LINKED)
    text = "".join(parser.text)
    for url in LEGACY + STORED:  # shown, as the text they are
        assert url in text, url
