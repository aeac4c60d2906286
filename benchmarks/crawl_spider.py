"""The spider and the measuring extension of the crawl benchmark's generated Scrapy project.

The spider reads the index page, follows every page (or its share of them: ``-a share=i/n``
for i in 0..n-1) and yields one dict item per page with the page's ``<img>`` URLs, which
either pipeline then fetches. :class:`BenchStats` times the crawl from ``spider_opened``
to ``spider_closed``, counts the image results the items came back with, samples the RSS
four times a second, and writes it all with the crawl's stats to ``BENCH_OUT`` as JSON.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections import Counter

import scrapy
from scrapy import signals
from twisted.internet import task

_PAGE = os.sysconf("SC_PAGE_SIZE")


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


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


class BenchStats:
    def __init__(self, crawler):
        self.crawler = crawler
        self.images = 0
        self.status: Counter[str] = Counter()
        self.duplicate: Counter[str] = Counter()
        self.samples: list[tuple[int, int, int]] = []
        self.loop = task.LoopingCall(self.sample)
        crawler.signals.connect(self.opened, signal=signals.spider_opened)
        crawler.signals.connect(self.closed, signal=signals.spider_closed)
        crawler.signals.connect(self.scraped, signal=signals.item_scraped)
        crawler.signals.connect(self.received, signal=signals.response_received)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def opened(self, spider):
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

    def sample(self):
        self.kids = set(getattr(self, "kids", set())) | set(children())
        self.samples.append((self.images, rss_bytes(), sum(rss_bytes(p) for p in self.kids)))

    def closed(self, spider, reason):
        elapsed = time.perf_counter() - self.t0
        cpu = os.times()
        self.sample()
        workers_cpu = sum(cpu_seconds(p) for p in self.kids)
        if self.loop.running:
            self.loop.stop()
        out = {
            "elapsed": elapsed,
            "start": self.wall0,
            "end": self.wall0 + elapsed,
            "images": self.images,
            "status": dict(self.status),
            "duplicate": dict(self.duplicate),
            "cpu_seconds": (cpu.user - self.cpu0.user) + (cpu.system - self.cpu0.system) + workers_cpu,
            "workers": len(self.kids),
            "workers_cpu_seconds": workers_cpu,
            "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "samples": self.samples,
            "finish_reason": reason,
            "stats": {k: v for k, v in self.crawler.stats.get_stats().items() if isinstance(v, (int, float, str))},
        }
        path = self.crawler.settings.get("BENCH_OUT")
        if path:
            with open(path, "w") as fh:
                json.dump(out, fh)
