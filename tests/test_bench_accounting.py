"""The crawl benchmark's CPU accounting (benchmarks/crawl_spider.py, ``BenchStats``) counts
every process below the crawl, whenever it starts or ends, and not their start-up: checked in a
real ``scrapy crawl`` whose extension runs child processes that burn known amounts of CPU,
each reporting what it burnt. Not a benchmark: nothing here depends on how fast the machine is,
only on the kernel's CPU counts agreeing with the processes' own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

# a stand-in for a worker: it burns STARTUP seconds of CPU (its imports), says "ready", then
# runs what it is told, answering with the CPU that took (its own, and its own children's)
KID = """\
import os, resource, subprocess, sys, time

def burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass

burn(float(sys.argv[1]))
print("ready", flush=True)
for line in sys.stdin:
    cmd, arg = line.split()
    t0, c0 = time.process_time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    if cmd == "exit":
        break
    if cmd == "burn":
        burn(float(arg))
    elif cmd == "fork":  # a copy of itself (its command line, none of its start-up) that burns
        child = os.fork()
        if child == 0:
            burn(float(arg))
            os._exit(0)
        os.waitpid(child, 0)
    else:  # spawn: a kid of its own that burns, waited for (its CPU is then this kid's children's)
        subprocess.run([sys.executable, __file__, "0"], input=f"burn {arg}\\nexit 0\\n", text=True,
                       stdout=subprocess.DEVNULL, check=True)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    print("done", time.process_time() - t0 + c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, flush=True)
"""

SPIDER = """\
import json, subprocess, sys, threading

import scrapy
from scrapy import signals
from scrapy.exceptions import DontCloseSpider

KID = {kid!r}
STARTUP = "0.3"


class Kids:
    \"\"\"One kid started before spider_opened; during the crawl: one started late (which starts
    one of its own and forks another, and reaps them), the first one ending (reaped by the crawl), a replacement.\"\"\"

    def __init__(self, crawler):
        self.done = False
        self.out = crawler.settings.get("KIDS_OUT")
        self.early = self.start()
        crawler.signals.connect(self.opened, signal=signals.spider_opened)
        crawler.signals.connect(self.idle, signal=signals.spider_idle)

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def start(self):
        kid = subprocess.Popen([sys.executable, KID, STARTUP], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert kid.stdout.readline().strip() == "ready"
        return kid

    def ask(self, kid, command):
        kid.stdin.write(command + "\\n")
        kid.stdin.flush()
        return float(kid.stdout.readline().split()[1])

    def opened(self, spider):
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        try:
            self.steps()
        finally:
            self.done = True  # the kids left stay alive, idle, until the crawl exits

    def steps(self):
        work = [self.ask(self.early, "burn 0.3")]
        late = self.start()
        work += [self.ask(late, "burn 0.2"), self.ask(late, "spawn 0.2"), self.ask(late, "fork 0.4")]
        self.early.stdin.write("exit 0\\n")
        self.early.stdin.flush()
        self.early.wait()
        replacement = self.start()
        work.append(self.ask(replacement, "burn 0.2"))
        with open(self.out, "w") as fh:
            json.dump({{"work": work}}, fh)

    def idle(self, spider):
        if not self.done:
            raise DontCloseSpider


class KidsSpider(scrapy.Spider):
    name = "kids"

    async def start(self):
        return
        yield
"""


def test_every_process_below_the_crawl_is_counted_without_its_start_up(tmp_path: Path) -> None:
    (tmp_path / "kid.py").write_text(KID)
    (tmp_path / "kids_spider.py").write_text(SPIDER.format(kid=str(tmp_path / "kid.py")))
    (tmp_path / "scrapy.cfg").write_text("[settings]\ndefault = kids_settings\n")
    settings = {
        "SPIDER_MODULES": ["kids_spider"],
        "EXTENSIONS": {"benchmarks.crawl_spider.BenchStats": 0, "kids_spider.Kids": 1},
        "TELNETCONSOLE_ENABLED": False,
        "BENCH_OUT": str(tmp_path / "bench.json"),
        "KIDS_OUT": str(tmp_path / "kids.json"),
    }
    (tmp_path / "kids_settings.py").write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "crawl", "kids"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    bench = json.loads((tmp_path / "bench.json").read_text())
    work = json.loads((tmp_path / "kids.json").read_text())["work"]
    kids = bench["children"]
    # what the kids burnt after spider_opened, the late ones' and the grandchildren's included;
    # none of the 0.3 s start-ups (the spawned grandchild's interpreter start is work: nothing
    # of its shape was there at spider_opened to measure it by; the forked one has the kids'
    # command line and none of their start-up, and must not lose one). /proc counts in 10 ms ticks, each reading of
    # each process cut down to one, and an interpreter starts and stops in some ms more or less
    # from one kid to the next: 0.1 s in all, half of the smallest amount a mistake would add
    # or lose (a kid's 0.2 s; counting a start-up adds 0.3)
    assert bench["children_cpu_seconds"] == pytest.approx(sum(work), abs=0.1), (kids, work)
    assert kids["at_open"] == 1
    assert kids["started_late"] >= 2  # the late kid and the replacement (the grandchild if a reading saw it)
    assert kids["ended"] >= 1  # the early kid
    # the late kids' start-ups: 0.3 s each and their interpreter's start (tens of ms)
    assert 2 * 0.3 <= kids["late_startup_excluded"] <= 2 * (0.3 + 0.2), kids
    assert bench["cpu_seconds"] == pytest.approx(bench["crawl_cpu_seconds"] + bench["children_cpu_seconds"])
