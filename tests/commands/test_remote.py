"""The commands against a real ``imgcache-server`` process: IMGCACHE_URL names the service.

The service runs over the project's own database and files, so what the commands answer
through the REST API can be compared with what they answer from the database directly.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from scrapy_imgcache.server.process import free_port
from tests.forked import imgcache_server
from tests.helpers import distinct_images, encode

from .conftest import Filled, assert_one_line_error, json_lines, render


@pytest.fixture
def service(filled: Filled) -> Iterator[str]:
    with imgcache_server(filled.project.db_url, filled.project.root) as server:
        assert server.files == filled.project.files
        yield server.url


def test_similar_through_the_service(filled: Filled, service: str, tmp_path):
    query = tmp_path / "query.jpg"
    query.write_bytes(filled.query_bytes)
    page = tmp_path / "sheet.html"
    proc = filled.project.run(
        "imgcache-similar", str(query), "--json", "--html", str(page), "-s", f"IMGCACHE_URL={service}"
    )
    assert proc.returncode == 0, proc.stderr
    rows = json_lines(proc.stdout)
    assert {r["content_hash"] for r in rows} == {filled.original, *filled.near.values()}
    render(page, tmp_path).assert_all_images_shown(1 + len(rows))  # thumbnails from the service's bytes

    by_hash = filled.project.run("imgcache-similar", filled.original, "--json", "-s", f"IMGCACHE_URL={service}")
    assert by_hash.returncode == 0, by_hash.stderr
    assert {r["content_hash"] for r in json_lines(by_hash.stdout)} == set(filled.near.values())


def test_stats_through_the_service_match_the_database(filled: Filled, service: str):
    remote = filled.project.run("imgcache-stats", "--json", "-s", f"IMGCACHE_URL={service}")
    local = filled.project.run("imgcache-stats", "--json")
    assert remote.returncode == local.returncode == 0, remote.stderr
    assert json_lines(remote.stdout) == json_lines(local.stdout)


def test_import_through_the_service_twice(filled: Filled, service: str, tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "new.jpg").write_bytes(encode(distinct_images(6)[5]))
    (folder / "notes.txt").write_text("not an image\n")
    first = filled.project.run("imgcache-import", str(folder), "-s", f"IMGCACHE_URL={service}")
    assert first.returncode == 0, first.stderr
    assert "2 file(s); 1 image(s) added" in first.stdout and "notes.txt: not_an_image" in first.stderr
    second = filled.project.run("imgcache-import", str(folder), "-s", f"IMGCACHE_URL={service}")
    assert "0 image(s) added" in second.stdout and "1 already imported" in second.stdout
    with filled.project.opened() as store:
        entry = store.lookup((folder / "new.jpg").resolve().as_uri())
        assert entry is not None and entry.client_name == "imgcache-import"


def test_dupes_through_the_service_match_the_database(filled: Filled, service: str):
    remote = filled.project.run("imgcache-dupes", "--json", "-s", f"IMGCACHE_URL={service}")
    local = filled.project.run("imgcache-dupes", "--json")
    assert remote.returncode == local.returncode == 0, remote.stderr
    assert json_lines(remote.stdout) == json_lines(local.stdout)
    assert {i["content_hash"] for i in json_lines(remote.stdout)[0]["images"]} >= {filled.original}


def test_gc_through_the_service_runs_next_to_the_data(filled: Filled, service: str):
    with filled.project.opened() as store:
        damaged = store.get_meta(filled.others[0])
    (filled.project.files / damaged.path).unlink()
    dry = filled.project.run("imgcache-gc", "--dry-run", "-s", f"IMGCACHE_URL={service}")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines()[0] == "1 row(s) whose bytes are missing:" and damaged.content_hash in dry.stdout
    real = filled.project.run("imgcache-gc", "-s", f"IMGCACHE_URL={service}")
    assert real.returncode == 0, real.stderr
    assert "Removed 1 row(s) whose bytes are missing." in real.stdout
    with filled.project.opened() as store:
        assert store.get_meta(filled.others[0]) is None


def test_a_service_that_is_down_is_one_line_and_exit_3(filled: Filled):
    down = f"http://127.0.0.1:{free_port()}"
    proc = filled.project.run(
        "imgcache-similar", "8d8372be8278acda", "-s", f"IMGCACHE_URL={down}", "-s", "IMGCACHE_RETRIES=0"
    )
    assert_one_line_error(proc, 3, down)
