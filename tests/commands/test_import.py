"""``scrapy imgcache-import DIR``: an old image folder into the cache, once, with non-images reported."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

from scrapy_imgcache.store.sql import SqlStore
from tests.forked import run_scrapy, scrapy_process
from tests.helpers import (
    damaged_variants,
    distinct_images,
    encode,
    every_mode_and_format,
    near_duplicates,
    noise_bytes,
)

from .conftest import Project, assert_one_line_error


def _old_images_store(root: Path) -> dict[str, Path]:
    a, b, c = distinct_images(3)
    full = root / "full"
    (full / "sub").mkdir(parents=True)
    files = {
        "a": full / "a.jpg",
        "b": full / "b.png",
        "c": full / "sub" / "c.jpg",
        "copy": full / "copy-of-a.jpg",
        "near": full / "near-a.jpg",
        "notes": root / "notes.txt",
        "noise": root / "noise.jpg",
        "empty": root / "empty.jpg",
        "cut": root / "cut.jpg",
    }
    a_bytes = encode(a)
    files["a"].write_bytes(a_bytes)
    files["b"].write_bytes(encode(b, "PNG"))
    files["c"].write_bytes(encode(c))
    files["copy"].write_bytes(a_bytes)
    files["near"].write_bytes(near_duplicates(a)["brightened"])
    files["notes"].write_text("these are not images\n")
    files["noise"].write_bytes(noise_bytes())
    files["empty"].write_bytes(b"")
    files["cut"].write_bytes(encode(c)[:3000])
    return files


def _state(project: Project) -> tuple[object, set[str]]:
    with project.opened() as store:
        return store.usage(), {key for key, _, _ in store.blobs.iter_keys()}


def test_import_twice_adds_nothing_and_reports_non_images(project: Project, tmp_path):
    files = _old_images_store(tmp_path / "old")
    first = project.run("imgcache-import", str(tmp_path / "old"))
    assert first.returncode == 0, first.stderr
    assert (
        "9 file(s); 4 image(s) added to bucket ''" in first.stdout
        and "1 of them near-duplicates" in first.stdout
        and "1 exact duplicate(s) of cached images recorded, 0 already imported, 4 skipped." in first.stdout
    ), first.stdout
    assert "Skipped (1 empty, 2 not_an_image, 1 truncated):" in first.stderr
    for name, reason in [
        ("notes", "not_an_image"),
        ("noise", "not_an_image"),
        ("empty", "empty"),
        ("cut", "truncated"),
    ]:
        assert f"{files[name]}: {reason}: " in first.stderr

    with project.opened() as store:
        entries = {name: store.lookup(files[name].resolve().as_uri()) for name in ("a", "b", "c", "copy", "near")}
        assert all(e is not None and e.client_name == "imgcache-import" for e in entries.values()), entries
        assert entries["copy"].content_hash == entries["a"].content_hash
        assert entries["near"].similar_to == entries["a"].content_hash
        assert entries["c"].original_filename == "c.jpg"
        assert store.lookup(files["notes"].resolve().as_uri()) is None
        assert sum(1 for _ in store.images()) == 4

    before = _state(project)
    second = project.run("imgcache-import", str(tmp_path / "old"))
    assert second.returncode == 0, second.stderr
    assert "0 image(s) added" in second.stdout and "0 exact duplicate(s)" in second.stdout
    assert "5 already imported, 4 skipped." in second.stdout
    assert _state(project) == before


def test_bucket_and_client_name(project: Project, tmp_path):
    files = _old_images_store(tmp_path / "old")
    proc = project.run(
        "imgcache-import", str(tmp_path / "old" / "full"), "--bucket", "archive", "--client-name", "old-store"
    )
    assert proc.returncode == 0, proc.stderr
    assert "5 file(s); 4 image(s) added to bucket 'archive'" in proc.stdout
    with project.opened() as store:
        assert store.lookup(files["a"].resolve().as_uri(), "archive").client_name == "old-store"
        assert store.buckets() == ["archive"]


def test_not_a_directory(project: Project, tmp_path):
    assert_one_line_error(project.run("imgcache-import", str(tmp_path / "nowhere")), 2, "is not a directory")


def test_progress_bar_on_a_terminal(project: Project, tmp_path):
    """On a terminal stderr shows tqdm's bar; piped (the other tests) it stays quiet."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import termios

    _old_images_store(tmp_path / "old")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a new pty is 0 columns wide
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "scrapy", "imgcache-import", str(tmp_path / "old")],
            cwd=project.root,
            stdout=subprocess.PIPE,
            stderr=slave,
            timeout=120,
        )
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    text = seen.decode(errors="replace")
    assert "importing:" in text and "/9 [" in text and "img/s" in text, text


