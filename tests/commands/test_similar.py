"""``scrapy imgcache-similar``: every kind of TARGET, the three outputs, the exit codes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from scrapy_imgcache.contract import MATCHES
from scrapy_imgcache.hashing import Inspector, hamming
from tests.helpers import solid

from .conftest import HOSTILE_URL, Filled, assert_one_line_error, json_lines, render


@pytest.fixture
def image_server(filled: Filled) -> Iterator[str]:
    """``/query.jpg`` is a near-duplicate of photo A; anything else is a 404."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/query.jpg":
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(filled.query_bytes)))
                self.end_headers()
                self.wfile.write(filled.query_bytes)
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _group(filled: Filled) -> set[str]:
    return {filled.original, *filled.near.values()}


def test_image_file_lists_the_near_duplicates_and_how_they_matched(filled: Filled, tmp_path):
    query = tmp_path / "query.jpg"
    query.write_bytes(filled.query_bytes)
    proc = filled.project.run("imgcache-similar", str(query))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"Query: image file {query}" in out
    rows = [line.split() for line in out.splitlines() if line[:6].strip().isdigit()]
    assert {row[2] for row in rows} == {h[:12] for h in _group(filled)}
    assert max(int(row[0]) for row in rows) <= 8
    assert {row[1] for row in rows} <= set(MATCHES)  # verified: each says how it matched
    assert "https://a.example/a.jpg" in out  # each image's first source URL
    assert f"{len(rows)} match(es)." in out
    for unrelated in [filled.twice, *filled.others, filled.other_bucket]:
        assert unrelated[:12] not in out


def test_content_hash_json_lines_leave_the_image_itself_out(filled: Filled):
    proc = filled.project.run("imgcache-similar", filled.original.upper(), "--json")
    assert proc.returncode == 0, proc.stderr
    assert f"Query: cached image {filled.original}" in proc.stderr  # stdout is for the JSON only
    rows = json_lines(proc.stdout)
    assert {r["content_hash"] for r in rows} == set(filled.near.values())
    assert all(r["match"] in MATCHES and r["distance"] <= 8 for r in rows)
    hostile = next(r for r in rows if r["content_hash"] == filled.near["resized"])
    assert hostile["urls"] == [HOSTILE_URL] and hostile["clients"] == ["spider_b"]
    assert hostile["file_size_bytes"] == filled.sizes[filled.near["resized"]]


def test_perceptual_hash_found_and_nothing_found(filled: Filled):
    with filled.project.opened() as store:
        phash = store.get_meta(filled.others[0]).perceptual_hash
    found = filled.project.run("imgcache-similar", phash, "--max-distance", "0", "--json")
    assert found.returncode == 0, found.stderr
    assert "Query: perceptual hash" in found.stderr
    assert [r["content_hash"] for r in json_lines(found.stdout)] == [filled.others[0]]

    opposite = f"{int(phash, 16) ^ (2**64 - 1):016x}"  # every bit flipped: 64 bits away from it
    none = filled.project.run("imgcache-similar", opposite, "--max-distance", "3")
    assert none.returncode == 1, none.stderr
    assert "No cached image is within 3 bits" in none.stdout


def test_bucket_option_searches_that_bucket_only(filled: Filled):
    with filled.project.opened() as store:
        phash = store.get_meta(filled.other_bucket, "other").perceptual_hash
    default = filled.project.run("imgcache-similar", phash, "--max-distance", "0")
    assert default.returncode == 1
    other = filled.project.run("imgcache-similar", phash, "--max-distance", "0", "--bucket", "other", "--json")
    assert other.returncode == 0, other.stderr
    assert [r["content_hash"] for r in json_lines(other.stdout)] == [filled.other_bucket]


def test_limit(filled: Filled):
    proc = filled.project.run("imgcache-similar", filled.original, "--json", "--limit", "2")
    assert proc.returncode == 0
    assert len(json_lines(proc.stdout)) == 2


def test_url_is_fetched_once_and_not_stored(filled: Filled, image_server: str):
    url = f"{image_server}/query.jpg"
    proc = filled.project.run("imgcache-similar", url, "--json")
    assert proc.returncode == 0, proc.stderr
    assert f"Query: image URL {url}" in proc.stderr
    info = Inspector().inspect(filled.query_bytes)
    rows = json_lines(proc.stdout)
    assert {r["content_hash"] for r in rows} == _group(filled)
    for row in rows:
        # the bits between the hashes that found it: its pHash's, or a crop's or a mirror's
        assert row["distance"] <= min(8, hamming(info.perceptual_hash, row["perceptual_hash"]))
    with filled.project.opened() as store:
        assert store.lookup(url) is None and store.get_meta(info.content_hash) is None

    missing = filled.project.run("imgcache-similar", f"{image_server}/gone.jpg")
    assert_one_line_error(missing, 3, "HTTP 404")
    too_big = filled.project.run("imgcache-similar", url, "-s", "IMGCACHE_MAX_BYTES=1000")
    assert_one_line_error(too_big, 2, "over IMGCACHE_MAX_BYTES")


@pytest.mark.parametrize(
    "target, needle",
    [
        ("no-such-thing", "is not an existing file, an http(s):// URL"),
        ("ab" * 32, "no cached image has content hash"),
        (".", "is a directory"),
    ],
)
def test_a_target_that_is_none_of_them_is_a_usage_error(filled: Filled, target: str, needle: str):
    assert_one_line_error(filled.project.run("imgcache-similar", target), 2, needle)


def test_a_file_that_is_not_an_image_and_bad_options_are_usage_errors(filled: Filled, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a picture\n")
    assert_one_line_error(filled.project.run("imgcache-similar", str(text)), 2, "not_an_image")
    too_far = filled.project.run("imgcache-similar", filled.original, "--max-distance", "33")
    assert_one_line_error(too_far, 2, "bad max distance")


def test_contact_sheet_renders_every_thumbnail_in_a_browser(filled: Filled, tmp_path):
    page = tmp_path / "sheet.html"
    proc = filled.project.run("imgcache-similar", filled.original, "--html", str(page))
    assert proc.returncode == 0, proc.stderr
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text.replace("&lt;script", "")  # the hostile URL is escaped, not markup
    rendered = render(page, tmp_path)
    rendered.assert_all_images_shown(1 + len(filled.near))  # the query beside each match
    assert rendered.scripts == 0
    assert HOSTILE_URL in rendered.links  # shown as the text it is
    for content_hash in filled.near.values():
        assert content_hash[:16] in text


def test_a_flat_image_matches_nothing_and_says_why(filled: Filled, tmp_path):
    flat = tmp_path / "grey.png"
    flat.write_bytes(solid((128, 128, 128), (200, 150)))
    proc = filled.project.run("imgcache-similar", str(flat), "--max-distance", "32")
    assert proc.returncode == 1, proc.stderr
    assert "No cached image is within 32 bits of the query (it is flat" in proc.stdout
