"""A database written by the previous release keeps resuming after an upgrade.

The first release kept its ledger in two tables (no ``triangles_meta``), keyed runs by a hash of
the thresholds' ``repr``, and recorded a purge as a progress row with ``chunk_no = -1``. This test
interrupts a real purging backfill (its writer's backend is killed with no retries left), turns
the ledger it left into exactly what the first release would have written for the same command,
then runs the same command again with the current code.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime

import polars as pl
import pytest

from tests.helpers import NQ, Db, terminate
from triangles_polars import RetriesExhausted, backfill
from triangles_polars.chunks import Chunk
from triangles_polars.writer import WRITER_NAME

START, END = "2025-11-17", "2025-11-19"
CHUNK_EVENTS = 40
COMMITTED_BEFORE_THE_KILL = 3
# The command, as the first release saw it: every input to its run key.
RUN = dict(start=START, end=END, chunk_events=CHUNK_EVENTS, purge=True, max_retries=0)


def first_release_key(db: Db) -> str:
    """The first release's run key for :data:`RUN` on ``db``, by its own formula."""
    parts = {
        "symbol": NQ,
        "strength": 5,
        "range": ["2025-11-17T00:00:00+00:00", "2025-11-20T00:00:00+00:00"],
        "anchor": "2025-11-10T00:00:00+00:00",
        "bars": [
            db.bars_table,
            sorted({c: c for c in ("symbol", "ts", "open", "high", "low", "close", "volume")}.items()),
        ],
        "ts": ["open", 60.0],
        "hygiene": [
            "basic",
            "Thresholds(min_price=1000.0, discontinuity=500.0, small_range=5.0, big_gap=150.0, "
            "flat_gap=50.0, reference_window=7)",
        ],
        "events": db.events_table,
        "write": ["replace", True, CHUNK_EVENTS],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def first_release_ledger(db: Db) -> list[str]:
    """The first release's ledger DDL, verbatim, in ``db``'s schema."""
    return [
        f"""CREATE TABLE {db.schema}.triangles_runs (
  run_key text PRIMARY KEY, events_table text NOT NULL, symbol text NOT NULL,
  strength smallint NOT NULL, range_start timestamptz NOT NULL, range_end timestamptz NOT NULL,
  status text NOT NULL, chunks integer NOT NULL, started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz)""",
        f"""CREATE TABLE {db.schema}.triangles_progress (
  run_key text NOT NULL, chunk_no integer NOT NULL, span_start timestamptz NOT NULL,
  span_end timestamptz NOT NULL, events integer NOT NULL,
  committed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_key, chunk_no))""",
    ]


def rewrite_as_first_release(db: Db, legacy_key: str) -> None:
    """Replace the current ledger by the first release's, holding the same (interrupted) run.

    Every table but the bars and events is dropped (the first release had no others); the run
    and its chunks move to the legacy key, and the purge becomes a chunk -1 progress row.
    """
    s = db.schema
    db.execute(f"ALTER TABLE {s}.triangles_runs RENAME TO runs_now")
    db.execute(f"ALTER TABLE {s}.triangles_progress RENAME TO progress_now")
    for (table,) in db.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = $1 "
        "AND tablename NOT IN ('bars_1m', 'triangle_events', 'runs_now', 'progress_now')",
        (s,),
    ):
        db.execute(f"DROP TABLE {s}.{table}")
    for ddl in first_release_ledger(db):
        db.execute(ddl)
    db.execute(
        f"""INSERT INTO {s}.triangles_runs (run_key, events_table, symbol, strength, range_start,
            range_end, status, chunks, started_at, finished_at)
            SELECT $1, events_table, symbol, strength, range_start, range_end, status, chunks,
            started_at, finished_at FROM {s}.runs_now""",
        (legacy_key,),
    )
    db.execute(
        f"""INSERT INTO {s}.triangles_progress (run_key, chunk_no, span_start, span_end, events, committed_at)
            SELECT $1, chunk_no, span_start, span_end, events, committed_at FROM {s}.progress_now""",
        (legacy_key,),
    )
    # The purge's own transaction recorded it as chunk -1 over the whole range, with the rows it deleted.
    db.execute(
        f"""INSERT INTO {s}.triangles_progress (run_key, chunk_no, span_start, span_end, events, committed_at)
            SELECT $1, -1, range_start, range_end, 0, started_at FROM {s}.runs_now WHERE purged""",
        (legacy_key,),
    )
    db.execute(f"DROP TABLE {s}.runs_now")
    db.execute(f"DROP TABLE {s}.progress_now")


