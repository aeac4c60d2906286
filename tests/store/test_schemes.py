"""``open_store`` picks the store class by the URL's scheme; ``IMGCACHE_STORE_SCHEMES`` adds
classes by dotted path or as objects, and a path that does not load is a ConfigError naming it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scrapy_imgcache.errors import ConfigError
from scrapy_imgcache.store import store_class
from scrapy_imgcache.store.remote import RemoteStore
from scrapy_imgcache.store.sql import SqlStore


class MyStore(SqlStore):
    pass


def test_the_scheme_picks_the_class():
    assert store_class("postgresql+psycopg://u@h/db") is SqlStore
    assert store_class("http://127.0.0.1:8080") is RemoteStore
    assert store_class("mine://x", {"mine": "tests.store.test_schemes.MyStore"}) is MyStore
    assert store_class("mine://x", {"mine": MyStore}) is MyStore


@pytest.mark.parametrize(
    "path", ["tests.store.test_schemes.NoSuchStore", "tests.store.no_such_module.Store", "MyStore", ""]
)
def test_a_path_that_does_not_load_names_the_scheme_and_the_path(path):
    with pytest.raises(ConfigError, match=rf"IMGCACHE_STORE_SCHEMES\['mine'\]: cannot load '{path}'"):
        store_class("mine://x", {"mine": path})


def test_an_unknown_scheme_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"no store serves the scheme 'redis' \(known: .*sqlite"):
        store_class("redis://x")


def test_opening_a_store_does_not_import_scrapy(tmp_path):
    """An engine worker opens a store at every crawl's start: importing Scrapy there cost ~0.4 s of
    CPU a worker."""
    code = (
        "import sys; from scrapy_imgcache.store import open_store; "
        f"open_store('sqlite:///{tmp_path}/c.sqlite3', files_store='{tmp_path}/f').close(); "
        "print(sorted(m for m in sys.modules if m == 'scrapy' or m.startswith('scrapy.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
