"""The spider and the measuring extension of the crawl benchmark's generated Scrapy project.

The spider reads the index page, follows every page (or its share of them: ``-a share=i/n``
for i in 0..n-1) and yields one dict item per page with the page's ``<img>`` URLs, which
either pipeline then fetches (with ``-a fetch=1`` it requests the images itself instead, and
no pipeline runs). :class:`BenchStats` times the crawl from ``spider_opened`` to
``spider_closed``, counts the image results the items came back with, samples the RSS four
times a second, and writes it all with the crawl's stats to ``BENCH_OUT`` as JSON.

CPU over the same interval, kept apart so that the cost shows where it is paid: the crawl
process (``os.times``), each of its threads (``/proc/self/task/TID/stat``, named by the
Python thread that runs on it and grouped by name: ``MainThread`` is the reactor,
``asyncio`` the default executor that Scrapy's ``run_in_thread`` uses under the asyncio
reactor, ``PoolThread`` Twisted's pool), and its child processes (the plugin's hashing
workers; multiprocessing's resource tracker, when a version that used it runs), read from
``/proc/PID/stat`` while they live and from ``os.times``' children fields once they are reaped.
"""

from __future__ import annotations

import json
import os
import re
import resource
import threading
import time
from collections import Counter

import scrapy
from scrapy import signals
from twisted.internet import task

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


class BenchSpider(scrapy.Spider):
    name = "bench"

    def __init__(self, start: str = "", share: str = "0/1", fetch: str = "0", **kw):
        super().__init__(**kw)
        self.start_urls = [start]
        self.share, self.of = (int(x) for x in share.split("/"))
        self.fetch = fetch == "1"  # download the images in the spider, no pipeline: Scrapy's own floor

    def parse(self, response):
        for k, href in enumerate(response.css("a::attr(href)").getall()):
            if k % self.of == self.share:
                yield response.follow(href, self.parse_page)

    def parse_page(self, response):
        urls = [response.urljoin(s) for s in response.css("img::attr(src)").getall()]
        if self.fetch:
            for url in urls:
                yield scrapy.Request(url, self.parse_image, meta={"bench_image": True})
        else:
            yield {"page": response.url, "image_urls": urls}

    def parse_image(self, response):
        return None


