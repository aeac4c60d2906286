"""The package's shape: no import cycles, light modules stay light, the public names are typed."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "scrapy_imgcache"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """The package modules ``path`` imports when it is imported: module-level statements,
    not those inside functions or ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(sub, ast.Import):
                found |= {a.name for a in sub.names if a.name.startswith("scrapy_imgcache")}
            elif isinstance(sub, ast.ImportFrom):
                base = (package[: len(package) - sub.level + 1] if sub.level else []) + (sub.module or "").split(".")
                target = ".".join(p for p in base if p)
                if target.startswith("scrapy_imgcache"):
                    found.add(target)
                    found |= {f"{target}.{a.name}" for a in sub.names}
    return found


def test_the_package_has_no_import_cycles():
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    graph = {name: {m for m in top_level_imports(path) if m in modules and m != name} for name, path in modules.items()}
    # a package imports its submodules' names through them: an edge to the package is an edge
    # to its __init__ only, which is what the graph holds
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert len(graph) > 30
    # the graph is the real one: known edges are in it (so a cycle would be seen)
    assert {"scrapy_imgcache.context", "scrapy_imgcache.view"} <= graph["scrapy_imgcache.pipelines"]
    assert "scrapy_imgcache.store.base" in graph["scrapy_imgcache.store.sql"]


HEAVY = ("sqlalchemy", "numpy", "PIL", "imagehash", "scipy", "alembic")


@pytest.mark.parametrize(
    "module", ["scrapy_imgcache.store.base", "scrapy_imgcache.config", "scrapy_imgcache.store.remote"]
)
def test_light_modules_load_no_database_or_imaging_library(module):
    """Reading settings or talking to a remote cache once loaded SQLAlchemy, NumPy, Pillow and
    imagehash (1.5-1.8 s): these modules must import without them."""
    code = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_the_public_names_are_typed_for_users(tmp_path):
    """``py.typed`` is only worth something if a user's type checker sees real signatures."""
    user = tmp_path / "user.py"
    user.write_text(
        "from scrapy_imgcache import ImgCachePipeline, open_store\n"
        "store = open_store('sqlite:///x.sqlite3', files_store='files')\n"
        "store.put(b'', url=1, client_name='me')\n"
        "reveal_type(ImgCachePipeline.results_memory)\n"
    )
    # (mypy cannot see through an editable install's import hook: it reads the sources)
    env = {**os.environ, "MYPYPATH": str(PACKAGE.parent)}
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent", str(user)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert 'Argument "url" to "put" of "Store" has incompatible type "int"; expected "str"' in done.stdout, done.stdout
    assert 'Revealed type is "int"' in done.stdout or 'Revealed type is "builtins.int"' in done.stdout, done.stdout
