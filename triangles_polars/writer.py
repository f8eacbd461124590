"""The sink: chunks of events into PostgreSQL through ADBC bulk ingest, one transaction each.

Each chunk commits together with its row in the run ledger, so a rerun skips exactly the
chunks that committed (``docs/contract.md#writing-idempotency-and-faults``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from triangles_polars.chunks import Chunk
from triangles_polars.coverage import Coverage, CoverageKey, settings_key
from triangles_polars.db import Session, TransientError, fetch_all, qualified
from triangles_polars.ledger import RunLedger, RunState, ensure_tables, run_key_fields
from triangles_polars.locks import LockKey, check_held
from triangles_polars.settings import RunConfig, Task

WRITER_NAME = "triangles_writer"


@dataclass
class WriteStats:
    """What the sink did (merged into the run summary); counted only after each commit."""

    chunks: int = 0
    chunks_skipped: int = 0
    commits: int = 0
    rows_deleted: int = 0
    rows_inserted: int = 0
    purged: int = 0


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
        self.runs: dict[int, RunState] = {}

    def _start(self) -> None:
        """Create tables, register one run per strength, purge once per run (resumed purges are kept)."""
        s, t = self.settings, self.task
        self.session.run(
            "creating the events table",
            lambda cur: ensure_tables(cur, s.tables.events, self.schema, self.table_name),
        )
        span = t.time_range
        for k in t.strengths:
            fields = run_key_fields(s, t, k)

            def begin(cur: Any, fields: dict[str, Any] = fields) -> RunState:
                return self.ledger.begin(cur, fields, s.write.resume, span.start, span.end_exclusive)

            self.runs[k] = self.session.run("starting the run", begin)
            if s.write.purge and not self.runs[k].purged:
                self.stats.purged += self._commit("purging the range", lambda cur, k=k: self._purge(cur, k))

    def _purge(self, cur: Any, strength: int) -> int:
        self._check_lock(cur, strength)
        span = (self.task.time_range.start, self.task.time_range.end_exclusive)
        where = "symbol = $1 AND strength = $2 AND confirmed_at >= $3 AND confirmed_at < $4"
        deleted = _count(cur, f"DELETE FROM {self.table} WHERE {where}", (self.task.symbol, strength, *span))
        self.ledger.record_purge(cur, self.runs[strength].key)
        return deleted

    def write(self, chunk: Chunk) -> bool:
        """Write one chunk unless an unfinished identical run committed it; True if written."""
        if not self.runs:
            self._start()
        state = self.runs[chunk.strength]
        if state.committed(chunk.chunk_no, chunk.span_start, chunk.span_end, chunk.size):
            self.stats.chunks_skipped += 1
            return False
        deleted, inserted = self._commit(
            f"writing chunk {chunk.chunk_no + 1}", lambda cur: self._write(cur, chunk, state)
        )
        self.stats.rows_deleted += deleted
        self.stats.rows_inserted += inserted
        self.stats.chunks += 1
        return True

    def _write(self, cur: Any, chunk: Chunk, state: RunState) -> tuple[int, int]:
        """Delete (replace mode) and ingest one chunk, record it: (rows deleted, rows inserted)."""
        self._check_lock(cur, chunk.strength)
        deleted = inserted = 0
        if self.settings.write.mode == "replace":
            deleted = _count(cur, *self._replace_delete(chunk))
            if chunk.size:
                cur.adbc_ingest(
                    self.table_name, chunk.events.to_arrow(), mode="append", db_schema_name=self.schema
                )
                inserted = chunk.size
        elif chunk.size:
            cur.execute(
                f"CREATE TEMP TABLE IF NOT EXISTS triangles_stage (LIKE {self.table}) ON COMMIT DELETE ROWS"
            )
            cur.adbc_ingest("triangles_stage", chunk.events.to_arrow(), mode="append", temporary=True)
            sql = f"INSERT INTO {self.table} SELECT * FROM triangles_stage ON CONFLICT DO NOTHING"
            inserted = _count(cur, sql, ())
        self.ledger.record_chunk(cur, state.key, chunk.chunk_no, chunk.span_start, chunk.span_end, chunk.size)
        self.coverage.extend(
            cur, self._coverage_key(chunk.strength), chunk.span_start, self._covers_until(chunk)
        )
        return deleted, inserted

    def _coverage_key(self, strength: int) -> CoverageKey:
        return CoverageKey(self.settings.tables.events, self.task.symbol, strength, self.settings_key)

    def _covers_until(self, chunk: Chunk) -> datetime:
        """A chunk's span, but never past the close of the newest bar read (a later bar may still come)."""
        return chunk.span_end if self.newest_close is None else min(chunk.span_end, self.newest_close)

    def _check_lock(self, cur: Any, strength: int) -> None:
        """Write only under the run's lock: wait (retry) while the driver takes it again."""
        token = self.settings.lock_token
        if token and not check_held(
            cur, LockKey(self.settings.tables.events, self.task.symbol, strength), token
        ):
            raise TransientError(f"the run's lock on {self.task.symbol} k={strength} is being taken again")

    def _replace_delete(self, chunk: Chunk) -> tuple[str, tuple[Any, ...]]:
        sql = f"DELETE FROM {self.table} WHERE symbol = $1 AND strength = $2 AND ((confirmed_at >= $3 AND confirmed_at < $4)"
        params: tuple[Any, ...] = (self.task.symbol, chunk.strength, chunk.span_start, chunk.span_end)
        if chunk.size:
            # Rows with the same key but another confirmed_at (bars or hygiene changed since they
            # were written) would collide on the primary key: the chunk's c_ts span removes them.
            sql += " OR (c_ts >= $5 AND c_ts <= $6)"
            params += (chunk.events["c_ts"].min(), chunk.events["c_ts"].max())
        return sql + ")", params

    def _commit(self, what: str, body: Any) -> Any:
        result = self.session.run(what, body)
        self.stats.commits += 1
        return result

    def finish(self) -> None:
        """Mark every run of the task done."""
        total = self.stats.chunks + self.stats.chunks_skipped
        for state in self.runs.values():
            self.session.run(
                "finishing the run", lambda cur, key=state.key: self.ledger.finish(cur, key, total)
            )


def _count(cur: Any, sql: str, params: tuple[Any, ...]) -> int:
    """Rows affected by a DELETE or INSERT, through ``RETURNING``."""
    return int(fetch_all(cur, f"WITH d AS ({sql} RETURNING 1) SELECT count(*) FROM d", params)[0][0])
