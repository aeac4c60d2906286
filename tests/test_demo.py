"""The README's demo, end to end, as a user runs it: its figures are what the demo site holds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.scrapy_api


def figure(output: str, label: str) -> int:
    match = re.search(rf"{re.escape(label)}\s+([\d,]+)", output)
    assert match, f"{label!r} missing from the summary"
    return int(match.group(1).replace(",", ""))


def test_demo_runs_and_its_summary_is_right():
    done = subprocess.run(
        [sys.executable, "-m", "example_project.demo"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr[-5000:]
    assert out.rstrip().endswith("demo: OK")
    assert figure(out, "image URLs seen") == 22
    assert figure(out, "stored once (distinct photos)") == 15
    assert figure(out, "exact duplicates") == 4
    assert figure(out, "near-duplicates found") == 4
    assert figure(out, "refused (broken/not image/bomb)") == 3
    assert figure(out, "bytes saved by dedupe") > 0
    assert figure(out, "served from the cache (no net)") == 9
    assert figure(out, "revalidated with 304") == 9
    assert figure(out, "unchanged images re-downloaded") == 0
    assert figure(out, "the changed image, new version") == 1
    assert "2 match(es)." in out and "/shop/img/4.jpg" in out
    sheet = Path(re.search(r"contact sheet (\S+)", out).group(1))
    assert sheet.is_file() and "data:image/" in sheet.read_text()
