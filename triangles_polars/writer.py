"""The sink: chunks of events into PostgreSQL through ADBC bulk ingest, one transaction each.

Each chunk commits together with its row in the run ledger and its coverage, so a rerun skips
exactly the chunks that committed (``docs/contract.md#writing-idempotency-and-faults``). A task
costs one transaction beyond its chunks: its runs are registered (and purged) before its first
chunk, each run is marked done in its last chunk's transaction, and a task's last chunks, one per
strength, share one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import polars as pl

from triangles_polars.chunks import Chunk
from triangles_polars.coverage import Coverage, CoverageKey, settings_key
from triangles_polars.db import Session, fetch_all, qualified
from triangles_polars.ledger import RunLedger, RunState, ensure_tables, run_key_fields
from triangles_polars.locks import LockKey, require_held
from triangles_polars.settings import RunConfig, Task, TimeRange
from triangles_polars.summary import WriteStats

WRITER_NAME = "triangles_writer"

__all__ = ["WRITER_NAME", "ChunkWriter", "WriteStats"]


class ChunkWriter:
    """Writes one task's chunks. Nothing touches the database before the first chunk arrives."""

    def __init__(self, session: Session, settings: RunConfig, task: Task) -> None:
        self.session, self.settings, self.task = session, settings, task
        # Set by the task before its last chunks: where the bars read end (coverage stops there).
        self.newest_close: datetime | None = None
        self.schema, self.table_name = settings.tables.events_parts
        self.table = qualified(self.schema, self.table_name)
        self.ledger = RunLedger(settings.tables.events, self.schema)
        self.coverage = Coverage(self.schema)
        self.settings_key = settings_key(settings, task)
        self.stats = WriteStats()
        self.runs: dict[int, RunState] | None = None  # by strength once started; empty without a ledger
        self.chunks_of: dict[int, int] = {}  # by strength: chunks seen, for runs still unfinished

    def _start(self, cur: Any) -> dict[int, RunState]:
        """Create the tables if missing and register one run per strength (in the caller's transaction)."""
        s, t = self.settings, self.task
        ensure_tables(cur, s.tables.events, self.schema, self.table_name)
        if not s.ledger:  # an update: coverage alone says where to go on
            return {}
        fields = [run_key_fields(s, t, k) for k in t.strengths]
        span = t.time_range
        states = self.ledger.begin(cur, fields, s.write.resume, span.start, span.end_exclusive)
        return dict(zip(t.strengths, states, strict=True))

    def _begin(self, cur: Any) -> tuple[dict[int, RunState], int | None]:
        """Start; with ``--purge``, delete the range of every run not purged yet (resumed purges are
        kept): the rows deleted, None when nothing was purged."""
        runs = self._start(cur)
        todo = [k for k, state in runs.items() if not state.purged] if self.settings.write.purge else []
        if not todo:
            return runs, None
        require_held(cur, self._lock_keys(todo), self.settings.lock_token)
        deleted = purge_range(cur, self.table, self.task.symbol, todo, self.task.time_range)
        self.ledger.record_purge(cur, [runs[k].key for k in todo])
        return runs, deleted

    def write(self, chunk: Chunk) -> bool:
        """Write one chunk unless an unfinished identical run committed it; True if written."""
        return self.write_together([chunk])[0]

    def write_together(self, chunks: list[Chunk]) -> list[bool]:
        """Write chunks of distinct strengths in one transaction (a task's last chunks), each unless
        an unfinished identical run committed it; for each, whether it was written."""
        if self.runs is None:  # a transaction of its own: the chunks' stay short (a kill hits less)
            self.runs, purged = self.session.run("starting the runs", self._begin)
            if purged is not None:  # a purge is a commit of its own (docs/contract.md#modes)
                self.stats.add_writes(WriteStats(commits=1, purged=purged))
        what = f"writing chunk {chunks[0].chunk_no + 1}" + (
            f" and {len(chunks) - 1} more" if chunks[1:] else ""
        )
        self.runs, written, (deleted, inserted) = self.session.run(what, lambda cur: self._write(cur, chunks))
        skipped, commits = len(chunks) - len(written), int(bool(written))
        self.stats.add_writes(WriteStats(chunks=len(chunks), chunks_skipped=skipped, commits=commits))
        self.stats.add_writes(WriteStats(rows_deleted=deleted, rows_inserted=inserted))
        for i in written:
            if self._last(chunks[i]):
                self.chunks_of.pop(chunks[i].strength, None)  # its run was marked done with it
        return [i in written for i in range(len(chunks))]

    def _write(self, cur: Any, chunks: list[Chunk]) -> tuple[dict[int, RunState], list[int], tuple[int, int]]:
        """The transaction: (the runs, the indexes of the chunks written, (rows deleted, inserted))."""
        runs = self.runs or {}
        self.chunks_of |= {c.strength: c.chunk_no + 1 for c in chunks}
        todo = [i for i, c in enumerate(chunks) if not _committed(runs.get(c.strength), c)]
        if not todo:
            return runs, [], (0, 0)
        written = [chunks[i] for i in todo]
        require_held(cur, self._lock_keys([c.strength for c in written]), self.settings.lock_token)
        rows = ingest(cur, self.settings.write.mode, self.schema, self.table_name, self.task.symbol, written)
        ran = [(runs[c.strength].key, c) for c in written if c.strength in runs]
        if ran:
            self.ledger.record_chunks(
                cur, [(key, c.chunk_no, c.span_start, c.span_end, c.size) for key, c in ran]
            )
            if done := {key: c.chunk_no + 1 for key, c in ran if self._last(c)}:
                self.ledger.finish(cur, done)  # a run is done with its last chunk: no transaction of its own
        spans = [(self._coverage_key(c.strength), c.span_start, c.span_end) for c in written]
        self.coverage.extend_many(cur, spans, until=self.newest_close)
        return runs, todo, rows

    def _last(self, chunk: Chunk) -> bool:
        return chunk.span_end >= self.task.time_range.end_exclusive

    def _lock_keys(self, strengths: list[int]) -> list[LockKey]:
        return [LockKey(self.settings.tables.events, self.task.symbol, k) for k in strengths]

    def _coverage_key(self, strength: int) -> CoverageKey:
        return CoverageKey(self.settings.tables.events, self.task.symbol, strength, self.settings_key)

    def finish(self) -> None:
        """Mark done the runs whose last chunk was skipped (an earlier attempt committed it)."""
        left = {state.key: self.chunks_of[k] for k, state in (self.runs or {}).items() if k in self.chunks_of}
        if left:
            self.session.run("finishing the run", lambda cur: self.ledger.finish(cur, left))


