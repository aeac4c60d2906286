"""What an engine worker's start costs: a fresh process that opens a cache and stores one photo.

    ./dev bench startup                  # the work tree, 10 runs
    ./dev bench startup --at REV         # paired with the package as committed at REV

Every crawl starts its workers afresh (two by default), so what a worker imports and does
before its first image is paid at every crawl. Each run is a new Python process that imports
the store, opens a new SQLite cache, inspects one 800x600 JPEG (robust mode, the default) and
stores it: CPU seconds (user + system) as the operating system counts the finished child,
median of the runs. With ``--at``, the two versions run in turn (A B A B ...) so that a drift
of the machine's speed moves both, and the ratio is taken pair by pair.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.machine import archive, machine, machine_line  # noqa: E402
from example_project.photos import encode, photo  # noqa: E402

#: run in the child, with the package's folder first on sys.path: argv = folder, photo
CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from scrapy_imgcache.hashing import Inspector
from scrapy_imgcache.store import open_store
data = open(sys.argv[2], "rb").read()
store = open_store(f"sqlite:///{sys.argv[3]}/cache.sqlite3", files_store=f"{sys.argv[3]}/files")
store.put(data, url="https://x.example/a.jpg", client_name="bench", info=Inspector().inspect(data))
store.close()
"""


def one_run(code: Path, image: Path) -> tuple[float, float]:
    """(CPU s, wall s) of one fresh process."""
    with tempfile.TemporaryDirectory() as folder:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", CHILD, str(code), str(image), folder], check=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--at", metavar="REV", help="also run the package as committed at REV, in turn with the work tree")
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    at_start = machine(("pillow", "imagehash", "numpy", "scipy", "sqlalchemy"))
    with tempfile.TemporaryDirectory() as scratch:
        image = Path(scratch) / "photo.jpg"
        image.write_bytes(encode(photo("coffee").convert("RGB").resize((800, 600))))
        versions = {"work tree": REPO}
        if args.at:
            sha = archive(REPO, args.at, Path(scratch) / "at")
            versions = {f"at {sha}": Path(scratch) / "at", **versions}
        for code in versions.values():  # a warm-up run each: the .pyc files are written once
            one_run(code, image)
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in versions}
        for _ in range(args.runs):
            for name, code in versions.items():
                runs[name].append(one_run(code, image))
    print(machine_line(at_start))
    print(f"\n{args.runs} runs each: a fresh process opens a new SQLite cache and stores one 800x600 JPEG\n")
    print("| code | CPU s, median (min-max) | wall s, median |")
    print("|---|--:|--:|")
    for name, got in runs.items():
        cpu = [c for c, _ in got]
        print(
            f"| {name} | {statistics.median(cpu):.2f} ({min(cpu):.2f}-{max(cpu):.2f}) | "
            f"{statistics.median(w for _, w in got):.2f} |"
        )
    if args.at:
        old, new = runs.values()
        ratios = [n[0] / o[0] for o, n in zip(old, new, strict=True)]
        print(f"\nwork tree / {next(iter(runs))}, CPU, median of pairs: **{statistics.median(ratios):.2f}**")


if __name__ == "__main__":
    main()