def test_every_pixel_mode_and_format_whole_or_damaged_is_imported_or_skipped_typed(project: Project, tmp_path):
    """A LAB TIFF once aborted the import with a traceback and skipped every later file."""
    folder = tmp_path / "modes"
    folder.mkdir()
    images = every_mode_and_format(distinct_images(1)[0])
    bodies = list(images.values()) + damaged_variants(images["LAB", "TIFF"], range(6))
    for n, body in enumerate(bodies):
        (folder / f"{n:03d}.img").write_bytes(body)
    done = project.run("imgcache-import", str(folder))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert f"{len(bodies)} file(s);" in done.stdout
    reasons = {line.split(": ")[1] for line in done.stderr.splitlines() if line.startswith("  ")}
    assert reasons <= {"not_an_image", "unsupported_format", "unsupported_mode", "truncated"}, reasons
    with project.opened() as store:
        for n in range(len(images)):  # every whole image is in the cache, under its file's URL
            assert store.lookup((folder / f"{n:03d}.img").resolve().as_uri()) is not None


def test_an_import_killed_at_any_moment_completes_when_run_again(db_url, tmp_path):
    """kill -9 at random moments, on every database: the next run completes, nothing half-stored."""
    root = tmp_path / "proj"
    (root / "imgproj").mkdir(parents=True)
    (root / "scrapy.cfg").write_text("[settings]\ndefault = imgproj.settings\n")
    (root / "imgproj" / "__init__.py").write_text("")
    files = root / "files"
    (root / "imgproj" / "settings.py").write_text(f"IMGCACHE_URL = {db_url!r}\nIMGCACHE_FILES_STORE = {str(files)!r}\n")
    folder = tmp_path / "old"
    folder.mkdir()
    photos = {f"{n:03d}.jpg": encode(img) for n, img in enumerate(distinct_images(30, size=(480, 360)))}
    for name, data in photos.items():
        (folder / name).write_bytes(data)
    project = Project(root)
    rng = random.Random(7)
    for _ in range(3):
        proc = scrapy_process(
            ["imgcache-import", str(folder)],
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"},
        )
        time.sleep(rng.uniform(0.8, 2.5))
        proc.kill()
        proc.wait()
    final = project.run("imgcache-import", str(folder))
    assert final.returncode == 0, final.stderr
    store = SqlStore(db_url, str(files))
    try:
        assert store.missing_blobs() == []  # no row without its bytes
        for name, data in photos.items():
            entry = store.lookup((folder / name).resolve().as_uri())
            assert entry is not None and store.get_bytes(entry.content_hash) == data
        assert len(list(store.images())) == len(photos)
    finally:
        store.close()


def _run_outside_a_project(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SCRAPY_SETTINGS_MODULE"}
    return run_scrapy(args, cwd=folder, env=env, timeout=60)


def test_outside_a_project_a_command_that_creates_a_cache_refuses_unless_told_where(tmp_path):
    """``imgcache-import DIR`` in a folder without a project made ``./.scrapy/imgcache.sqlite3``
    there (and ``imgcache-serve`` served it): the docs say the commands run inside a project."""
    folder = tmp_path / "work"
    (folder / "old" / "full").mkdir(parents=True)
    (folder / "old" / "full" / "a.jpg").write_bytes(encode(distinct_images(1)[0]))
    before = sorted(folder.rglob("*"))
    for args in (
        ("imgcache-import", "old"),
        ("imgcache-serve", "--port", "9"),
        ("imgcache-collections", "create", "shop"),
        # a database named, the files left to the project's data folder: still nowhere to go
        ("imgcache-import", "old", "-s", "IMGCACHE_URL=postgresql+psycopg://127.0.0.1:9/test"),
    ):
        proc = _run_outside_a_project(folder, *args)
        assert_one_line_error(proc, 2, "no Scrapy project", str(folder), "IMGCACHE_URL")
    assert sorted(folder.rglob("*")) == before
    # named: imported there
    db, files = tmp_path / "named.sqlite3", tmp_path / "named-files"
    proc = _run_outside_a_project(folder, "imgcache-import", "old", "-s", f"IMGCACHE_URL=sqlite:///{db}")
    assert proc.returncode == 0, proc.stderr
    assert "1 image(s) added" in proc.stdout
    assert sorted(folder.rglob("*")) == before
    store = SqlStore(f"sqlite:///{db}", str(files))
    try:
        assert [e.url for e in store.images()] == [(folder / "old" / "full" / "a.jpg").as_uri()]
    finally:
        store.close()
