"""The commands as a user runs them: ``python -m scrapy imgcache-…`` in a real Scrapy project.

The project's settings point IMGCACHE_URL at a SQLite file in a temporary folder; tests fill
the cache through :class:`SqlStore` in this process, then run the command in a subprocess
and read its exit code, stdout and stderr. HTML pages are opened in a headless Chromium.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from scrapy_imgcache.store.sql import SqlStore
from tests.forked import run_scrapy
from tests.helpers import distinct_images, encode, near_duplicates

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = os.environ.get("IMGCACHE_TEST_CHROMIUM", "/usr/bin/chromium")
#: a URL as a crawled page may hand over: it must come out as text, never as markup
HOSTILE_URL = 'https://evil.example/a.jpg?q="><img src=x onerror=alert(1)>&b=<script>alert(2)</script>'


@dataclass
class Project:
    """A Scrapy project folder whose cache is a SQLite file beside it."""

    root: Path

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.root / 'cache.sqlite3'}"

    @property
    def files(self) -> Path:
        return self.root / "files"

    def store(self) -> SqlStore:
        return SqlStore(self.db_url, str(self.files))

    @contextmanager
    def opened(self) -> Iterator[SqlStore]:
        """The project's cache, opened here as the commands open it there, closed after."""
        store = self.store()
        try:
            yield store
        finally:
            store.close()

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"}
        return run_scrapy(args, cwd=self.root, env=env, timeout=timeout)


@dataclass
class Filled:
    """What the ``filled`` fixture stored, to check the commands' answers against."""

    project: Project
    original: str  # content hash of photo A, stored first
    near: dict[str, str]  # variant name -> content hash of A's near-duplicates
    others: list[str]  # distinct photos in bucket ''
    twice: str  # photo B, stored at two URLs by two spiders (one exact duplicate)
    sizes: dict[str, int] = field(default_factory=dict)
    query_bytes: bytes = b""  # another near-duplicate of A, never stored
    other_bucket: str = ""  # the one image in bucket "other"


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "proj"
    (root / "imgproj").mkdir(parents=True)
    (root / "scrapy.cfg").write_text("[settings]\ndefault = imgproj.settings\n")
    (root / "imgproj" / "__init__.py").write_text("")
    proj = Project(root)
    (root / "imgproj" / "settings.py").write_text(
        f'BOT_NAME = "imgproj"\nIMGCACHE_URL = {proj.db_url!r}\nIMGCACHE_FILES_STORE = {str(proj.files)!r}\n'
    )
    return proj


@pytest.fixture
def filled(project: Project) -> Iterator[Filled]:
    """Bucket '': photo A and three near-duplicates, B at two URLs, C and D; bucket 'other': E."""
    a, b, c, d, e = distinct_images(5)
    variants = near_duplicates(a)
    with project.opened() as store:
        sizes: dict[str, int] = {}

        def put(data: bytes, url: str, client: str, bucket: str = "") -> str:
            result = store.put(data, url=url, client_name=client, bucket=bucket)
            sizes[result.entry.content_hash] = len(data)
            return result.entry.content_hash

        original = put(encode(a), "https://a.example/a.jpg", "spider_a")
        near = {
            "resized": put(variants["resized"], HOSTILE_URL, "spider_b"),
            "recompressed": put(variants["recompressed"], "https://b.example/a-small.jpg", "spider_b"),
            "cropped": put(variants["cropped"], "https://b.example/a-crop.jpg", "spider_b"),
        }
        twice = put(encode(b), "https://a.example/b.jpg", "spider_a")
        assert put(encode(b), "https://b.example/b-copy.jpg", "spider_b") == twice
        others = [
            put(encode(c), "https://a.example/c.jpg", "spider_a"),
            put(encode(d), "https://a.example/d.jpg", "spider_a"),
        ]
        other_bucket = put(encode(e), "https://a.example/e.jpg", "spider_a", bucket="other")
        yield Filled(project, original, near, others, twice, sizes, variants["brightened"], other_bucket)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no JSON lines printed"
    return [json.loads(line) for line in lines]


def assert_one_line_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The command failed with ``code`` and said why in one ``error:`` line, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# -- a real browser --------------------------------------------------------------------

_PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.map.call(document.images, function (i) {
    return {scheme: i.getAttribute("src").split(":")[0], complete: i.complete, width: i.naturalWidth};
  });
  var links = Array.prototype.map.call(document.links, function (a) { return a.textContent; });
  document.body.setAttribute("data-probe", JSON.stringify({images: imgs, links: links,
    scripts: document.scripts.length}));
});
</script>"""


@dataclass(frozen=True)
class Rendered:
    """What Chromium made of a page: its images (decoded or not), link texts, script count."""

    images: list[dict[str, Any]]
    links: list[str]
    scripts: int

    def assert_all_images_shown(self, count: int) -> None:
        assert len(self.images) == count, self.images
        for img in self.images:
            assert img["scheme"] == "data", img  # stand-alone: nothing fetched
            assert img["complete"] and img["width"] > 0, f"an image did not render: {img}"


def chromium_path() -> str:
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    message = f"{CHROMIUM} is missing (Debian package 'chromium')"
    if IN_CI:
        pytest.fail(message + "; CI=true: it must be installed")
    pytest.skip(message)


def render(page: Path, tmp_path: Path) -> Rendered:
    """Open a copy of ``page`` with a probe script in headless Chromium and read the probe's report."""
    browser = chromium_path()
    probe = tmp_path / f"probe-{page.name}"
    text = page.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    probe.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    shutil.rmtree(profile, ignore_errors=True)
    match = re.search(r'data-probe="([^"]*)"', proc.stdout)
    assert match, f"Chromium did not run the probe (exit {proc.returncode}): {proc.stderr[-2000:]}"
    data = json.loads(html.unescape(match.group(1)))
    # the probe itself is the only script: the page brings none
    return Rendered(data["images"], data["links"], data["scripts"] - 1)
