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


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path, lazy: bool = False, types: bool = False) -> set[str]:
    """The package modules ``path`` imports when it is imported (module-level statements), with
    ``lazy`` also those its functions and methods import when they run, and with ``types`` those
    of its ``if TYPE_CHECKING:`` blocks too, which only a type checker follows."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found: set[str] = set()

    def walk(nodes: list[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) and not types:
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("scrapy_imgcache"))
            elif isinstance(node, ast.ImportFrom):
                base = (package[: len(package) - node.level + 1] if node.level else []) + (node.module or "").split(".")
                target = ".".join(p for p in base if p)
                if target.startswith("scrapy_imgcache"):
                    # "from . import nearsig" needs the submodule, not what the package's
                    # __init__ defines; a name that is no submodule is the module's own
                    subs = {a.name for a in node.names if is_module(f"{target}.{a.name}")}
                    found.update(f"{target}.{name}" for name in subs)
                    if len(subs) < len(node.names):
                        found.add(target)
            elif lazy or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(list(ast.iter_child_nodes(node)))

    walk(list(tree.body))
    return found


def import_graph(lazy: bool, types: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports. A package imports its submodules' names
    through them: an edge to a package is an edge to its ``__init__`` only."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts}
    return {
        name: {m for m in imports_of(path, lazy, types) if m in modules and m != name} for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name)):
            return found
    return None


@pytest.mark.parametrize(
    ("lazy", "types"),
    [(False, False), (True, False), (True, True)],
    ids=["module-level", "with-lazy-imports", "with-type-imports"],
)
def test_the_package_has_no_import_cycles(lazy, types):
    """Not even through imports inside functions, nor through imports for the type checker: a
    lazy import is still a dependency, a type one still says a module needs another's
    definitions, and a cycle through either is two modules that each need the other (as
    hashing and imaging, config and store, view and the pipeline did)."""
    graph = import_graph(lazy, types)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
    assert len(graph) > 30
    # the graph is the real one: known edges are in it (so a cycle would be seen)
    assert {"scrapy_imgcache.context", "scrapy_imgcache.view"} <= graph["scrapy_imgcache.pipelines"]
    assert "scrapy_imgcache.store.base" in graph["scrapy_imgcache.store.sql"]
    # Inspector.inspect imports the Pillow work when it first runs: an edge of the lazy graph only
    assert ("scrapy_imgcache.imaging" in graph["scrapy_imgcache.hashing"]) == lazy


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}}) == ["b", "c", "b"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def private_imports(path: Path) -> list[str]:
    """``from scrapy_imgcache.x import _name`` (or a relative one): another module's private name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("scrapy_imgcache")):
            found += [f"{path}: {a.name}" for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    return found


def test_no_module_imports_another_modules_private_names(tmp_path):
    """A private name is its module's to change; one imported elsewhere is an interface in
    hiding (the package, its tests and its benchmarks alike)."""
    repo = PACKAGE.parent
    files = [*PACKAGE.rglob("*.py"), *(repo / "tests").rglob("*.py"), *(repo / "benchmarks").rglob("*.py")]
    assert [hit for path in files for hit in private_imports(path)] == []
    offender = tmp_path / "offender.py"
    offender.write_text("from scrapy_imgcache.config import DEFAULTS, _secret\nfrom .sibling import _x\n")
    assert private_imports(offender) == [f"{offender}: _secret", f"{offender}: _x"]


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
    # (mypy cannot see through an editable install's import hook: it reads the sources). Our
    # modules are followed, the libraries under them are not: what is checked is our names'
    # signatures, and analysing Scrapy, Twisted and SQLAlchemy cold took 20 of this test's 23 s
    env = {**os.environ, "MYPYPATH": str(PACKAGE.parent)}
    libraries = (
        "scrapy",
        "twisted",
        "sqlalchemy",
        "PIL",
        "numpy",
        "fsspec",
        "alembic",
        "httpx",
        "fastapi",
        "itemadapter",
    )
    config = tmp_path / "mypy.ini"
    config.write_text(
        "[mypy]\nfollow_imports = silent\n"
        + "".join(f"\n[mypy-{name},{name}.*]\nfollow_imports = skip\n" for name in libraries)
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-incremental", str(user)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert 'Argument "url" to "put" of "Store" has incompatible type "int"; expected "str"' in done.stdout, done.stdout
    assert 'Revealed type is "int"' in done.stdout or 'Revealed type is "builtins.int"' in done.stdout, done.stdout


def test_the_benchmarks_and_the_tests_stand_on_their_own():
    """The benchmarks import nothing of the tests (what both need is in the package:
    ``server/process.py`` starts a service for either), and no test module star-imports (the
    demo's photographs are named one by one in tests/helpers.py)."""
    repo = PACKAGE.parent

    def imported(path: Path) -> set[str]:
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module + (".*" if any(a.name == "*" for a in node.names) else ""))
        return found

    benchmarks = {p.name: imported(p) for p in (repo / "benchmarks").rglob("*.py")}
    assert len(benchmarks) > 5
    assert {name: sorted(m for m in found if m.split(".")[0] == "tests") for name, found in benchmarks.items()} == {
        name: [] for name in benchmarks
    }
    stars = [
        f"{p.relative_to(repo)}: {m}" for p in (repo / "tests").rglob("*.py") for m in imported(p) if m.endswith(".*")
    ]
    assert stars == []
    assert "scrapy_imgcache.server.process" in benchmarks["bench_server.py"]  # (the scan sees real imports)


def long_functions(path: Path, limit: int = 60) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > limit
    ]


def test_no_function_of_the_package_is_over_60_lines(tmp_path):
    found = {
        (str(path.relative_to(PACKAGE)), name): lines
        for path in PACKAGE.rglob("*.py")
        for name, lines in long_functions(path)
    }
    assert found == {}
    sample = tmp_path / "long.py"
    sample.write_text("def f():\n" + "    x = 1\n" * 60 + "\n\ndef g():\n    pass\n")
    assert long_functions(sample) == [("f", 61)]