def _committed(state: RunState | None, chunk: Chunk) -> bool:
    return state is not None and state.committed(chunk.chunk_no, chunk.span_start, chunk.span_end, chunk.size)


def ingest(
    cur: Any, mode: str, schema: str | None, table: str, symbol: str, chunks: list[Chunk]
) -> tuple[int, int]:
    """Delete (replace mode) and ingest chunks' events in one bulk ingest: (rows deleted, rows inserted)."""
    target = qualified(schema, table)
    events = [c.events for c in chunks if c.size]
    arrow = (pl.concat(events) if len(events) > 1 else events[0]).to_arrow() if events else None
    if mode == "replace":
        deleted = _count(cur, *_replace_delete(target, symbol, chunks))
        if arrow is not None:
            cur.adbc_ingest(table, arrow, mode="append", db_schema_name=schema)
        return deleted, sum(c.size for c in chunks)
    if arrow is None:
        return 0, 0
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS triangles_stage (LIKE {target}) ON COMMIT DELETE ROWS")
    cur.adbc_ingest("triangles_stage", arrow, mode="append", temporary=True)
    return 0, _count(cur, f"INSERT INTO {target} SELECT * FROM triangles_stage ON CONFLICT DO NOTHING", ())


def _replace_delete(target: str, symbol: str, chunks: list[Chunk]) -> tuple[str, tuple[Any, ...]]:
    """One DELETE of every chunk's span (each arm an index range: the planner ORs them)."""
    arms, params = [], [symbol]
    for chunk in chunks:
        n = len(params)
        arm = f"confirmed_at >= ${n + 2} AND confirmed_at < ${n + 3}"
        params += [chunk.strength, chunk.span_start, chunk.span_end]
        if chunk.size:
            # Rows with the same key but another confirmed_at (bars or hygiene changed since they
            # were written) would collide on the primary key: the chunk's c_ts span removes them.
            arm = f"({arm}) OR (c_ts >= ${n + 4} AND c_ts <= ${n + 5})"
            params += [chunk.events["c_ts"].min(), chunk.events["c_ts"].max()]
        arms.append(f"(strength = ${n + 1} AND ({arm}))")
    return f"DELETE FROM {target} WHERE symbol = $1 AND ({' OR '.join(arms)})", tuple(params)


def purge_range(cur: Any, table: str, symbol: str, strengths: list[int], span: TimeRange) -> int:
    """``--purge``: delete every event of the strengths in the task's range; the rows deleted."""
    where = "symbol = $1 AND strength = ANY($2::int[]) AND confirmed_at >= $3 AND confirmed_at < $4"
    return _count(
        cur, f"DELETE FROM {table} WHERE {where}", (symbol, strengths, span.start, span.end_exclusive)
    )


def _count(cur: Any, sql: str, params: tuple[Any, ...]) -> int:
    """Rows affected by a DELETE or INSERT, through ``RETURNING``."""
    return int(fetch_all(cur, f"WITH d AS ({sql} RETURNING 1) SELECT count(*) FROM d", params)[0][0])
