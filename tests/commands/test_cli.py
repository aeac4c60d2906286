"""The commands as Scrapy commands: listed, cheap to list, and refusing a remote store in words."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import Project, assert_one_line_error

COMMANDS = ("imgcache-similar", "imgcache-stats", "imgcache-dupes", "imgcache-import", "imgcache-gc")


def test_listed_in_a_project_with_help(project: Project):
    proc = project.run()
    assert proc.returncode == 0
    for name in COMMANDS:
        assert name in proc.stdout
    helped = project.run("imgcache-gc", "-h")
    assert helped.returncode == 0 and "--older-than DAYS" in helped.stdout and "--dry-run" in helped.stdout


def test_listing_them_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        f"mine = [e for e in entry_points(group='scrapy.commands') if e.name in {COMMANDS!r}]\n"
        "[e.load() for e in mine]\n"
        "heavy = [m for m in ('PIL', 'sqlalchemy', 'numpy', 'imagehash', 'tqdm') if m in sys.modules]\n"
        "print(sorted(e.name for e in mine), heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"{sorted(COMMANDS)} []"


@pytest.mark.parametrize("command", ["imgcache-dupes", "imgcache-gc"])
def test_database_commands_refuse_a_remote_store_in_one_line(project: Project, command: str):
    proc = project.run(command, "-s", "IMGCACHE_URL=http://127.0.0.1:9/")
    assert_one_line_error(proc, 2, "remote imgcache service", "http://127.0.0.1:9/")


def test_a_bad_setting_is_a_usage_error(project: Project):
    proc = project.run("imgcache-stats", "-s", "IMGCACHE_SIMILARITY_THRESHOLD=lots")
    assert_one_line_error(proc, 2, "IMGCACHE_SIMILARITY_THRESHOLD")
