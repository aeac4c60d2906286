"""The docs stay true: their Python examples run, every setting, stat key, Request.meta key and
result field the code has is in the references, and the README's links lead somewhere."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from scrapy_imgcache import contract
from scrapy_imgcache.config import DEFAULTS
from scrapy_imgcache.pipelines import cache_fields

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
REFERENCE = REPO / "docs" / "reference"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_store_example_runs(tmp_path):
    (example,) = [b for b in python_blocks((REPO / "docs" / "store.md").read_text()) if "open_store" in b]
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    created, content_hash, phash = done.stdout.splitlines()[0].split()
    assert created == "True" and len(content_hash) == 64 and len(phash) == 16
    assert "('https://example.com/a.png', 0)" in done.stdout


def test_the_readmes_python_snippets_are_valid_python():
    """Each one compiles (as the body of a function: the item example yields)."""
    blocks = python_blocks(README)
    assert len(blocks) >= 5
    for block in blocks:
        compile("def snippet():\n" + textwrap.indent(block, "    "), "README.md", "exec")


def test_every_setting_is_documented():
    settings = (REFERENCE / "settings.md").read_text()
    for name in DEFAULTS:
        assert f"| `{name}` |" in settings, name


def table_keys(document: str, pattern: str) -> set[str]:
    """The first cells of a reference table's rows that match ``pattern``."""
    return set(re.findall(rf"^\| `({pattern})` \|", (REFERENCE / document).read_text(), flags=re.M))


def test_the_stat_keys_are_the_contracts_and_all_documented():
    documented = table_keys("stats.md", r"imgcache/[^`]+")
    assert documented == {contract.STAT_PREFIX + key for key in contract.STAT_KEYS} | {"imgcache/invalid/<reason>"}
    stats = (REFERENCE / "stats.md").read_text()
    for scrapy_key in (
        "file_count",
        "file_status_count/downloaded",
        "file_status_count/uptodate",
        "file_status_count/cached",
    ):
        assert f"`{scrapy_key}`" in stats


def test_no_stat_key_is_written_outside_the_contract():
    """``ImgCacheContext.inc`` takes the contract's keys (mypy holds every call to that); no
    module writes an ``imgcache/`` stat of its own."""
    for path in (REPO / "scrapy_imgcache").rglob("*.py"):
        assert not re.search(r"""inc_value\(\s*f?["']imgcache/""", path.read_text()), path


def test_every_invalid_reason_is_documented():
    from scrapy_imgcache import errors

    reasons = {
        cls.reason
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.InvalidImage) and cls is not errors.InvalidImage
    }
    stats = (REFERENCE / "stats.md").read_text().splitlines()
    (row,) = [line for line in stats if "`imgcache/invalid/<reason>`" in line]
    assert reasons and all(f"`{reason}`" in row for reason in reasons), reasons


def test_the_request_meta_keys_are_the_contracts_and_all_documented():
    assert table_keys("meta.md", r"imgcache[a-z_]*") == set(contract.META_KEYS)


def test_the_result_fields_are_the_contracts_and_all_documented():
    fields = {*contract.SCRAPY_RESULT_FIELDS, *contract.CACHE_RESULT_FIELDS, contract.THUMBS_FIELD}
    documented = {name for cell in table_keys("results.md", r"[^|]+") for name in re.findall(r"[a-z_]+", cell)}
    assert documented == fields
    assert tuple(cache_fields(_entry(), None, "hit", 0)) == contract.CACHE_RESULT_FIELDS
    assert set(cache_fields(None, None, "error", 0)) <= set(contract.CACHE_RESULT_FIELDS)


def _entry():
    from datetime import datetime, timezone

    from scrapy_imgcache.store.base import Entry

    now = datetime.now(timezone.utc)
    return Entry("u", "h" * 64, "image/png", 1, None, 1, 1, "0" * 16, "c", now, now, "")


@pytest.mark.parametrize("document", ["README.md", "CONTRIBUTING.md", "docs/reference/settings.md", "docs/store.md"])
def test_relative_links_lead_to_files(document):
    path = REPO / document
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{document}: {target}"