def rss_bytes(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        return 0


def children() -> list[int]:
    """This process's child processes (the plugin's hashing workers)."""
    pids: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
        except OSError:
            pass
    return pids


def cpu_seconds(pid: int | str, task: int | None = None) -> float | None:
    """User + system CPU of a process (or of one of its threads); None once it is gone."""
    path = f"/proc/{pid}/stat" if task is None else f"/proc/{pid}/task/{task}/stat"
    try:
        with open(path) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def kind_of(pid: int) -> str:
    """What a child process is, from its command line."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return "gone"
    return "resource_tracker" if "resource_tracker" in cmd else "worker"


def thread_group(name: str) -> str:
    """``asyncio_3`` -> ``asyncio``, ``PoolThread-twisted.internet.reactor-1`` -> ``PoolThread``."""
    if name.startswith("PoolThread"):
        return "PoolThread"
    return re.sub(r"[-_]?\d+(_\d+)?$", "", name) or name


class BenchStats:
    def __init__(self, crawler):
        self.crawler = crawler
        self.images = 0
        self.status: Counter[str] = Counter()
        self.duplicate: Counter[str] = Counter()
        self.samples: list[tuple[int, int, int]] = []
        self.kids: set[int] = set()
        #: CPU at spider_opened of what existed then; threads and children seen later start at 0
        self.thread_base: dict[int, float] = {}
        self.kid_base: dict[int, float] = {}
        #: the last CPU reading of each thread and child, and the thread's group
        self.thread_cpu: dict[int, float] = {}
        self.thread_name: dict[int, str] = {}
        self.kid_cpu: dict[int, float] = {}
        self.kid_kind: dict[int, str] = {}
        self.loop = task.LoopingCall(self.sample)
        crawler.signals.connect(self.opened, signal=signals.spider_opened)
        crawler.signals.connect(self.closed, signal=signals.spider_closed)
        crawler.signals.connect(self.scraped, signal=signals.item_scraped)
        crawler.signals.connect(self.received, signal=signals.response_received)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def opened(self, spider):
        self.read_cpu()
        self.thread_base = dict(self.thread_cpu)
        self.kid_base = dict(self.kid_cpu)
        self.t0 = time.perf_counter()
        self.wall0 = time.time()
        self.cpu0 = os.times()
        self.loop.start(0.25)

    def scraped(self, item, spider):
        for result in item.get("images") or []:
            self.images += 1
            self.status[str(result.get("status"))] += 1
            self.duplicate[str(result.get("duplicate"))] += 1

    def received(self, response, request, spider):
        if request.meta.get("bench_image") and response.status == 200:
            self.images += 1
            self.status["fetched"] += 1

    def read_cpu(self) -> None:
        """The CPU of every live thread and child so far (threads that end keep their last reading)."""
        for thread in threading.enumerate():
            tid = thread.native_id
            if tid is not None:
                self.thread_name.setdefault(tid, thread_group(thread.name))
        for entry in os.listdir("/proc/self/task"):
            tid = int(entry)
            cpu = cpu_seconds("self", tid)
            if cpu is not None:
                self.thread_cpu[tid] = cpu
                self.thread_name.setdefault(tid, "non-Python threads")
        self.kids |= set(children())
        for pid in self.kids:
            cpu = cpu_seconds(pid)
            if cpu is not None:
                self.kid_cpu[pid] = cpu
                self.kid_kind.setdefault(pid, kind_of(pid))

    def sample(self):
        self.read_cpu()
        self.samples.append((self.images, rss_bytes(), sum(rss_bytes(p) for p in self.kids)))

    def closed(self, spider, reason):
        elapsed = time.perf_counter() - self.t0
        cpu = os.times()
        self.sample()
        if self.loop.running:
            self.loop.stop()
        own = (cpu.user - self.cpu0.user) + (cpu.system - self.cpu0.system)
        # children still alive: their /proc reading; reaped ones: os.times' children fields
        alive = {pid for pid in self.kids if cpu_seconds(pid) is not None}
        reaped = (cpu.children_user - self.cpu0.children_user) + (cpu.children_system - self.cpu0.children_system)
        by_kind: Counter[str] = Counter()
        for pid in alive:
            by_kind[self.kid_kind.get(pid, "worker")] += self.kid_cpu.get(pid, 0.0) - self.kid_base.get(pid, 0.0)
        by_kind["reaped"] += reaped
        kids_cpu = sum(by_kind.values())
        threads: Counter[str] = Counter()
        for tid, value in self.thread_cpu.items():
            threads[self.thread_name.get(tid, "non-Python threads")] += value - self.thread_base.get(tid, 0.0)
        # threads that ended between two readings: what the process counted and no thread did
        threads["ended threads"] = max(0.0, own - sum(threads.values()))
        out = {
            "elapsed": elapsed,
            "start": self.wall0,
            "end": self.wall0 + elapsed,
            "images": self.images,
            "status": dict(self.status),
            "duplicate": dict(self.duplicate),
            "cpu_seconds": own + kids_cpu,
            "crawl_cpu_seconds": own,
            "workers": sum(1 for pid in self.kids if self.kid_kind.get(pid) == "worker"),
            "workers_cpu_seconds": kids_cpu,
            "children_cpu_seconds": dict(by_kind),
            "threads_cpu_seconds": dict(threads),
            "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "samples": self.samples,
            "finish_reason": reason,
            "stats": {k: v for k, v in self.crawler.stats.get_stats().items() if isinstance(v, (int, float, str))},
        }
        path = self.crawler.settings.get("BENCH_OUT")
        if path:
            with open(path, "w") as fh:
                json.dump(out, fh)
