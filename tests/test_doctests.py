"""The examples in the package's docstrings run, and hold (no database: they are pure)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import triangles_polars

MODULES = sorted(info.name for info in pkgutil.iter_modules(triangles_polars.__path__, "triangles_polars."))
# Modules whose public API is explained by examples; losing them all would go unnoticed otherwise.
DOCUMENTED = {
    "triangles_polars.detect",
    "triangles_polars.hygiene",
    "triangles_polars.masking",
    "triangles_polars.schema",
    "triangles_polars.settings",
    "triangles_polars.stream",
    "triangles_polars.symbols",
}


def examples(module: ModuleType) -> list[doctest.DocTest]:
    return [test for test in doctest.DocTestFinder().find(module) if test.examples]


# Every product module with examples (importing a module runs no database code).
WITH_EXAMPLES = [name for name in MODULES if examples(importlib.import_module(name))]


def test_the_documented_modules_have_examples() -> None:
    assert set(WITH_EXAMPLES) >= DOCUMENTED, DOCUMENTED - set(WITH_EXAMPLES)
    detect = importlib.import_module("triangles_polars.detect")
    hygiene = importlib.import_module("triangles_polars.hygiene")
    for function in (hygiene.flag_bars, detect.find_pivots, detect.triangles_from_pivots):
        assert ">>> " in (function.__doc__ or ""), f"{function.__qualname__} has no example"


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_doctests(name: str) -> None:
    tests = examples(importlib.import_module(name))
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (see above)"
