"""The machine a benchmark ran on, as its report records it (shared by the benchmarks)."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def machine(libraries: Sequence[str]) -> dict[str, str]:
    """Cores and CPU model, Python, platform, the versions of ``libraries``, the image codecs,
    and the load average at the start (a shared machine's figures are read against it)."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    libs = []
    for lib in libraries:
        try:
            libs.append(f"{lib} {version(lib)}")
        except PackageNotFoundError:
            libs.append(f"{lib} absent")
    info = {
        "cpu": f"{os.cpu_count()} cores, {cpu}",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": ", ".join(libs),
        "load_average_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    try:
        from PIL import features

        info["codecs"] = f"libjpeg {features.version('jpg')}, libwebp {features.version('webp')}, zlib " + str(
            features.version("zlib")
        )
    except Exception:  # noqa: BLE001 - a version we cannot read is reported as unknown
        pass
    return info


def machine_line(m: dict[str, str]) -> str:
    return (
        f"{m['cpu']}; Python {m['python']}; {m['platform']}; {m['libraries']}; {m.get('codecs', '')}; "
        f"load average at start {m['load_average_at_start']}"
    )


def git_state(repo: Path) -> tuple[str, list[str]] | None:
    """The short commit checked out in ``repo`` and the package files changed in its work tree
    (None without git)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "scrapy_imgcache"], cwd=repo, capture_output=True, text=True
        )
    except OSError:
        return None
    return head.stdout.strip(), [line[3:] for line in dirty.stdout.splitlines()]


def archive(repo: Path, rev: str, into: Path) -> str:
    """The package as committed at ``rev`` in ``repo``, extracted under ``into``; the commit it names."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", f"{rev}^{{commit}}"], cwd=repo, capture_output=True, text=True, check=True
    ).stdout.strip()
    into.mkdir(parents=True)
    tar = subprocess.run(["git", "archive", sha, "scrapy_imgcache"], cwd=repo, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
    return sha
