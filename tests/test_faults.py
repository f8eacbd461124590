"""Faults on real servers: killed backends (pg_terminate_backend), stopped and restarted servers.

Kills are made deterministic with a lock: another connection takes an ACCESS EXCLUSIVE lock on
the table the product is about to touch, a thread waits until the product's backend (found by
its ``application_name``) is blocked on that lock, terminates it, then releases the lock.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import polars as pl
import pytest

from tests.helpers import NQ, Db, Server, run_cli, terminate
from triangles_polars import RetriesExhausted, backfill
from triangles_polars.chunks import Chunk
from triangles_polars.db import connect
from triangles_polars.source import READER_NAME
from triangles_polars.writer import WRITER_NAME


class LockedKill:
    """Hold an exclusive lock on ``table``; kill the first ``application_name`` backend blocked on it."""

    def __init__(self, server: Server, table: str, application_name: str) -> None:
        self.server = server
        self.application_name = application_name
        self.killed = 0
        self._conn = connect(server.url)
        with self._conn.cursor() as cur:
            cur.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline and not self.killed:
                self.killed = terminate(self.server, self.application_name, waiting_on_lock=True)
                time.sleep(0.005)
        finally:
            self._conn.rollback()
            self._conn.close()

    def join(self) -> int:
        self._thread.join(timeout=40)
        return self.killed


def clean_run(db: Db, **kwargs: Any) -> pl.DataFrame:
    """The events a clean single run writes, in a table of their own."""
    backfill(db.settings(**kwargs, events_table=f"{db.schema}.clean"))
    return db.events(table="clean")


def test_writer_killed_mid_transaction_and_idle_run_completes(db: Db, nq_bars: pl.DataFrame) -> None:
    db.load(nq_bars)
    range_ = dict(start="2025-11-17", end="2025-11-19", chunk_events=50)
    expected = clean_run(db, **range_)
    backfill(db.settings(**range_))  # creates the table; the faulty run then replaces
    kills: list[LockedKill] = []
    idle_kills = 0

    def on_chunk(chunk: Chunk, skipped: bool) -> None:
        nonlocal idle_kills
        if chunk.chunk_no in (0, 2):  # the next chunk's DELETE blocks on the lock and is killed
            kills.append(LockedKill(db.server, db.events_table, WRITER_NAME))
        elif chunk.chunk_no == 4:  # the writer's idle connection dies between transactions
            idle_kills += terminate(db.server, WRITER_NAME)

    summary = backfill(db.settings(**range_, resume=False), on_chunk=on_chunk)  # rewrite the covered range
    killed = sum(k.join() for k in kills) + idle_kills
    assert killed == 3
    assert summary.retries == killed
    assert summary.chunks == summary.commits > 5
    assert db.events().equals(expected)


@pytest.mark.parametrize("reader", ["connectorx", "adbc"])
def test_reader_killed_mid_read_run_completes(db: Db, nq_bars: pl.DataFrame, reader: str) -> None:
    db.load(nq_bars)
    range_ = dict(start="2025-11-20", end="2025-11-21", reader=reader)
    expected = clean_run(db, **range_)
    kill = LockedKill(db.server, db.bars_table, READER_NAME)
    summary = backfill(db.settings(**range_))
    assert kill.join() == 1
    assert summary.retries == 1
    assert db.events().equals(expected)


def test_retries_exhausted_then_same_call_resumes_without_redoing(own_db: Db, nq_bars: pl.DataFrame) -> None:
    db = own_db
    db.load(nq_bars)
    range_ = dict(start="2025-11-17", end="2025-11-19", chunk_events=200)
    expected = clean_run(db, **range_)

    def stop_after_second(chunk: Chunk, skipped: bool) -> None:
        if chunk.chunk_no == 1:
            db.server.stop()

    with pytest.raises(RetriesExhausted):
        backfill(db.settings(**range_, max_retries=2), on_chunk=stop_after_second)
    db.server.start()
    progress = (
        f"{db.schema}.triangles_progress WHERE run_key IN "
        f"(SELECT run_key FROM {db.schema}.triangles_runs WHERE events_table = '{db.events_table}')"
    )
    committed = db.execute(f"SELECT chunk_no, committed_at FROM {progress} ORDER BY chunk_no")
    assert [r[0] for r in committed] == [0, 1]  # exactly the chunks before the stop
    boundary = db.execute(f"SELECT span_end FROM {progress} AND chunk_no = 1")[0][0]
    assert db.events(f"confirmed_at < '{boundary.isoformat()}'").equals(
        expected.filter(pl.col("confirmed_at") < boundary)
    )
    assert db.events(f"confirmed_at >= '{boundary.isoformat()}'").height == 0  # nothing half-written

    summary = backfill(db.settings(**range_, max_retries=2))
    assert summary.chunks_skipped == 2
    assert summary.commits == summary.chunks - 2
    assert db.events().equals(expected)
    # the committed chunks were not redone
    again = db.execute(f"SELECT chunk_no, committed_at FROM {progress} AND chunk_no < 2 ORDER BY chunk_no")
    assert again == committed


def test_server_restart_within_backoff_is_survived(own_db: Db, nq_bars: pl.DataFrame) -> None:
    db = own_db
    db.load(nq_bars)
    range_ = dict(start="2025-11-17", end="2025-11-18", chunk_events=200)
    expected = clean_run(db, **range_)
    restarter: list[threading.Thread] = []

    def restart_after_first(chunk: Chunk, skipped: bool) -> None:
        if chunk.chunk_no == 0:
            db.server.stop()

            def start_later() -> None:
                time.sleep(1.0)
                db.server.start()

            restarter.append(threading.Thread(target=start_later))
            restarter[0].start()

    summary = backfill(db.settings(**range_, max_retries=10, backoff_s=0.1), on_chunk=restart_after_first)
    restarter[0].join()
    assert summary.retries >= 1
    assert summary.chunks_skipped == 0 and summary.commits == summary.chunks
    assert db.events().equals(expected)


def test_cli_exit_3_when_server_goes_away_then_same_command_finishes(
    own_db: Db, nq_bars: pl.DataFrame
) -> None:
    db = own_db
    db.load(nq_bars)
    args = [
        "backfill",
        NQ,
        "2025-11-10",
        "2025-11-14",
        "--database-url",
        db.url,
        "--bars-table",
        db.bars_table,
        "--events-table",
        db.events_table,
        "--chunk-events",
        "5",
        "--max-retries",
        "1",
        "--backoff",
        "0.05",
        "--json",
    ]
    stopped = threading.Event()

    def stop_when_three_chunks_committed() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                rows = db.execute(f"SELECT count(*) FROM {db.schema}.triangles_progress")
            except Exception:
                rows = [(0,)]
            if rows[0][0] >= 3:
                db.server.stop()
                stopped.set()
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=stop_when_three_chunks_committed)
    watcher.start()
    first = run_cli(*args)
    watcher.join()
    assert stopped.is_set()
    assert first.returncode == 3, first.stderr
    assert first.stdout == ""
    assert len(first.stderr.strip().splitlines()) == 1 and "Traceback" not in first.stderr
    assert "unreachable" in first.stderr

    db.server.start()
    committed = db.execute(f"SELECT count(*) FROM {db.schema}.triangles_progress")[0][0]
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["chunks_skipped"] == committed >= 3
    assert summary["commits"] == summary["chunks"] - committed
    expected = clean_run(db, start="2025-11-10", end="2025-11-14")
    assert db.events().equals(expected)
