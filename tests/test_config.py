"""ImgCacheConfig.from_settings: Scrapy-style values parsed, every bad value named in a ConfigError."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from scrapy_imgcache.config import DEFAULTS, SERVICE_NAMES, ImgCacheConfig, unknown_settings
from scrapy_imgcache.errors import ConfigError

BASE = {"IMGCACHE_URL": "sqlite:////tmp/imgcache-config-test/cache.sqlite3"}

BAD = {
    "IMGCACHE_ENABLED": ["maybe", 2],
    "IMGCACHE_URL": [123, ["sqlite://"]],
    "IMGCACHE_FILES_STORE": [123],
    "IMGCACHE_INDEX_DIR": [123, ["a", "list"]],
    "IMGCACHE_BUCKET": ["has space", "x" * 65, "a/b", 5],
    "IMGCACHE_CLIENT_NAME": [123, ["spider"]],
    "IMGCACHE_HASH": ["md5", "PHASH"],
    "IMGCACHE_FAST_HASH": ["fast"],
    "IMGCACHE_HASH_PROCESSES": [-1, 257, "many"],
    "IMGCACHE_SIMILARITY": ["fuzzy", "", 1],
    "IMGCACHE_SIMILARITY_THRESHOLD": [-1, 33, "abc", "8.5", True],
    "IMGCACHE_ON_SIMILAR": ["ignore", ""],
    "IMGCACHE_EXPIRES": [-1, "soon", float("nan"), True],
    "IMGCACHE_MAX_BYTES": [0, "big"],
    "IMGCACHE_MAX_PIXELS": [0, -5],
    "IMGCACHE_API_KEY": [123],
    "IMGCACHE_TIMEOUT": [0, -1, "slow"],
    "IMGCACHE_RETRIES": [-1, 11, "x"],
    "IMGCACHE_ON_STORE_ERROR": ["ignore"],
    "IMGCACHE_GC_GRACE": [-5, "later"],
    "IMGCACHE_STORE_SCHEMES": ["redis", ["x"], {1: "a.B"}],
}


@pytest.mark.parametrize(
    "name, value", [pytest.param(n, v, id=f"{n}={v!r}"[:60]) for n, values in BAD.items() for v in values]
)
def test_every_bad_value_raises_a_config_error_naming_the_setting(name, value):
    with pytest.raises(ConfigError) as caught:
        ImgCacheConfig.from_settings({**BASE, name: value})
    assert str(caught.value).startswith(f"{name}=")


def test_every_setting_has_a_bad_value_tested():
    assert set(BAD) == set(DEFAULTS)


def test_command_line_strings_are_parsed():
    """``scrapy crawl -s NAME=VALUE`` hands every value over as a string."""
    config = ImgCacheConfig.from_settings(
        {
            **BASE,
            "IMGCACHE_ENABLED": "0",
            "IMGCACHE_FAST_HASH": "yes",
            "IMGCACHE_SIMILARITY_THRESHOLD": "6",
            "IMGCACHE_TIMEOUT": "2.5",
            "IMGCACHE_MAX_BYTES": " 1000 ",
            "IMGCACHE_HASH": "dhash",
        }
    )
    assert (config.enabled, config.fast_hash, config.similarity_threshold) == (False, True, 6)
    assert (config.timeout, config.max_bytes, config.hash) == (2.5, 1000, "dhash")
    inspector = config.inspector()
    assert (inspector.algorithm, inspector.fast, inspector.limits.max_bytes) == ("dhash", True, 1000)


def test_defaults_put_the_cache_in_the_project_data_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = ImgCacheConfig.from_settings({})
    data = os.path.realpath(tmp_path / ".scrapy")
    assert config.url == f"sqlite:///{data}/imgcache.sqlite3"
    assert os.path.realpath(config.files_store) == os.path.join(data, "imgcache-files")
    assert (config.bucket, config.client_name, config.api_key, config.is_remote) == ("", None, None, False)
    assert config.similarity_threshold == DEFAULTS["IMGCACHE_SIMILARITY_THRESHOLD"]


def test_two_crawls_starting_at_once_in_a_new_project_both_find_its_data_folder(tmp_path, monkeypatch):
    """Scrapy makes ``<project>/.scrapy`` when it did not exist a moment before: the second of
    two crawls started together (a CI run caught it) failed with FileExistsError."""
    (tmp_path / "scrapy.cfg").write_text("[settings]\ndefault = projsettings\n")
    monkeypatch.chdir(tmp_path)
    data = tmp_path / ".scrapy"
    real_exists = Path.exists
    raced = []

    def exists_before_the_other_made_it(self: Path, *args, **kwargs) -> bool:
        if self == data.resolve() and not raced:  # looked, then the other crawl made it
            raced.append(True)
            data.mkdir()
            return False
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists_before_the_other_made_it)
    config = ImgCacheConfig.from_settings({})
    assert raced and config.url == f"sqlite:///{os.path.realpath(data)}/imgcache.sqlite3"


def test_a_remote_url_needs_no_files_store():
    config = ImgCacheConfig.from_settings({"IMGCACHE_URL": "https://cache.example", "IMGCACHE_API_KEY": "k"})
    assert config.is_remote and config.files_store == "" and config.api_key == "k"


def test_every_imgcache_name_the_code_reads_is_known():
    """A name the package reads (a setting, or an environment variable of the service) that
    :func:`unknown_settings` did not know would be reported as a typo."""
    package = Path(__file__).resolve().parent.parent / "scrapy_imgcache"
    sources = "".join(p.read_text() for p in package.rglob("*.py"))
    names = set(re.findall(r"\bIMGCACHE_[A-Z0-9_]*[A-Z0-9]\b", sources))
    assert {"IMGCACHE_URL", "IMGCACHE_SERVER_DB", "IMGCACHE_VISUALSNOOP_SKEW"} <= names
    assert names <= set(DEFAULTS) | SERVICE_NAMES
    assert not unknown_settings(dict.fromkeys(names, 1) | {"BOT_NAME": 1, "imgcache_url": 1})


def test_an_unknown_name_gets_the_closest_known_one_if_any():
    found = unknown_settings({"IMGCACHE_HASH_PROCESS": 0, "IMGCACHE_ZZZ": 1, "IMGCACHE_SERVER_FILE": "f"})
    ignored = "is not a scrapy-imgcache setting, so it is ignored;"
    assert found == [
        f"IMGCACHE_HASH_PROCESS {ignored} did you mean IMGCACHE_HASH_PROCESSES?",
        f"IMGCACHE_SERVER_FILE {ignored} did you mean IMGCACHE_SERVER_FILES?",
        f"IMGCACHE_ZZZ {ignored} docs/reference/settings.md lists them",
    ]


def test_index_dir_defaults_beside_the_cache():
    """SQLite: "" (the store puts the file beside the database's); a database server: the
    project's data folder; a remote service: none (it holds the index); set: as given."""
    assert ImgCacheConfig.from_settings({"IMGCACHE_URL": "sqlite:////tmp/x/c.sqlite3"}).index_dir == ""
    pg = ImgCacheConfig.from_settings({"IMGCACHE_URL": "postgresql+psycopg://h/db"}).index_dir
    assert pg.endswith(".scrapy")
    assert ImgCacheConfig.from_settings({"IMGCACHE_URL": "http://h:1/"}).index_dir == ""
    assert ImgCacheConfig.from_settings({"IMGCACHE_INDEX_DIR": "/srv/idx"}).index_dir == "/srv/idx"
