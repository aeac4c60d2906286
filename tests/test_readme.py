"""The README stays true: its Python example runs, and every setting and stat is documented."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from scrapy_imgcache.config import DEFAULTS

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_the_store_example_runs(tmp_path):
    (example,) = [b for b in python_blocks() if "open_store" in b]
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    created, content_hash, phash = done.stdout.splitlines()[0].split()
    assert created == "True" and len(content_hash) == 64 and len(phash) == 16
    assert "('https://example.com/a.png', 0)" in done.stdout


def test_every_setting_is_documented():
    for name in DEFAULTS:
        assert f"| `{name}` |" in README, name


def test_every_stat_key_is_documented():
    sources = "".join(p.read_text() for p in (REPO / "scrapy_imgcache").glob("*.py"))
    keys = set(re.findall(r'ctx\.inc\(\s*f?"([a-z_/]+)', sources))
    assert keys, "no stat keys found in the sources"
    for key in keys:
        documented = f"`imgcache/{key}`" in README or (key.endswith("/") and f"`imgcache/{key}" in README)
        assert documented, key
