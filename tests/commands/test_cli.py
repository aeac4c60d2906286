"""The commands as Scrapy commands: listed, cheap to list, and refusing a remote store in words."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.forked import scrapy_process
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
    proc = scrapy_process(
        ["imgcache-stats", "--json"],
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


#: (command and arguments with a mistyped option, the option named, the closest one suggested)
MISTYPED = [
    (("imgcache-stats", "--bucket", "x"), "--bucket", None),
    (("imgcache-stats", "--jsn"), "--jsn", "--json"),
    (("imgcache-dupes", "--min-sise", "3"), "--min-sise", "--min-size"),
    (("imgcache-dupes", "--min-sise=3"), "--min-sise", "--min-size"),
    (("imgcache-similar", "ffffffffffffffff", "--max-distanse", "4"), "--max-distanse", "--max-distance"),
    (("imgcache-import", "old", "--bukcet", "b"), "--bukcet", "--bucket"),
    (("imgcache-gc", "--dryrun"), "--dryrun", "--dry-run"),  # must not remove anything
    (("imgcache-collections", "list", "--jsn"), "--jsn", "--json"),
    (("imgcache-serve", "--prot", "9"), "--prot", "--port"),  # must not start serving
    (("imgcache-stats", "-x"), "-x", None),
    (("imgcache-verify", "--smaple", "3"), "--smaple", "--sample"),  # must not re-hash anything
]


def _imgcache_commands() -> set[str]:
    from importlib.metadata import entry_points

    return {e.name for e in entry_points(group="scrapy.commands") if e.name.startswith("imgcache-")}


def test_every_command_is_tried_with_a_mistyped_option():
    assert {args[0] for args, _, _ in MISTYPED} == _imgcache_commands()


@pytest.mark.parametrize(("args", "option", "closest"), MISTYPED, ids=[" ".join(a) for a, _, _ in MISTYPED])
def test_an_unknown_option_is_a_usage_error_naming_it(
    project: Project, args: tuple[str, ...], option: str, closest: str | None
):
    """``imgcache-gc --dryrun`` once ran the real gc, ``imgcache-stats --bucket x`` showed every
    bucket: Scrapy parses known options only and hands the rest over as arguments."""
    (project.root / "old").mkdir()
    (project.root / "old" / "a.jpg").write_bytes(distinct_jpegs(1)[0])
    with project.opened() as store:
        store.put(distinct_jpegs(2)[1], url="https://a.example/b.jpg", client_name="spider")
    before = sorted(p.relative_to(project.root) for p in project.root.rglob("*"))
    line = assert_one_line_error(project.run(*args, timeout=60), 2, f"unrecognized option {option}")
    assert (f"did you mean {closest}?" in line) == (closest is not None), line
    assert sorted(p.relative_to(project.root) for p in project.root.rglob("*")) == before
    with project.opened() as store:
        assert [e.url for e in store.images()] == ["https://a.example/b.jpg"]  # nothing imported


def test_a_double_dash_ends_the_options(project: Project):
    """A TARGET that starts with a dash is an argument after ``--``, as everywhere else."""
    with project.opened() as store:
        store.put(distinct_jpegs(1)[0], url="https://a.example/a.jpg", client_name="spider")
    (project.root / "-query.jpg").write_bytes(distinct_jpegs(1)[0])
    proc = project.run("imgcache-similar", "--max-distance", "0", "--", "-query.jpg")
    assert proc.returncode == 0, proc.stderr
    assert "Query: image file -query.jpg" in proc.stdout


def test_a_mistyped_setting_is_a_warning_naming_the_closest_known_one(project: Project):
    """``-s IMGCACHE_BUKET=shop`` showed every bucket without a word."""
    with project.opened() as store:
        store.put(distinct_jpegs(1)[0], url="https://a.example/a.jpg", client_name="spider")
    proc = project.run("imgcache-stats", "-s", "IMGCACHE_BUKET=shop", "-s", "IMGCACHE_SECRETS_KEY=" + "k" * 32)
    assert proc.returncode == 0, proc.stderr
    (warning,) = proc.stderr.splitlines()
    assert warning == (
        "imgcache-stats: warning: IMGCACHE_BUKET is not a scrapy-imgcache setting, so it is ignored; "
        "did you mean IMGCACHE_BUCKET?"
    )
