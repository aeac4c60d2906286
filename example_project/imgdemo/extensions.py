"""Writes a crawl's final stats to ``IMGDEMO_STATS_FILE`` (JSON), for the demo's summary."""

from __future__ import annotations

import json

from scrapy import signals


class StatsToFile:
    def __init__(self, crawler):
        self.crawler = crawler
        crawler.signals.connect(self.spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def spider_closed(self, spider, reason):
        path = self.crawler.settings.get("IMGDEMO_STATS_FILE")
        if not path:
            return
        stats = {k: v for k, v in self.crawler.stats.get_stats().items() if isinstance(v, (int, float, str))}
        stats["finish_reason"] = reason
        with open(path, "w") as fh:
            json.dump(stats, fh, indent=1, sort_keys=True)
