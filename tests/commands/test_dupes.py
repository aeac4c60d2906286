"""``scrapy imgcache-dupes``: groups of near-duplicates, as text, JSON lines and an HTML gallery."""

from __future__ import annotations

import itertools

from scrapy_imgcache.commands.dupes import clusters
from scrapy_imgcache.hashing import Inspector, hamming
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import encode, photo

from .conftest import Filled, json_lines, render


def test_groups_as_json_lines_reference_first(filled: Filled):
    proc = filled.project.run("imgcache-dupes", "--json")
    assert proc.returncode == 0, proc.stderr
    (group,) = json_lines(proc.stdout)  # B is one image seen twice; C and D look like nothing else
    members = [image["content_hash"] for image in group["images"]]
    assert group["cluster"] == 1 and group["size"] == 4
    assert members[0] == filled.original  # most pixels, cached first
    assert set(members[1:]) == set(filled.near.values())
    assert group["bytes"] == sum(filled.sizes[h] for h in members)
    distances = [image["distance"] for image in group["images"]]
    assert distances[0] == 0 and distances == sorted(distances)


def test_text_output_and_nothing_found(filled: Filled):
    proc = filled.project.run("imgcache-dupes")
    assert proc.returncode == 0, proc.stderr
    assert "Group 1: 4 images" in proc.stdout
    assert "1 group(s) within 8 bits in bucket ''." in proc.stdout
    for content_hash in [filled.original, *filled.near.values()]:
        assert content_hash[:12] in proc.stdout
    for single in [filled.twice, *filled.others]:
        assert single[:12] not in proc.stdout

    bigger = filled.project.run("imgcache-dupes", "--min-size", "5")
    assert bigger.returncode == 1
    assert "No group of 5 or more images within 8 bits in bucket ''." in bigger.stdout
    other = filled.project.run("imgcache-dupes", "--bucket", "other", "--max-distance", "32")
    assert other.returncode == 1  # a single image is no group, however far we look


def test_gallery_renders_in_a_browser(filled: Filled, tmp_path):
    page = tmp_path / "dupes.html"
    proc = filled.project.run("imgcache-dupes", "--html", str(page), "--json")
    assert proc.returncode == 0, proc.stderr
    json_lines(proc.stdout)  # --html keeps stdout for the JSON
    rendered = render(page, tmp_path)
    rendered.assert_all_images_shown(4)
    assert "Group 1: 4 images" in page.read_text(encoding="utf-8")


def test_groups_do_not_chain(tmp_path):
    """Four crops, each within 8 bits of the next only: connected components made one group of
    four, where the first and the last image are 18 bits apart."""
    img = photo("camera").convert("RGB")
    w, h = img.size
    crops = [encode(img.crop((int(w * 0.04 * i), 0, w, h))) for i in range(4)]
    inspector = Inspector(robust=False)  # the pHash distance alone: the chain is in the distances
    hashes = [inspector.inspect(data).perceptual_hash for data in crops]
    assert [hamming(a, b) for a, b in itertools.pairwise(hashes)] == [6, 8, 8]
    assert hamming(hashes[0], hashes[2]) > 8 and hamming(hashes[1], hashes[3]) > 8
    store = SqlStore(f"sqlite:///{tmp_path / 'c.sqlite3'}", str(tmp_path / "files"))
    try:
        ids = [
            store.put(data, url=f"https://x.example/{i}.jpg", client_name="t", info=inspector.inspect(data)).entry
            for i, data in enumerate(crops)
        ]
        (group,) = clusters(store, "", 8)
    finally:
        store.close()
    members = [entry.content_hash for _, entry in group]
    assert members[0] == ids[1].content_hash  # matches two others, and has more pixels than the third
    assert set(members) == {e.content_hash for e in ids[:3]}
    assert all(hamming(group[0][1].perceptual_hash or "", e.perceptual_hash or "") <= 8 for _, e in group)