def test_every_route_of_the_service_is_documented(tmp_path):
    """Each call of the imgcache API in docs/server.md's table, each VisualSnoop call in
    docs/visualsnoop.md's (``{image_id}`` may be written ``ID`` there)."""
    from scrapy_imgcache.server.app import create_app
    from scrapy_imgcache.store.sql import SqlStore
    from scrapy_imgcache.visualsnoop.api import PREFIX, routers_for

    store = SqlStore(f"sqlite:///{tmp_path / 'c.sqlite3'}", str(tmp_path / "files"))
    try:
        paths = create_app(store, routers=routers_for(store)).openapi()["paths"]
    finally:
        store.close()
    docs = {name: (REPO / "docs" / name).read_text() for name in ("server.md", "visualsnoop.md")}
    calls = [(method.upper(), path) for path, operations in paths.items() for method in operations]
    assert ("POST", "/images/urls/{content_hash}") in calls and ("DELETE", f"{PREFIX}/image/{{image_id}}") in calls
    for method, path in calls:
        text = docs["visualsnoop.md" if path.startswith(PREFIX + "/") else "server.md"]
        template = re.sub(r"\\\{[a-z_]+\\\}", r"(?:\\{[a-z_]+\\}|[A-Z]+)", re.escape(path))
        assert re.search(rf"`{method} {template}[`?]", text), f"{method} {path}"


def test_the_server_and_commands_docs_agree_on_which_commands_need_the_database():
    """The commands that cannot work through a service (``needs_database``), as both docs name them."""
    from importlib.metadata import entry_points

    needing = {e.name for e in entry_points(group="scrapy.commands") if getattr(e.load(), "needs_database", False)}
    assert needing == {"imgcache-serve", "imgcache-collections", "imgcache-verify"}
    for name in ("server.md", "commands.md"):
        text = " ".join((REPO / "docs" / name).read_text().split())
        (sentence,) = [s for s in re.split(r"(?<=[.;])\s", text) if "need the database itself" in s]
        assert set(re.findall(r"imgcache-[a-z]+", sentence)) == needing, (name, sentence)


def package_map() -> list[tuple[str, set[str]]]:
    """CONTRIBUTING.md's map of the package: (the line's path, the modules it names), in order."""
    text = (REPO / "CONTRIBUTING.md").read_text()
    (block,) = re.findall(r"## Layout\n.*?```text\n(.*?)```", text, flags=re.S)
    entries: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line[:1].strip():
            key, _, rest = line.partition(" ")
            entries.append((key, rest))
        else:  # a continuation of the entry above
            entries[-1] = (entries[-1][0], entries[-1][1] + " " + line)
    out = []
    for key, rest in entries:
        if not key.endswith("/"):
            out.append((key, {key}))
            continue
        named = set(re.findall(r"(?<![\w/.])([\w/]+\.py|[\w]+/)(?![\w/])", rest))
        out.append((key, {key + name for name in named}))
    return out


def package_modules() -> set[str]:
    package = REPO / "scrapy_imgcache"
    return {str(p.relative_to(package)) for p in package.rglob("*.py") if "migrations" not in p.parts}


def test_the_contributing_map_names_every_module_once_and_nothing_else():
    named = [m for _, modules in package_map() for m in modules]
    modules = package_modules()
    assert sorted(m for m in named if m.endswith(".py")) == sorted(modules)  # each once, none missing
    folders = {m for m in named if m.endswith("/")}
    assert folders == {"store/migrations/"}
    assert all((REPO / "scrapy_imgcache" / f).is_dir() for f in folders)


def test_imports_go_up_the_contributing_map():
    """A module imports only what the map lists on its own line or above (lazy imports too)."""
    from tests.test_package import import_graph

    rank = {m: i for i, (_, modules) in enumerate(package_map()) for m in modules}

    def dotted(path: str) -> str:
        parts = ["scrapy_imgcache", *path.removesuffix(".py").split("/")]
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    line_of = {dotted(path): i for path, i in rank.items() if path.endswith(".py")}
    entries = [key for key, _ in package_map()]
    upward = sorted(
        f"{a} (line {line_of[a] + 1}: {entries[line_of[a]]}) imports {b} (line {line_of[b] + 1}: {entries[line_of[b]]})"
        for a, deps in import_graph(lazy=True).items()
        for b in deps
        if line_of[b] > line_of[a]
    )
    assert upward == []
    assert line_of["scrapy_imgcache.store.sql"] > line_of["scrapy_imgcache.config"]  # (the ranks are read)


def test_the_store_doc_layout_table_names_every_module():
    """docs/store.md's table of the package: every module and folder of it, by its path."""
    text = (REPO / "docs" / "store.md").read_text()
    table = text[text.index("## Layout of the package") :]
    named = set(re.findall(r"`([\w/]+\.py|[\w/]+/)`", table))
    missing = sorted(m for m in package_modules() if m not in named and m.rsplit("/", 1)[-1] != "__init__.py")
    assert missing == []
    assert sorted(n for n in named if not (REPO / "scrapy_imgcache" / n).exists()) == []
