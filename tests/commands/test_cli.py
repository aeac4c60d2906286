"""The commands as Scrapy commands: listed, cheap to list, and refusing a remote store in words."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import distinct_jpegs

from .conftest import Project, assert_one_line_error

pytestmark = pytest.mark.scrapy_api  # Scrapy's command API: also run against the oldest Scrapy supported

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


@pytest.mark.parametrize("command", [("imgcache-collections", "list"), ("imgcache-serve",)])
def test_database_commands_refuse_a_remote_store_in_one_line(project: Project, command: tuple[str, ...]):
    """Collections live in the cache's database, and a service serves a database."""
    proc = project.run(command[0], "-s", "IMGCACHE_URL=http://127.0.0.1:9/", *command[1:])
    assert_one_line_error(proc, 2, "remote imgcache service", "http://127.0.0.1:9/")


def test_a_bad_setting_is_a_usage_error(project: Project):
    proc = project.run("imgcache-stats", "-s", "IMGCACHE_SIMILARITY_THRESHOLD=lots")
    assert_one_line_error(proc, 2, "IMGCACHE_SIMILARITY_THRESHOLD")


def test_a_reader_that_goes_away_is_no_traceback(project: Project):
    """``scrapy imgcache-stats --json | head -1`` on a big report: the pipe closes before the end."""
    with project.opened() as store:
        for i, data in enumerate(distinct_jpegs(3)):
            store.put(data, url=f"https://a.example/{i}.jpg", client_name=f"spider_{i}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "scrapy", "imgcache-stats", "--json"],
        cwd=project.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # gone before the command writes a byte
    err = proc.stderr.read()
    proc.wait(60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_database_or_file_that_cannot_be_opened_is_one_line_and_exit_3(project: Project, tmp_path):
    nowhere = tmp_path / "a-file"  # no folder can be made where a file is
    nowhere.write_text("")
    proc = project.run("imgcache-stats", "-s", f"IMGCACHE_URL=sqlite:///{nowhere / 'cache.sqlite3'}")
    assert_one_line_error(proc, 3)
    with project.opened() as store:
        store.put(distinct_jpegs(1)[0], url="https://a.example/0.jpg", client_name="spider")
    page = nowhere / "sheet.html"
    proc = project.run("imgcache-dupes", "--max-distance", "32", "--min-size", "1", "--html", str(page))
    assert_one_line_error(proc, 3, str(page))
