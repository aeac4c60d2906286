"""Run real ``scrapy crawl`` processes in a generated Scrapy project, and read what they did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PLAIN_REACTOR = "twisted.internet.epollreactor.EPollReactor"


@dataclass
class Crawl:
    items: list[dict[str, Any]]
    stats: dict[str, Any]
    returncode: int
    log: str

    def stat(self, key: str) -> int:
        return int(self.stats.get(f"imgcache/{key}", 0))

    @property
    def images(self) -> list[dict[str, Any]]:
        return [img for item in self.items for img in item.get("images", [])]


def make_project(root: Path, settings: dict[str, Any]) -> Path:
    """A Scrapy project folder whose spiders are tests/crawl_spiders.py."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "scrapy.cfg").write_text("[settings]\ndefault = projsettings\n")
    base: dict[str, Any] = {
        "SPIDER_MODULES": ["tests.crawl_spiders"],
        "BOT_NAME": "imgcachetest",
        "ROBOTSTXT_OBEY": False,
        "LOG_LEVEL": "INFO",
        "TELNETCONSOLE_ENABLED": False,
        "EXTENSIONS": {"tests.crawl_spiders.Heartbeat": 0, "example_project.imgdemo.extensions.StatsToFile": 1000},
        "ADDONS": {"scrapy_imgcache.Addon": 0},
    }
    base.update(settings)
    lines = [f"{k} = {v!r}" for k, v in base.items()]
    (root / "projsettings.py").write_text("\n".join(lines) + "\n")
    return root


def start_crawl(project: Path, spider: str, *args: str, **spider_args: str) -> tuple[subprocess.Popen[str], Path, Path]:
    run = uuid.uuid4().hex[:8]
    items = project / f"items-{run}.jsonl"
    stats = project / f"stats-{run}.json"
    cmd = [sys.executable, "-m", "scrapy", "crawl", spider, "-O", f"{items}:jsonlines", "-s", f"IMGDEMO_STATS_FILE={stats}"]
    for k, v in spider_args.items():
        cmd += ["-a", f"{k}={v}"]
    cmd += list(args)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(project)])}
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, items, stats


def finish_crawl(proc: subprocess.Popen[str], items: Path, stats: Path, timeout: float = 180) -> Crawl:
    out, _ = proc.communicate(timeout=timeout)
    loaded = [json.loads(line) for line in items.read_text().splitlines()] if items.exists() else []
    st = json.loads(stats.read_text()) if stats.exists() else {}
    return Crawl(loaded, st, proc.returncode, out)


def crawl(project: Path, spider: str, *args: str, **spider_args: str) -> Crawl:
    return finish_crawl(*start_crawl(project, spider, *args, **spider_args))
