"""Crawls as users run them, with hashing workers on: Scrapy's documented "run from a script"
example without an ``if __name__ == "__main__":`` guard, Ctrl-C, SIGTERM, kill -9, and workers
that cannot start. Each crawl is a real ``python script.py`` against the test web site, in a
session of its own so that a hang guard can kill all of it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.helpers import (
    REPO,
    Site,
    broken_worker_start,
    children_of,
    distinct_jpegs,
    open_cache,
    running,
    wait_until,
    worker_processes_of,
)

pytestmark = [
    pytest.mark.scrapy_api,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

HANG_GUARD = 120  # seconds; these crawls take a few


# Scrapy's "Run Scrapy from a script" example (docs/topics/practices.rst), with the spiders
# filled in and a line that counts how often the script's body runs
SCRIPT = """\
import scrapy
from scrapy.crawler import CrawlerProcess

with open("ran.txt", "a") as fh:
    fh.write("ran\\n")


class MySpider1(scrapy.Spider):
    name = "first"
    start_urls = [{first!r}]

    def parse(self, response):
        yield {{"image_urls": [response.urljoin(src) for src in response.css("img::attr(src)").getall()]}}


class MySpider2(MySpider1):
    name = "second"
    start_urls = [{second!r}]


{main}"""

MAIN = """\
process = CrawlerProcess(settings={settings!r})
{crawls}
process.start()  # the script will block here until the crawling is finished
"""


def write_script(folder: Path, site: Site, spiders: int = 1, guarded: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "FEEDS": {"items-%(name)s.json": {"format": "json"}},
        "ADDONS": {"scrapy_imgcache.Addon": 0},
        "IMGCACHE_URL": f"sqlite:///{folder / 'cache.sqlite3'}",
        "IMGCACHE_FILES_STORE": str(folder / "files"),
        "IMAGES_STORE": str(folder / "images"),
        "IMGCACHE_HASH_PROCESSES": 2,
        "LOG_LEVEL": "INFO",
        "TELNETCONSOLE_ENABLED": False,
    }
    crawls = "\n".join(f"process.crawl(MySpider{i + 1})" for i in range(spiders))
    main = MAIN.format(settings=settings, crawls=crawls)
    if guarded:
        main = 'if __name__ == "__main__":\n' + textwrap.indent(main, "    ")
    script = folder / "script.py"
    script.write_text(SCRIPT.format(first=site.url("/first"), second=site.url("/second"), main=main))
    return script


class ScriptRun:
    """``python script.py`` in its own session, its output read as it comes; leaving the
    ``with`` block kills what is left of it."""

    def __init__(self, script: Path, env: dict[str, str] | None = None) -> None:
        env = {**os.environ, **(env or {})}
        env["PYTHONPATH"] = os.pathsep.join(p for p in [env.get("PYTHONPATH", ""), str(REPO)] if p)
        self.folder = script.parent
        self.proc = subprocess.Popen(
            [sys.executable, script.name],
            cwd=self.folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def __enter__(self) -> ScriptRun:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def finish(self) -> str:
        """Its output once it exited; killed with all of its session, and a failure, if it hangs."""
        try:
            self.proc.wait(HANG_GUARD)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.reader.join(30)
            pytest.fail(f"the crawl hung: killed after {HANG_GUARD} s\n{self.output[-4000:]}")
        self.reader.join(HANG_GUARD)
        return self.output

    def fetching(self, site: Site, path: str) -> list[int]:
        """Wait until the crawl is fetching ``path`` with its workers running; their pids (all
        the crawl's child processes: so it was before, when multiprocessing started them)."""
        wait_until(
            lambda: self.proc.poll() is not None or (site.hits[path] and len(children_of(self.proc.pid)) >= 2),
            "the crawl to fetch " + path,
            HANG_GUARD,
        )
        assert self.proc.poll() is None, self.output[-4000:]
        return children_of(self.proc.pid)

    def runs(self) -> int:
        return len((self.folder / "ran.txt").read_text().splitlines())


def serve_photos(site: Site) -> dict[str, list[str]]:
    """Four distinct photos on /first, four more on /second."""
    photos = distinct_jpegs(8)
    pages: dict[str, list[str]] = {"/first": [], "/second": []}
    for i, data in enumerate(photos):
        page = "/first" if i < 4 else "/second"
        pages[page].append(site.image(f"/i/{i}.jpg", data))
        site.page(page, [f"/i/{j}.jpg" for j in range(8) if (j < 4) == (page == "/first")])
    return pages


def hold_an_image(site: Site) -> threading.Event:
    """/first's page gets one more image, answered only once the returned event is set."""
    release = threading.Event()
    site.image("/i/held.jpg", distinct_jpegs(9)[8], hold=release)
    site.page("/first", [f"/i/{j}.jpg" for j in range(4)] + ["/i/held.jpg"])
    return release


def assert_crawled(folder: Path, names: list[str], pages: dict[str, list[str]]) -> None:
    """Each spider's one item has all its images, in the cache and in IMAGES_STORE."""
    stored = 0
    for name in names:
        (item,) = json.loads((folder / f"items-{name}.json").read_text())
        assert [img["url"] for img in item["images"]] == pages[f"/{name}"]
        for img in item["images"]:
            assert img["cache"] == "miss" and img["content_hash"]
            assert (folder / "images" / img["path"]).is_file()
        stored += len(item["images"])
    store = open_cache(folder)
    try:
        assert len(list(store.images())) == stored
    finally:
        store.close()


@pytest.mark.parametrize("spiders", [1, 2], ids=["one_spider", "two_spiders"])
def test_an_unguarded_script_crawls_with_workers_and_runs_once(site, tmp_path, spiders):
    pages = serve_photos(site)
    with ScriptRun(write_script(tmp_path, site, spiders=spiders)) as run:
        out = run.finish()
    assert run.proc.returncode == 0, out[-4000:]
    assert run.runs() == 1  # the workers did not run the script again
    assert_crawled(tmp_path, ["first", "second"][:spiders], pages)
    assert out.count("Spider closed (finished)") == spiders
    assert "could not start" not in out  # hashed by the workers, not by the fallback
    assert "Traceback" not in out


def test_sigterm_stops_an_unguarded_script_crawl(site, tmp_path):
    serve_photos(site)
    release = hold_an_image(site)
    with ScriptRun(write_script(tmp_path, site)) as run:
        try:
            workers = run.fetching(site, "/i/held.jpg")
            run.proc.send_signal(signal.SIGTERM)
            wait_until(lambda: "Received SIGTERM" in run.output, "Scrapy to take the SIGTERM", HANG_GUARD)
        finally:
            release.set()  # the request in flight ends; Scrapy's graceful shutdown waits for it
        out = run.finish()
    assert run.proc.returncode == 0, out[-4000:]
    assert "Spider closed (shutdown)" in out
    assert "Traceback" not in out
    assert run.runs() == 1
    assert not any(running(pid) for pid in workers)  # closed when the crawl exited


@pytest.mark.parametrize("guarded", [False, True], ids=["unguarded", "guarded"])
def test_ctrl_c_stops_the_crawl_and_no_worker_prints_a_traceback(site, tmp_path, guarded):
    serve_photos(site)
    release = hold_an_image(site)
    with ScriptRun(write_script(tmp_path, site, guarded=guarded)) as run:
        try:
            workers = run.fetching(site, "/i/held.jpg")
            os.killpg(run.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
            wait_until(lambda: "Received SIGINT" in run.output, "Scrapy to take the SIGINT", HANG_GUARD)
        finally:
            release.set()
        out = run.finish()
    assert run.proc.returncode == 0, out[-4000:]
    assert "Spider closed (shutdown)" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-4000:]
    assert not any(running(pid) for pid in workers)


def test_the_workers_of_a_killed_crawl_are_gone_shortly_after(site, tmp_path):
    serve_photos(site)
    release = hold_an_image(site)
    with ScriptRun(write_script(tmp_path, site)) as run:
        try:
            workers = run.fetching(site, "/i/held.jpg")
            assert sorted(workers) == sorted(worker_processes_of(run.proc.pid)) and len(workers) == 2
            run.proc.kill()  # kill -9: no atexit, no goodbye
            run.proc.wait(HANG_GUARD)
            wait_until(lambda: not any(running(pid) for pid in workers), "the workers to go", HANG_GUARD)
        finally:
            release.set()


def test_a_crawl_whose_workers_cannot_start_hashes_in_threads_after_one_warning(site, tmp_path):
    pages = serve_photos(site)
    with ScriptRun(write_script(tmp_path, site), env=broken_worker_start(tmp_path / "site", "die")) as run:
        out = run.finish()
    assert run.proc.returncode == 0, out[-4000:]
    (line,) = [ln for ln in out.splitlines() if "could not start" in ln]
    assert "[scrapy_imgcache.engine.client] WARNING:" in line
    assert "exited with status 3 before it was ready" in line
    assert "the cache's work runs in threads instead" in line
    assert_crawled(tmp_path, ["first"], pages)
    assert "Traceback" not in out
    assert run.runs() == 1
