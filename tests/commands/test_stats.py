"""``scrapy imgcache-stats``: the figures are those of what was stored."""

from __future__ import annotations

import os

from tests.forked import run_scrapy

from .conftest import Filled, Project, assert_one_line_error, json_lines


def test_figures_match_what_was_stored(filled: Filled):
    with (
        filled.project.opened() as store
    ):  # a near-duplicate skipped by a third spider: a URL record with the bytes it saved
        store.record_url(
            filled.original,
            url="https://c.example/a-again.jpg",
            client_name="spider_c",
            duplicate="similar",
            saved_bytes=12345,
        )
    proc = filled.project.run("imgcache-stats", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {(r["bucket"], r["client"]): r for r in json_lines(proc.stdout)}
    size = filled.sizes
    main = [filled.original, *filled.near.values(), filled.twice, *filled.others]
    spider_a = [filled.original, filled.twice, *filled.others]
    assert rows[("", None)] == {
        "bucket": "",
        "client": None,
        "images": 7,
        "urls": 9,
        "bytes": sum(size[h] for h in main),
        "exact_duplicates": 1,
        "exact_bytes_saved": size[filled.twice],
        "similar_duplicates": 1,
        "similar_bytes_saved": 12345,
    }
    assert rows[("", "spider_a")]["images"] == 4
    assert rows[("", "spider_a")]["bytes"] == sum(size[h] for h in spider_a)
    assert rows[("", "spider_a")]["urls"] == 4
    assert rows[("", "spider_b")]["images"] == 3 and rows[("", "spider_b")]["urls"] == 4
    assert rows[("", "spider_b")]["exact_duplicates"] == 1
    assert rows[("", "spider_b")]["exact_bytes_saved"] == size[filled.twice]
    assert rows[("", "spider_c")]["images"] == 0 and rows[("", "spider_c")]["similar_bytes_saved"] == 12345
    assert rows[("other", None)]["images"] == 1 and rows[("other", None)]["bytes"] == size[filled.other_bucket]
    assert set(rows) == {
        ("", None),
        ("", "spider_a"),
        ("", "spider_b"),
        ("", "spider_c"),
        ("other", None),
        ("other", "spider_a"),
    }

    text = filled.project.run("imgcache-stats")
    assert text.returncode == 0
    lines = text.stdout.splitlines()
    assert lines[0].split()[:4] == ["BUCKET", "CLIENT", "IMAGES", "URLS"]
    assert any(line.startswith("''") and line.split()[2:4] == ["7", "9"] for line in lines)
    assert any(line.startswith("'other'") for line in lines)
    assert "8 image(s) in 2 bucket(s)" in text.stdout


def test_empty_cache(project: Project):
    project.store().close()
    proc = project.run("imgcache-stats")
    assert proc.returncode == 1
    assert proc.stdout.strip() == "The cache is empty."


def test_a_cache_that_is_not_there_is_an_error_and_is_not_created(project: Project, tmp_path):
    """A typo once created a cache, and folders, wherever it pointed, and said it was empty."""
    before = sorted(tmp_path.rglob("*"))
    for command in ("imgcache-stats", "imgcache-dupes", "imgcache-gc"):
        assert_one_line_error(project.run(command), 3, "there is no image cache", "cache.sqlite3")
    typo = project.run("imgcache-stats", "-s", f"IMGCACHE_URL=sqlite:///{tmp_path}/nonexistent-dir/x.sqlite3")
    assert_one_line_error(typo, 3, "nonexistent-dir does not exist")
    assert sorted(tmp_path.rglob("*")) == before


def test_outside_a_project_a_read_only_command_creates_nothing(tmp_path):
    """``scrapy imgcache-stats`` outside a project once made ``./.scrapy/`` and said the cache was empty."""
    env = {k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"}
    for command in ("imgcache-stats", "imgcache-dupes", "imgcache-gc"):
        proc = run_scrapy([command], cwd=tmp_path, env=env)
        assert_one_line_error(proc, 3, "there is no image cache", ".scrapy does not exist")
    assert list(tmp_path.iterdir()) == []
