"""The spider and the measuring extension of the crawl benchmark's generated Scrapy project.

The spider reads the index page, follows every page (or its share of them: ``-a share=i/n``
for i in 0..n-1) and yields one dict item per page with the page's ``<img>`` URLs, which
either pipeline then fetches (with ``-a fetch=1`` it requests the images itself instead, and
no pipeline runs). :class:`BenchStats` times the crawl from ``spider_opened`` to
``spider_closed``, counts the image results the items came back with, samples the RSS four
times a second, and writes it all with the crawl's stats to ``BENCH_OUT`` as JSON.

CPU over the same interval, kept apart so that the cost shows where it is paid: the crawl
process (``time.process_time``), each of its threads (``/proc/self/task/TID/schedstat``,
named by the Python thread that runs on it and grouped by name: ``MainThread`` is the
reactor, ``asyncio`` the default executor that Scrapy's ``run_in_thread`` uses under the
asyncio reactor, ``PoolThread`` Twisted's pool), and every process below it, whatever it is
and whenever it started (the plugin's hashing workers today): read from ``/proc/PID/stat``
while it lives (with the CPU of the children it reaped), and from ``os.times``' children
fields once the crawl has reaped it. What those processes had used at ``spider_opened``
(their start-up imports) is not counted; nor, estimated from those, the start-up of
processes of the same command line started later (a worker started late or replaced: the
rest of its CPU counts).
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
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


def children_of(pid: int | str) -> list[int]:
    """The child processes of a process (of any of its threads); [] once it is gone."""
    pids: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return pids
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
        except OSError:
            pass
    return pids


def descendants() -> list[int]:
    """Every process below this one: its children, theirs, and so on, whatever they are (the
    plugin's workers, a pool's forkserver and the workers it forks, a resource tracker)."""
    found: list[int] = []
    todo = children_of("self")
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children_of(pid)
    return found


def thread_seconds(tid: int) -> float | None:
    """The CPU one of this process's threads has used; None once it is gone. From its
    ``schedstat`` (nanoseconds): ``stat`` counts in 10 ms ticks, each thread's cut down, and
    the threads a crawl starts (an executor's six) then add up to tens of ms less than the
    process's own count, which showed as threads that "ended" when none had."""
    try:
        with open(f"/proc/self/task/{tid}/schedstat") as fh:
            return int(fh.read().split()[0]) / 1e9
    except FileNotFoundError:
        pass
    except (OSError, IndexError, ValueError):
        return None
    try:  # a kernel without schedstat: ticks
        with open(f"/proc/self/task/{tid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def process_cpu(pid: int) -> tuple[tuple[int, int], float, int] | None:
    """A process's identity (pid, start time: a pid can be reused), its CPU seconds, its own
    (utime + stime) and that of the children it has reaped (cutime + cstime), so that a worker's
    own worker that ended is still counted, once, and its parent's pid; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (pid, int(fields[19])), sum(int(f) for f in fields[11:15]) / _TICK, int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def shape_of(pid: int, parent: int) -> str:
    """A process's parent and command line without its numbers (pids, file descriptors):
    processes of one shape are started the same way, so one's start-up tells another's. The
    parent is part of it: a process forked by a pool's server has the server's command line
    but none of its start-up."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            args = fh.read().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    return f"{parent}: " + " ".join(a for a in args if a and not a.isdigit())[:400]


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
        #: CPU at spider_opened of the threads that existed then; threads seen later start at 0
        self.thread_base: dict[int, float] = {}
        #: the last CPU reading of each thread, and the thread's group
        self.thread_cpu: dict[int, float] = {}
        self.thread_name: dict[int, str] = {}
        #: every process below the crawl's ever seen, by (pid, start time): its CPU at the last
        #: reading (its own and its reaped children's), its shape, and which were alive then
        self.kid_cpu: dict[tuple[int, int], float] = {}
        self.kid_shape: dict[tuple[int, int], str] = {}
        self.kid_live: set[tuple[int, int]] = set()
        #: the processes alive at spider_opened and their CPU then (their start-up)
        self.kid_base: dict[tuple[int, int], float] = {}
        self.tree0 = 0.0
        self.loop = task.LoopingCall(self.sample)
        crawler.signals.connect(self.opened, signal=signals.spider_opened)
        crawler.signals.connect(self.closed, signal=signals.spider_closed)
        crawler.signals.connect(self.scraped, signal=signals.item_scraped)
        crawler.signals.connect(self.received, signal=signals.response_received)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def opened(self, spider):
        self.tree0 = self.read_cpu()
        self.thread_base = dict(self.thread_cpu)
        self.kid_base = {k: self.kid_cpu[k] for k in self.kid_live}
        self.t0 = time.perf_counter()
        self.wall0 = time.time()
        self.cpu0 = time.process_time()  # the process's CPU to the nanosecond, all its threads
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

    def read_cpu(self) -> float:
        """Read the CPU of every live thread (threads that end keep their last reading) and of
        every process below this one, and return those processes' CPU so far: the live ones'
        (each with what it reaped) and the reaped ones' (os.times' children fields). Each
        process that ever ran below the crawl is in that sum once, whenever it started or
        ended: a worker started late or replaced is counted."""
        for thread in threading.enumerate():
            tid = thread.native_id
            if tid is not None:
                self.thread_name.setdefault(tid, thread_group(thread.name))
        for entry in os.listdir("/proc/self/task"):
            tid = int(entry)
            cpu = thread_seconds(tid)
            if cpu is not None:
                self.thread_cpu[tid] = cpu
                self.thread_name.setdefault(tid, "non-Python threads")
        reaped = os.times()  # before the tree: a child reaped in between is missed, not counted twice
        self.kid_live = set()
        total = reaped.children_user + reaped.children_system
        for pid in descendants():
            got = process_cpu(pid)
            if got is not None:
                key, cpu, parent = got
                self.kid_cpu[key] = cpu
                self.kid_live.add(key)
                if key not in self.kid_shape:
                    self.kid_shape[key] = shape_of(pid, parent)
                total += cpu
        return total

    def sample(self):
        tree = self.read_cpu()
        self.samples.append((self.images, rss_bytes(), sum(rss_bytes(pid) for pid, _ in self.kid_live)))
        return tree

    def startup_of_late_children(self) -> tuple[list[tuple[int, int]], float]:
        """The processes first seen after spider_opened, and their start-up, excluded as that of
        the processes alive at spider_opened is: each late one's is taken to be what a process
        of its shape had used by spider_opened (the median), at most what it used in all. A
        shape with none alive at spider_opened has no such measure: its start-up stays in."""
        late = [k for k in self.kid_cpu if k not in self.kid_base]
        by_shape: dict[str, list[float]] = {}
        for key, cpu in self.kid_base.items():
            by_shape.setdefault(self.kid_shape[key], []).append(cpu)
        startup = 0.0
        for key in late:
            ref = by_shape.get(self.kid_shape[key])
            if ref:
                startup += min(statistics.median(ref), self.kid_cpu[key])
        return late, startup

    def closed(self, spider, reason):
        elapsed = time.perf_counter() - self.t0
        own = time.process_time() - self.cpu0
        tree = self.sample()
        if self.loop.running:
            self.loop.stop()
        late, startup = self.startup_of_late_children()
        kids_all = tree - self.tree0
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
            "cpu_seconds": own + kids_all - startup,
            "crawl_cpu_seconds": own,
            "children_cpu_seconds": kids_all - startup,
            "children": {
                "cpu_seconds_with_late_startup": kids_all,
                "late_startup_excluded": startup,
                "seen": len(self.kid_cpu),
                "at_open": len(self.kid_base),
                "started_late": len(late),
                "ended": len(set(self.kid_cpu) - self.kid_live),
                "shapes": dict(Counter(self.kid_shape.values())),
            },
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