def test_a_run_interrupted_under_the_first_release_resumes_after_the_upgrade(
    db: Db, nq_bars: pl.DataFrame
) -> None:
    db.load(nq_bars)
    s = db.schema

    def kill_the_writer(chunk: Chunk, skipped: bool) -> None:
        # After the commit of chunk 2 its idle connection dies: with no retries, the run stops.
        if chunk.chunk_no == COMMITTED_BEFORE_THE_KILL - 1:
            assert terminate(db.server, WRITER_NAME) >= 1

    with pytest.raises(RetriesExhausted):
        backfill(db.settings(**RUN), on_chunk=kill_the_writer)

    [(key_now, status, purged)] = db.execute(f"SELECT run_key, status, purged FROM {s}.triangles_runs")
    assert status == "running" and purged
    committed: list[tuple[int, datetime, datetime, int, datetime]] = db.execute(
        f"SELECT chunk_no, span_start, span_end, events, committed_at FROM {s}.triangles_progress "
        "ORDER BY chunk_no"
    )
    assert [row[0] for row in committed] == list(range(COMMITTED_BEFORE_THE_KILL))
    assert all(row[3] > 0 for row in committed)  # real rows that a repeated purge would delete

    legacy_key = first_release_key(db)
    assert legacy_key != key_now  # the upgrade has to find the run under its old name
    rewrite_as_first_release(db, legacy_key)
    assert db.execute("SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", (s,)) == [
        ("bars_1m",),
        ("triangle_events",),
        ("triangles_progress",),
        ("triangles_runs",),
    ]
    assert db.execute(f"SELECT chunk_no FROM {s}.triangles_progress ORDER BY chunk_no") == [
        (-1,),
        *((n,) for n in range(COMMITTED_BEFORE_THE_KILL)),
    ]

    # The same command with the current code.
    summary = backfill(db.settings(**RUN))
    assert summary.chunks_skipped == COMMITTED_BEFORE_THE_KILL
    assert summary.chunks > COMMITTED_BEFORE_THE_KILL
    assert summary.purged == 0  # the purge is not redone ...
    assert summary.commits == summary.chunks - summary.chunks_skipped  # ... nor committed again

    # the committed chunks were not redone, and now belong to the run's current key
    again = db.execute(
        f"SELECT chunk_no, span_start, span_end, events, committed_at FROM {s}.triangles_progress "
        f"WHERE chunk_no < {COMMITTED_BEFORE_THE_KILL} ORDER BY chunk_no"
    )
    assert again == committed
    assert db.execute(f"SELECT DISTINCT run_key FROM {s}.triangles_progress") == [(key_now,)]
    assert db.execute(f"SELECT run_key, status, purged FROM {s}.triangles_runs") == [(key_now, "done", True)]
    # the ledger is at version 2, and the first release's purge marker is gone
    assert db.execute(f"SELECT value FROM {s}.triangles_meta WHERE name = 'ledger_version'") == [("2",)]
    assert db.execute(f"SELECT count(*) FROM {s}.triangles_progress WHERE chunk_no = -1") == [(0,)]

    # the events equal one clean run's
    backfill(db.settings(start=START, end=END, chunk_events=CHUNK_EVENTS, events_table=f"{s}.clean"))
    clean = db.events(table="clean")
    assert clean.height > COMMITTED_BEFORE_THE_KILL * CHUNK_EVENTS
    assert db.events().equals(clean)
