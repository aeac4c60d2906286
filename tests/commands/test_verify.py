"""``scrapy imgcache-verify``: bytes changed on disk are found, reported and, on request, removed
so that they are fetched again; blobs still hard-linked from elsewhere get a file of their own."""

from __future__ import annotations

import os

from .conftest import Filled, assert_one_line_error


def _damage(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_clean_cache_verifies(filled: Filled):
    done = filled.project.run("imgcache-verify")
    assert done.returncode == 0, done.stderr
    assert "Checked 8 image(s)" in done.stdout and "0 damaged." in done.stdout
    sample = filled.project.run("imgcache-verify", "--sample", "3")
    assert sample.returncode == 0 and "Checked 3 image(s)" in sample.stdout
    bucket = filled.project.run("imgcache-verify", "--bucket", "other")
    assert bucket.returncode == 0 and "Checked 1 image(s)" in bucket.stdout


def test_damaged_and_linked_blobs_are_reported_then_repaired(filled: Filled, tmp_path):
    files = filled.project.files
    with filled.project.opened() as store:
        damaged = store.get_meta(filled.twice)  # in bucket '' at two URLs
        linked = store.get_meta(filled.others[0])
    _damage(files / damaged.path)
    outside = tmp_path / "images_store_file.jpg"
    os.link(files / linked.path, outside)  # what an IMAGES_STORE of 0.x held

    found = filled.project.run("imgcache-verify")
    assert found.returncode == 3, (found.stdout, found.stderr)
    assert f"damaged: {damaged.path} does not hold the bytes of its hash" in found.stdout
    assert f"linked: {linked.path} is also another file" in found.stdout
    assert "1 damaged." in found.stdout and "--repair" in found.stdout
    with filled.project.opened() as store:  # reported, nothing changed
        assert store.get_meta(filled.twice) is not None and (files / damaged.path).exists()

    repaired = filled.project.run("imgcache-verify", "--repair")
    assert repaired.returncode == 0, (repaired.stdout, repaired.stderr)
    assert "(removed)" in repaired.stdout and "(now a file of its own)" in repaired.stdout
    with filled.project.opened() as store:
        assert store.get_meta(filled.twice) is None and store.urls(filled.twice) == []
        assert not (files / damaged.path).exists()
        assert store.get_bytes(filled.others[0]) == outside.read_bytes()
    assert os.stat(files / linked.path).st_nlink == 1 and outside.stat().st_nlink == 1
    again = filled.project.run("imgcache-verify")
    assert again.returncode == 0 and "Checked 7 image(s)" in again.stdout and "shared" not in again.stdout


def test_verify_refuses_a_bad_bucket_and_extra_arguments(filled: Filled):
    assert_one_line_error(filled.project.run("imgcache-verify", "--bucket", "no/such"), 2, "bad bucket name")
    assert_one_line_error(filled.project.run("imgcache-verify", "extra"), 2, "unexpected argument")
