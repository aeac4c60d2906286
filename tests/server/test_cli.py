"""Both ways to start the server, as a user runs them: the console script and the Scrapy command."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from scrapy_imgcache.server.cli import is_loopback
from scrapy_imgcache.server.process import SERVER_BIN, free_port, running
from scrapy_imgcache.store.sql import SqlStore
from tests.helpers import fresh_jpegs, fresh_url

KEY = "k" * 32


def run_server(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [SERVER_BIN, "--db", f"sqlite:///{tmp_path / 'c.sqlite3'}", "--files", str(tmp_path / "f"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1"])
def test_refuses_a_public_address_without_keys(tmp_path, host):
    done = run_server(tmp_path, "--host", host, "--port", str(free_port()))
    assert done.returncode == 2
    assert "refusing to listen on" in done.stderr and "--insecure" in done.stderr
    assert not (tmp_path / "c.sqlite3").exists()  # refused before the store was opened


@pytest.mark.parametrize("extra", [["--insecure"], ["--write-key", KEY]], ids=["insecure", "with-keys"])
def test_public_address_allowed_when_told_or_keyed(tmp_path, extra):
    port = free_port()
    files = tmp_path / "f"
    command = [SERVER_BIN, "--db", f"sqlite:///{tmp_path / 'c.sqlite3'}", "--files", str(files)]
    command += ["--host", "0.0.0.0", "--port", str(port), *extra]
    with running(command, f"http://127.0.0.1:{port}", tmp_path, files) as server:
        assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--read-key", "short"], "at least 16 characters"),
        (["--max-upload-bytes", "0"], "--max-upload-bytes must be at least 1"),
        (["--max-pixels", "-5"], "--max-pixels must be at least 1"),
        (["--port", "x"], "invalid int value"),
    ],
)
def test_bad_options_exit_2(tmp_path, args, message):
    done = run_server(tmp_path, *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_db_and_files_are_required():
    done = subprocess.run([SERVER_BIN], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin"})
    assert done.returncode == 2
    assert "--db and --files are required" in done.stderr


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.9.10")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")
    assert not is_loopback("no-such-host.invalid")


def make_project(root: Path, db_url: str, files: Path) -> None:
    (root / "scrapy.cfg").write_text("[settings]\ndefault = svcproj.settings\n")
    pkg = root / "svcproj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "settings.py").write_text(
        textwrap.dedent(
            f"""
            BOT_NAME = "svcproj"
            IMGCACHE_URL = {db_url!r}
            IMGCACHE_FILES_STORE = {str(files)!r}
            IMGCACHE_MAX_BYTES = 300000
            """
        )
    )


@pytest.mark.scrapy_api
def test_scrapy_imgcache_serve_serves_the_projects_store(tmp_path):
    from imgcache_client import ImgCacheClient

    db_url = f"sqlite:///{tmp_path / 'project-cache.sqlite3'}"
    files = tmp_path / "project-files"
    make_project(tmp_path, db_url, files)
    port = free_port()
    command = [sys.executable, "-m", "scrapy", "imgcache-serve", "--port", str(port)]
    with running(command, f"http://127.0.0.1:{port}", tmp_path, files) as server:
        (data,) = fresh_jpegs(1)
        url = fresh_url()
        with ImgCacheClient(server.url) as client:
            entry = client.store(url, data, "cli-test", "proj")
            # the project's byte limit (IMGCACHE_MAX_BYTES) applies
            big = httpx.post(
                f"{server.url}/images",
                data={"url": url, "client_name": "x"},
                files={"file": ("a.jpg", data + b"\0" * 300000)},
            )
            assert big.status_code == 413
    store = SqlStore(db_url, str(files))
    try:
        assert store.lookup(url, "proj").content_hash == entry["content_hash"]
        assert store.get_bytes(entry["content_hash"], "proj") == data
    finally:
        store.close()


@pytest.mark.scrapy_api
def test_scrapy_imgcache_serve_refuses_a_public_address_without_keys(tmp_path):
    make_project(tmp_path, f"sqlite:///{tmp_path / 'c.sqlite3'}", tmp_path / "f")
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "imgcache-serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "refusing to listen on 0.0.0.0" in done.stderr
    assert not (tmp_path / "c.sqlite3").exists()
