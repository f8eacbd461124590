"""Sink stage: events into PostgreSQL through ADBC bulk ingest, one transaction per chunk.

A chunk covers a ``confirmed_at`` span; spans tile ``[START, END + 1 day)`` without gaps, so in
``replace`` mode deleting each chunk's span before ingesting leaves exactly the events a clean
run would. Each chunk commits together with a row in ``triangles_progress``; a rerun of the same
command (same run key) skips the chunks already recorded there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from triangles_polars.db import (
    RetryPolicy,
    close_quietly,
    connect,
    qualified,
    quote_ident,
    table_columns,
    with_application_name,
    with_retries,
)
from triangles_polars.detect import EVENT_COLUMNS, EVENT_SCHEMA
from triangles_polars.errors import BadInput
from triangles_polars.settings import BackfillSettings

WRITER_NAME = "triangles_writer"

PROGRESS_TABLE = "triangles_progress"
RUNS_TABLE = "triangles_runs"

EVENT_DDL_TYPES = {
    "symbol": "text",
    "strength": "smallint",
    "confirmed_at": "timestamp with time zone",
    "pattern": "text",
    "a_ts": "timestamp with time zone",
    "b_ts": "timestamp with time zone",
    "c_ts": "timestamp with time zone",
    "a_kind": "text",
    "b_kind": "text",
    "c_kind": "text",
    "a_price": "double precision",
    "b_price": "double precision",
    "c_price": "double precision",
    "leg_ab": "double precision",
    "leg_bc": "double precision",
    "bars_ab": "integer",
    "bars_bc": "integer",
}
assert tuple(EVENT_DDL_TYPES) == EVENT_COLUMNS


# ---------------------------------------------------------------------------- DDL


def events_table_ddl(schema: str | None, table: str) -> list[str]:
    """CREATE statements for the events table (SPEC §4) and its confirmed_at index."""
    name = qualified(schema, table)
    cols = ",\n  ".join(f"{quote_ident(c)} {t} NOT NULL" for c, t in EVENT_DDL_TYPES.items())
    index = quote_ident(f"{table[:40]}_confirmed_at_idx")
    return [
        f"CREATE TABLE IF NOT EXISTS {name} (\n  {cols},\n  PRIMARY KEY (symbol, strength, c_ts, c_kind)\n)",
        f"CREATE INDEX IF NOT EXISTS {index} ON {name} (symbol, strength, confirmed_at)",
    ]


def state_tables_ddl(schema: str | None) -> list[str]:
    """The run and chunk bookkeeping tables, in the events table's schema."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {qualified(schema, RUNS_TABLE)} (
  run_key text PRIMARY KEY, events_table text NOT NULL, symbol text NOT NULL,
  strength smallint NOT NULL, range_start timestamptz NOT NULL, range_end timestamptz NOT NULL,
  status text NOT NULL, chunks integer NOT NULL, started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz)""",
        f"""CREATE TABLE IF NOT EXISTS {qualified(schema, PROGRESS_TABLE)} (
  run_key text NOT NULL, chunk_no integer NOT NULL, span_start timestamptz NOT NULL,
  span_end timestamptz NOT NULL, events integer NOT NULL,
  committed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_key, chunk_no))""",
    ]


def check_events_table(columns: dict[str, str] | None, name: str) -> bool:
    """True if the table exists and is compatible; False if missing; BadInput if incompatible."""
    if columns is None:
        return False
    problems = [
        f"{col} ({columns.get(col, 'missing')})"
        for col, dtype in EVENT_DDL_TYPES.items()
        if columns.get(col) != dtype
    ]
    if problems:
        raise BadInput(
            f"events table {name!r} exists with an incompatible schema: {', '.join(problems[:4])}"
            f"{' …' if len(problems) > 4 else ''}; use another --events-table or drop it"
        )
    return True


def ensure_tables(cur: Any, settings: BackfillSettings) -> None:
    """Create the events and state tables if missing (in the cursor's transaction)."""
    schema, table = settings.events_table_parts
    exists = check_events_table(table_columns(cur, schema, table), settings.events_table)
    statements = state_tables_ddl(schema) + ([] if exists else events_table_ddl(schema, table))
    for sql in statements:
        cur.execute(sql)


# ---------------------------------------------------------------------------- chunk plan


@dataclass(frozen=True)
class Chunk:
    """One unit of work: the events with ``span_start <= confirmed_at < span_end``."""

    chunk_no: int
    span_start: datetime
    span_end: datetime
    events: pl.DataFrame

    @property
    def size(self) -> int:
        return self.events.height


class Chunker:
    """Cuts a stream of events (sorted by confirmed_at) into chunks of about ``chunk_events``.

    A chunk is cut only once the event after the cut is known, and never inside a run of equal
    ``confirmed_at``; its span ends at that next event, and the last span at ``range_end``. So the
    spans tile the range, and the chunks are the same however the events arrive (all at once or
    slice by slice): a rerun of the same command finds the same chunks to resume.
    """

    def __init__(self, range_start: datetime, range_end: datetime, chunk_events: int) -> None:
        self.range_end = range_end
        self.chunk_events = chunk_events
        self._span_start = range_start
        self._buffer: list[pl.DataFrame] = []
        self._buffered = 0
        self._next_no = 0

    def add(self, events: pl.DataFrame) -> list[Chunk]:
        """Buffer events; return the chunks that are complete."""
        if events.height == 0:
            return []
        self._buffer.append(events)
        self._buffered += events.height
        out: list[Chunk] = []
        while self._buffered > self.chunk_events:
            pending = pl.concat(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
            confirmed = pending["confirmed_at"]
            cut_value = confirmed[self.chunk_events]
            if cut_value == confirmed[self.chunk_events - 1]:
                # never split equal confirmed_at values: cut at the end of their run
                cut = int(confirmed.search_sorted(cut_value, side="right"))
            else:
                cut = self.chunk_events
            if cut >= pending.height:  # the event after the cut is not known yet
                self._buffer = [pending]
                break
            out.append(self._emit(pending.slice(0, cut), confirmed[cut]))
            rest = pending.slice(cut)
            self._buffer, self._buffered = [rest], rest.height
        return out

    def finish(self) -> list[Chunk]:
        """The last chunk (up to ``range_end``); an empty range still gets one chunk."""
        if self._buffered == 0 and self._next_no > 0:
            return []
        pending = pl.concat(self._buffer) if self._buffer else pl.DataFrame(schema=EVENT_SCHEMA)
        self._buffer, self._buffered = [], 0
        return [self._emit(pending, self.range_end)]

    def _emit(self, events: pl.DataFrame, span_end: datetime) -> Chunk:
        chunk = Chunk(self._next_no, self._span_start, span_end, events)
        self._next_no += 1
        self._span_start = span_end
        return chunk


def plan_chunks(
    events: pl.DataFrame, range_start: datetime, range_end: datetime, chunk_events: int
) -> list[Chunk]:
    """All chunks of a complete, sorted event frame (see :class:`Chunker`)."""
    chunker = Chunker(range_start, range_end, chunk_events)
    return chunker.add(events) + chunker.finish()


def run_key(settings: BackfillSettings) -> str:
    """Identity of a run: everything that decides which events are written where."""
    parts = {
        "symbol": settings.symbol,
        "strength": settings.strength,
        "range": [settings.range_start.isoformat(), settings.range_end.isoformat()],
        "anchor": settings.anchor_ts.isoformat(),
        "bars": [settings.bars_table, sorted(settings.column_map.items())],
        "ts": [settings.ts_convention, settings.interval.total_seconds()],
        "hygiene": [settings.profile, repr(settings.thresholds)],
        "events": settings.events_table,
        "write": [settings.mode, settings.purge, settings.chunk_events],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------- writer


@dataclass
class WriteStats:
    """What the sink did (merged into the run summary)."""

    chunks: int = 0
    chunks_skipped: int = 0
    commits: int = 0
    retries: int = 0
    rows_deleted: int = 0
    rows_inserted: int = 0
    purged: int = 0


class EventWriter:
    """Writes chunks, each one transaction, reconnecting with backoff on connection errors."""

    def __init__(
        self,
        url: str,
        settings: BackfillSettings,
        policy: RetryPolicy,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.url = url
        self.settings = settings
        self.policy = policy
        self.on_retry = on_retry
        self.key = run_key(settings)
        self.stats = WriteStats()
        self._conn: Any = None
        self._done: dict[int, tuple[datetime, datetime, int]] | None = None
        schema, table = settings.events_table_parts
        self.schema = schema
        self.table = qualified(schema, table)
        self.runs = qualified(schema, RUNS_TABLE)
        self.progress = qualified(schema, PROGRESS_TABLE)

    # -- connection handling

    def _connection(self) -> Any:
        if self._conn is None:
            self._conn = connect(with_application_name(self.url, WRITER_NAME))
        return self._conn

    def _drop_connection(self) -> None:
        close_quietly(self._conn)
        self._conn = None

    def _transaction(self, what: str, body: Callable[[Any], Any], *, counts: bool = True) -> Any:
        """Run ``body(cursor)`` and commit, as one transaction, retried on connection errors.

        ``counts``: whether the commit counts in the summary (chunks and purge do; bookkeeping
        and DDL do not).
        """

        def attempt() -> Any:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    result = body(cur)
                conn.commit()
                return result
            except BaseException:
                # Whatever failed, this connection's transaction is unusable: start afresh.
                self._drop_connection()
                raise

        def retried(exc: BaseException) -> None:
            self.stats.retries += 1
            if self.on_retry is not None:
                self.on_retry(exc)

        result = with_retries(attempt, what, self.policy, self.url, retried)
        self.stats.commits += counts
        return result

    def close(self) -> None:
        """Close the writer's connection."""
        self._drop_connection()

    # -- steps

    def prepare(self) -> None:
        """Create tables if missing."""
        self._transaction(
            "creating the events table", lambda cur: ensure_tables(cur, self.settings), counts=False
        )

    def begin_run(self) -> dict[int, tuple[datetime, datetime, int]]:
        """Register the run; return the chunks already committed by an unfinished earlier attempt."""
        s = self.settings

        def body(cur: Any) -> dict[int, tuple[datetime, datetime, int]]:
            cur.execute(
                f"SELECT status FROM {self.runs} WHERE run_key = $1 FOR UPDATE", parameters=(self.key,)
            )
            row = cur.fetchone()
            resumable = row is not None and row[0] != "done" and s.resume
            done: dict[int, tuple[datetime, datetime, int]] = {}
            if resumable:
                cur.execute(
                    f"SELECT chunk_no, span_start, span_end, events FROM {self.progress} WHERE run_key = $1",
                    parameters=(self.key,),
                )
                done = {r[0]: (r[1], r[2], r[3]) for r in cur.fetchall()}
            else:
                cur.execute(f"DELETE FROM {self.progress} WHERE run_key = $1", parameters=(self.key,))
            cur.execute(
                f"""INSERT INTO {self.runs} (run_key, events_table, symbol, strength, range_start,
                    range_end, status, chunks) VALUES ($1, $2, $3, $4, $5, $6, 'running', 0)
                    ON CONFLICT (run_key) DO UPDATE SET status = 'running',
                    started_at = now(), finished_at = NULL""",
                parameters=(
                    self.key,
                    s.events_table,
                    s.symbol,
                    s.strength,
                    s.range_start,
                    s.range_end,
                ),
            )
            return done

        return self._transaction("starting the run", body, counts=False)

    def purge(self, done: dict[int, tuple[datetime, datetime, int]]) -> None:
        """Delete every event of the symbol and strength confirmed in the range (once per run)."""
        s = self.settings
        if -1 in done:
            return

        def body(cur: Any) -> int:
            deleted = _delete_count(
                cur,
                f"DELETE FROM {self.table} WHERE symbol = $1 AND strength = $2 "
                "AND confirmed_at >= $3 AND confirmed_at < $4",
                (s.symbol, s.strength, s.range_start, s.range_end),
            )
            self._record(cur, -1, s.range_start, s.range_end, deleted)
            return deleted

        self.stats.purged = self._transaction("purging the range", body)

    def write_chunk(self, chunk: Chunk) -> None:
        """Delete (replace mode) and ingest one chunk, record it, commit: all or nothing."""
        s = self.settings
        table = chunk.events.to_arrow()

        def body(cur: Any) -> tuple[int, int]:
            """Returns (rows deleted, rows inserted); counted only once the commit succeeded."""
            deleted = inserted = 0
            if s.mode == "replace":
                deleted = _delete_count(cur, *self._replace_delete(chunk))
                if chunk.size:
                    cur.adbc_ingest(
                        self.settings.events_table_parts[1],
                        table,
                        mode="append",
                        db_schema_name=self.schema,
                    )
                    inserted = chunk.size
            elif chunk.size:
                cur.execute(
                    f"CREATE TEMP TABLE IF NOT EXISTS triangles_stage (LIKE {self.table}) ON COMMIT DELETE ROWS"
                )
                cur.adbc_ingest("triangles_stage", table, mode="append", temporary=True)
                cur.execute(
                    f"WITH ins AS (INSERT INTO {self.table} SELECT * FROM triangles_stage "
                    "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM ins"
                )
                inserted = int(cur.fetchone()[0])
            self._record(cur, chunk.chunk_no, chunk.span_start, chunk.span_end, chunk.size)
            return deleted, inserted

        deleted, inserted = self._transaction(f"writing chunk {chunk.chunk_no + 1}", body)
        self.stats.rows_deleted += deleted
        self.stats.rows_inserted += inserted
        self.stats.chunks += 1

    # -- helpers

    def _replace_delete(self, chunk: Chunk) -> tuple[str, tuple[Any, ...]]:
        s = self.settings
        sql = (
            f"DELETE FROM {self.table} WHERE symbol = $1 AND strength = $2 "
            "AND ((confirmed_at >= $3 AND confirmed_at < $4)"
        )
        params: tuple[Any, ...] = (s.symbol, s.strength, chunk.span_start, chunk.span_end)
        if chunk.size:
            # Rows with the same key but another confirmed_at (bars or hygiene changed since they
            # were written) would collide on the primary key: the chunk's c_ts span removes them.
            sql += " OR (c_ts >= $5 AND c_ts <= $6)"
            params += (chunk.events["c_ts"].min(), chunk.events["c_ts"].max())
        return sql + ")", params

    def _record(self, cur: Any, chunk_no: int, start: datetime, end: datetime, events: int) -> None:
        cur.execute(
            f"""INSERT INTO {self.progress} (run_key, chunk_no, span_start, span_end, events)
                VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (run_key, chunk_no) DO UPDATE SET span_start = EXCLUDED.span_start,
                span_end = EXCLUDED.span_end, events = EXCLUDED.events, committed_at = now()""",
            parameters=(self.key, chunk_no, start, end, events),
        )

    def write(self, chunk: Chunk) -> bool:
        """Write one chunk unless an unfinished identical run committed it; True if written.

        The first call prepares the tables and registers the run, so a run that fails on bad
        input before its first chunk writes nothing at all.
        """
        if self._done is None:
            self.prepare()
            self._done = self.begin_run()
            if self.settings.purge:
                self.purge(self._done)
        previous = self._done.get(chunk.chunk_no)
        if previous is not None and previous == (chunk.span_start, chunk.span_end, chunk.size):
            self.stats.chunks_skipped += 1
            return False
        self.write_chunk(chunk)
        return True

    def finish_run(self) -> None:
        """Mark the run done: a later identical command starts afresh (replace keeps it idempotent)."""
        total = self.stats.chunks + self.stats.chunks_skipped

        def body(cur: Any) -> None:
            cur.execute(
                f"UPDATE {self.runs} SET status = 'done', chunks = $2, finished_at = now() WHERE run_key = $1",
                parameters=(self.key, total),
            )

        self._transaction("finishing the run", body, counts=False)


def _delete_count(cur: Any, sql: str, params: tuple[Any, ...]) -> int:
    cur.execute(f"WITH d AS ({sql} RETURNING 1) SELECT count(*) FROM d", parameters=params)
    return int(cur.fetchone()[0])
