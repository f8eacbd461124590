"""Helpers shared by the test modules: servers, a test's schema, the real command, fault makers.

Fixtures live in ``conftest.py``; everything a test module imports lives here, so no test module
imports another one (or the conftest).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from triangles_polars.bars import ingest_bars
from triangles_polars.db import connect
from triangles_polars.embedded import start_server, stop_server

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


def make_db(server: Server) -> Db:
    """A fresh schema of a random name on ``server``."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    server.execute(f"CREATE SCHEMA {schema}")
    return Db(server, schema)


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


def scalar(url: str, sql: str) -> Any:
    """The one value ``sql`` returns on the server at ``url``."""
    return Server(url, None).execute(sql)[0][0]


def run_on_a_terminal(
    *args: str, env: dict[str, str] | None = None, columns: int = 160, timeout: float = 120
) -> tuple[int, str]:
    """The real console script with stdout and stderr on a pseudo-terminal: its exit code and the
    screen as a user sees it (ANSI codes included). No database URL or PURGE leaks in from the
    environment; ``env`` is added."""
    import pty
    import select
    import time

    master, slave = pty.openpty()
    base = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TRIANGLES_DATABASE_URL", "PURGE")
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "triangles_polars.cli", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env={**base, "TERM": "xterm-256color", "COLUMNS": str(columns), **(env or {})},
    )
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the command exited and closed the terminal
                    break
                if not data:
                    break
                output += data
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), output.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def db_command(db: Db, *args: str) -> list[str]:
    """The ``triangles`` command line ``args`` on ``db``'s server, bars and events tables."""
    tables = ("--bars-table", db.bars_table, "--events-table", db.events_table)
    return [sys.executable, "-m", "triangles_polars.cli", *args, "--database-url", db.url, *tables]


def start_cli(db: Db, *args: str) -> subprocess.Popen[str]:
    """Start :func:`db_command` as a process of its own (signals, locks), its output piped."""
    env = {**os.environ, "TERM": "dumb"}
    return subprocess.Popen(
        db_command(db, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


class CliOutcome(Protocol):
    """What a command run left behind: a ``CompletedProcess`` or an in-process equivalent."""

    returncode: int
    stdout: str
    stderr: str


@dataclass
class InProcessOutcome:
    """What :func:`run_cli_in_process` left behind (the shape of a ``CompletedProcess``)."""

    returncode: int
    stdout: str
    stderr: str


def run_cli_in_process(*args: str, env: dict[str, str | None] | None = None) -> InProcessOutcome:
    """The ``triangles`` command line in this process: ``cli.run``, the console script's own path
    (usage errors and masking included) without its signal thread and its ~0.6 s start-up.

    ``env`` is applied for the call; the database URL variables and ``PURGE`` are cleared unless given.
    """
    from typer.testing import CliRunner

    from triangles_polars import cli

    cleared: dict[str, str | None] = {"DATABASE_URL": None, "TRIANGLES_DATABASE_URL": None, "PURGE": None}
    with CliRunner().isolation(env={**cleared, "TERM": "dumb", **(env or {})}) as (out, err, _):
        code = cli.run(list(args))
        return InProcessOutcome(code, out.getvalue().decode(), err.getvalue().decode())


def assert_one_line_error(result: CliOutcome, code: int, *needles: str) -> None:
    """Exit ``code``, exactly one line on stderr naming every needle, no traceback, nothing on stdout."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    assert result.stdout == ""


def terminate(server: Server, application_name: str, waiting_on_lock: bool = False) -> int:
    """Terminate the product's backends with this application_name; returns how many."""
    condition = "AND wait_event_type = 'Lock'" if waiting_on_lock else ""
    rows = server.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        f"WHERE application_name = $1 AND pid <> pg_backend_pid() {condition}",
        (application_name,),
    )
    return int(rows[0][0])
