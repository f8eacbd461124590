"""Every command needs only what pyproject.toml declares; matplotlib (the ``plot`` extra) stays optional.

Each command's module path (the CLI module and each module a command imports when it runs) is
imported in a fresh interpreter, and every third-party top-level module that this loads must come
from a distribution that ``[project].dependencies`` declares, or that one of those requires (for
example typer's own dependencies). A second check reads the product's source: a third-party module
the product imports itself must be declared by name, in ``[project].dependencies`` when imported at
module level, at least in an extra when imported inside a function. No database.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import tomllib
from functools import cache
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "triangles_polars"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
# Modules the task names besides those the CLI imports lazily (kept even before a command uses them).
ALSO = ("pipeline", "export", "bars", "demo", "plot", "embedded", "dbn", "continuous", "synthetic")

# Imports the given modules in order; prints each top-level module they added to sys.modules, and
# whether it is the standard library's (by name, or by where its file is: e.g. _sysconfigdata_*).
PROBE = """
import importlib, json, sys, sysconfig
before = set(sys.modules)
for name in sys.argv[1:]:
    importlib.import_module(name)
stdlib = tuple(sysconfig.get_paths()[key] + "/" for key in ("stdlib", "platstdlib"))
site = tuple(sysconfig.get_paths()[key] + "/" for key in ("purelib", "platlib"))
added = {}
for name in sorted(set(sys.modules) - before):
    top = name.partition(".")[0]
    file = getattr(sys.modules.get(top), "__file__", None) or ""
    added[top] = top in sys.stdlib_module_names or (file.startswith(stdlib) and not file.startswith(site))
print(json.dumps(added))
"""


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(specs: list[str]) -> set[str]:
    return {normalise(Requirement(spec).name) for spec in specs}


DECLARED = requirement_names(PROJECT["dependencies"])
EXTRAS = {
    extra: requirement_names(specs) for extra, specs in PROJECT.get("optional-dependencies", {}).items()
}


def closure(names: set[str]) -> set[str]:
    """The distributions ``names`` pull in when installed without extras (transitively)."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            specs = requires(name) or []
        except PackageNotFoundError:
            continue
        for spec in specs:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(normalise(requirement.name))
    return seen


@cache
def distributions() -> dict[str, set[str]]:
    """Top-level import name → normalised names of the installed distributions providing it."""
    return {name: {normalise(d) for d in dists} for name, dists in packages_distributions().items()}


def is_third_party(name: str) -> bool:
    return not (
        name in sys.stdlib_module_names
        or name in sys.builtin_module_names
        or name == "triangles_polars"
        or name == "__main__"
    )


def lazy_imports_of_the_cli() -> set[str]:
    """Modules that ``cli.py`` imports inside its functions: what each command loads when it runs."""
    tree = ast.parse((PACKAGE / "cli.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return found


def command_paths() -> list[str]:
    paths = lazy_imports_of_the_cli() | {f"triangles_polars.{name}" for name in ALSO}
    assert "triangles_polars.pipeline" in paths and "triangles_polars.demo" in paths
    return sorted(paths)


def probe(*modules: str) -> dict[str, bool]:
    """Import ``modules`` in order in a fresh interpreter: the top-level modules they loaded."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *modules], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, f"importing {modules} failed:\n{proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def import_problems(loaded: dict[str, bool]) -> list[str]:
    """Third-party modules from undeclared distributions, and matplotlib loaded at module level."""
    allowed = closure(DECLARED)
    problems = []
    for name in (n for n, in_stdlib in loaded.items() if not in_stdlib and is_third_party(n)):
        providers = distributions().get(name)
        if name.startswith("__editable__"):  # the editable install's own import hook
            continue
        if not providers or not providers & allowed:
            problems.append(f"{name} (from {sorted(providers or ['?'])}) is not declared")
    if "matplotlib" in loaded:
        problems.append("matplotlib is imported at module level")
    return problems


def test_every_command_path_imports_only_declared_distributions() -> None:
    paths = command_paths()
    # Both checks are about the union of what the paths load, so one interpreter importing every
    # path decides pass or fail; only a failure pays one interpreter per path, to name the culprits.
    loaded = probe("triangles_polars.cli", *paths)
    if problems := import_problems(loaded):
        culprits = {
            path: found for path in paths if (found := import_problems(probe("triangles_polars.cli", path)))
        }
        raise AssertionError(f"{problems}; along these command paths: {culprits}")
    # the commands' ordinary imports really load the declared libraries (the probe sees them)
    assert {"polars", "typer"} <= set(loaded)


def runtime_imports(path: Path) -> list[tuple[str, bool, int]]:
    """``(top-level name, imported lazily, line)`` of each import that runs (not TYPE_CHECKING-only)."""
    found: list[tuple[str, bool, int]] = []

    def visit(nodes: list[ast.stmt], lazy: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((alias.name.partition(".")[0], lazy, node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level == 0 and node.module:
                    found.append((node.module.partition(".")[0], lazy, node.lineno))
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse, lazy)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(node.body, True)
            elif isinstance(node, ast.Try):
                optional = any(
                    h.type is not None and "ImportError" in ast.unparse(h.type) for h in node.handlers
                )
                visit(node.body, lazy or optional)
                for handler in node.handlers:
                    visit(handler.body, lazy)
                visit(node.orelse, lazy)
                visit(node.finalbody, lazy)
            else:
                for field in ("body", "orelse", "finalbody"):
                    block = getattr(node, field, None)
                    if isinstance(block, list):
                        visit(block, lazy)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body, lazy)

    visit(ast.parse(path.read_text(encoding="utf-8")).body, False)
    return found


def test_the_products_own_imports_are_declared_by_name() -> None:
    optional = set().union(*EXTRAS.values())
    problems = []
    for path in sorted(PACKAGE.glob("*.py")):
        for name, lazy, line in runtime_imports(path):
            if not is_third_party(name):
                continue
            providers = distributions().get(name, {normalise(name)})
            where = f"{path.relative_to(ROOT)}:{line} imports {name}"
            if lazy and not providers & (DECLARED | optional):
                problems.append(f"{where}, declared neither in dependencies nor in an extra")
            elif not lazy and not providers & DECLARED:
                problems.append(f"{where} at module level, not in [project].dependencies")
    assert not problems, "\n".join(problems)


def test_runtime_imports_sees_what_the_product_does() -> None:
    """The reader of imports finds module-level, lazy and TYPE_CHECKING-only imports as they are."""
    plot = runtime_imports(PACKAGE / "plot.py")
    assert ("polars", False) in {(name, lazy) for name, lazy, _ in plot}
    assert {lazy for name, lazy, _ in plot if name == "matplotlib"} == {True}  # never at module level
    assert "plot" in EXTRAS and "matplotlib" in EXTRAS["plot"] and "matplotlib" not in DECLARED
