"""The run ledger: bookkeeping tables that make a rerun resume (``docs/contract.md#writing-idempotency-and-faults``).

Two tables live next to the events table: ``triangles_runs`` (one row per run key: status,
whether the range was purged) and ``triangles_progress`` (one row per committed chunk, written in
the chunk's own transaction). The same command again finds its run key and skips the chunks
recorded there.

The ledger is versioned (``triangles_meta``): a database written by an earlier release is
migrated in place on first use, and a run key of an earlier release is adopted, so an
interrupted run keeps resuming across an upgrade.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from triangles_polars.db import fetch_all, qualified, table_columns
from triangles_polars.errors import BadInput
from triangles_polars.schema import EVENT_SQL_TYPES, events_table_ddl
from triangles_polars.settings import THRESHOLD_KEYS, RunConfig, Task

RUNS_TABLE = "triangles_runs"
PROGRESS_TABLE = "triangles_progress"
META_TABLE = "triangles_meta"
LEDGER_VERSION = 2
# Version 1 (the first release) recorded a purge as a progress row with chunk number -1.
_LEGACY_PURGE_CHUNK = -1


# ---------------------------------------------------------------------------- run keys


def run_key_fields(settings: RunConfig, task: Task, strength: int) -> dict[str, Any]:
    """Everything that decides which events a run writes where: the identity of a run.

    Listed field by field (never a ``repr``), so adding a setting that changes nothing written
    does not orphan the runs already recorded.
    """
    thresholds = task.hygiene.thresholds
    return {
        "symbol": task.symbol,
        "strength": strength,
        "range": [task.time_range.start.isoformat(), task.time_range.end_exclusive.isoformat()],
        "anchor": task.time_range.anchor.isoformat(),
        "bars": [settings.tables.bars, sorted(settings.tables.columns.items())],
        "ts": [settings.read.ts_convention, settings.read.interval.total_seconds()],
        "hygiene": [task.hygiene.profile, {k: getattr(thresholds, k) for k in THRESHOLD_KEYS}],
        "events": settings.tables.events,
        "write": [settings.write.mode, settings.write.purge, settings.write.chunk_events],
    }


def run_key(fields: dict[str, Any]) -> str:
    """The versioned hash of :func:`run_key_fields`."""
    return _digest({"key_version": LEDGER_VERSION, **fields})


def legacy_run_key(fields: dict[str, Any]) -> str:
    """The key the first release computed for the same run (it hashed the thresholds' ``repr``)."""
    profile, values = fields["hygiene"]
    floats = {k: (None if v is None else float(v)) for k, v in values.items() if k != "reference_window"}
    text = ", ".join(
        f"{k}={values[k]!r}" if k == "reference_window" else f"{k}={floats[k]!r}" for k in THRESHOLD_KEYS
    )
    return _digest({**fields, "hygiene": [profile, f"Thresholds({text})"]})


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------- tables


def ledger_ddl(schema: str | None) -> list[str]:
    """CREATE statements of the current ledger (idempotent)."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {qualified(schema, RUNS_TABLE)} (
  run_key text PRIMARY KEY, events_table text NOT NULL, symbol text NOT NULL,
  strength smallint NOT NULL, range_start timestamptz NOT NULL, range_end timestamptz NOT NULL,
  status text NOT NULL, chunks integer NOT NULL, started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz, purged boolean NOT NULL DEFAULT false)""",
        f"""CREATE TABLE IF NOT EXISTS {qualified(schema, PROGRESS_TABLE)} (
  run_key text NOT NULL, chunk_no integer NOT NULL, span_start timestamptz NOT NULL,
  span_end timestamptz NOT NULL, events integer NOT NULL,
  committed_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (run_key, chunk_no))""",
        f"""CREATE TABLE IF NOT EXISTS {qualified(schema, META_TABLE)} (
  name text PRIMARY KEY, value text NOT NULL)""",
    ]


def migrate(cur: Any, schema: str | None) -> None:
    """Bring the ledger of ``schema`` to :data:`LEDGER_VERSION` (in the cursor's transaction)."""
    runs, progress, meta = (qualified(schema, t) for t in (RUNS_TABLE, PROGRESS_TABLE, META_TABLE))
    rows = fetch_all(cur, f"SELECT value FROM {meta} WHERE name = 'ledger_version'")
    version = int(rows[0][0]) if rows else 1
    if version < 2:
        # v1 → v2: the purge becomes a flag of the run instead of a magic chunk number.
        cur.execute(f"ALTER TABLE {runs} ADD COLUMN IF NOT EXISTS purged boolean NOT NULL DEFAULT false")
        cur.execute(
            f"UPDATE {runs} SET purged = true WHERE run_key IN "
            f"(SELECT run_key FROM {progress} WHERE chunk_no = {_LEGACY_PURGE_CHUNK})"
        )
        cur.execute(f"DELETE FROM {progress} WHERE chunk_no = {_LEGACY_PURGE_CHUNK}")
    if version != LEDGER_VERSION:
        cur.execute(
            f"INSERT INTO {meta} (name, value) VALUES ('ledger_version', $1) "
            "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
            parameters=(str(LEDGER_VERSION),),
        )


def check_events_table(columns: dict[str, str] | None, name: str) -> bool:
    """True if the table exists and is compatible; False if missing; BadInput if incompatible."""
    if columns is None:
        return False
    problems = [
        f"{col} ({columns.get(col, 'missing')})"
        for col, dtype in EVENT_SQL_TYPES.items()
        if columns.get(col) != dtype
    ]
    if problems:
        raise BadInput(
            f"events table {name!r} exists with an incompatible schema: {', '.join(problems[:4])}"
            f"{' …' if len(problems) > 4 else ''}; use another --events-table or drop it"
        )
    return True


def ensure_tables(cur: Any, events_table: str, schema: str | None, table: str) -> None:
    """Create the events table, the ledger and the coverage table if missing; migrate the ledger."""
    from triangles_polars.coverage import COVERAGE_TABLE, coverage_ddl

    if check_events_table(table_columns(cur, schema, table), events_table) and _ledger_current(
        cur, schema, COVERAGE_TABLE
    ):
        return  # the usual case (every update, every task): no DDL, no lock, two queries
    # Workers of one run may all start here at once: CREATE TABLE IF NOT EXISTS is not safe
    # against itself, so creators of one schema take turns (the lock ends with the transaction).
    cur.execute("SELECT pg_advisory_xact_lock(hashtext($1))", parameters=(f"triangles_ddl:{schema}",))
    exists = check_events_table(table_columns(cur, schema, table), events_table)
    statements = [*ledger_ddl(schema), coverage_ddl(schema)]
    for sql in statements + ([] if exists else events_table_ddl(schema, table)):
        cur.execute(sql)
    migrate(cur, schema)


def _ledger_current(cur: Any, schema: str | None, coverage_table: str) -> bool:
    """Whether the ledger and coverage tables exist at :data:`LEDGER_VERSION`."""
    names = [qualified(schema, t) for t in (RUNS_TABLE, PROGRESS_TABLE, META_TABLE, coverage_table)]
    present = fetch_all(
        cur, "SELECT bool_and(to_regclass(n) IS NOT NULL) FROM unnest($1::text[]) AS n", (names,)
    )
    if not present[0][0]:
        return False
    rows = fetch_all(cur, f"SELECT value FROM {names[2]} WHERE name = 'ledger_version'")
    return bool(rows) and rows[0][0] == str(LEDGER_VERSION)


# ---------------------------------------------------------------------------- one run


@dataclass
class RunState:
    """A run as the ledger knows it: its key, the chunks committed so far, whether it purged."""

    key: str
    done: dict[int, tuple[datetime, datetime, int]] = field(default_factory=dict)
    purged: bool = False

    def committed(self, chunk_no: int, span_start: datetime, span_end: datetime, events: int) -> bool:
        """Whether this very chunk (same span, same size) was committed by an earlier attempt."""
        return self.done.get(chunk_no) == (span_start, span_end, events)


class RunLedger:
    """Reads and writes the ledger of one events table (statements run in the caller's transaction)."""

    def __init__(self, events_table: str, schema: str | None) -> None:
        self.events_table = events_table
        self.runs = qualified(schema, RUNS_TABLE)
        self.progress = qualified(schema, PROGRESS_TABLE)

    def begin(
        self, cur: Any, runs: list[dict[str, Any]], resume: bool, start: datetime, end: datetime
    ) -> list[RunState]:
        """Register a task's runs (one per strength, :func:`run_key_fields`) in a few statements;
        an unfinished earlier attempt's chunks come back when ``resume``."""
        keys = [run_key(fields) for fields in runs]
        self._adopt_legacy(cur, keys, [legacy_run_key(fields) for fields in runs])
        sql = f"SELECT run_key, status, purged FROM {self.runs} WHERE run_key = ANY($1::text[]) FOR UPDATE"
        found = {r[0]: (r[1], bool(r[2])) for r in fetch_all(cur, sql, (keys,))}
        states = [RunState(key) for key in keys]
        resumed = [s for s in states if resume and found.get(s.key, ("done",))[0] != "done"]
        for state in resumed:
            state.purged = found[state.key][1]
        if resumed:
            sql = f"SELECT run_key, chunk_no, span_start, span_end, events FROM {self.progress} WHERE run_key = ANY($1::text[])"
            by_key = {s.key: s for s in resumed}
            for key, chunk_no, lo, hi, events in fetch_all(cur, sql, ([s.key for s in resumed],)):
                by_key[key].done[chunk_no] = (lo, hi, events)
        afresh = [s.key for s in states if s not in resumed]
        if afresh:
            cur.execute(f"DELETE FROM {self.progress} WHERE run_key = ANY($1::text[])", parameters=(afresh,))
        cur.execute(
            f"""INSERT INTO {self.runs} (run_key, events_table, symbol, strength, range_start,
                range_end, status, chunks, purged)
                SELECT k, $2, $3, s, $4, $5, 'running', 0, p FROM unnest($1::text[], $6::int[], $7::bool[]) AS u(k, s, p)
                ON CONFLICT (run_key) DO UPDATE SET status = 'running', purged = EXCLUDED.purged,
                started_at = now(), finished_at = NULL""",
            parameters=(
                keys,
                self.events_table,
                runs[0]["symbol"],
                start,
                end,
                [fields["strength"] for fields in runs],
                [s.purged for s in states],
            ),
        )
        return states

    def _adopt_legacy(self, cur: Any, keys: list[str], legacy: list[str]) -> None:
        """Rename unfinished runs of the first release to their current keys (once), chunks included."""
        cur.execute(
            f"""WITH pairs AS (SELECT * FROM unnest($1::text[], $2::text[]) AS p(run_key, legacy)),
                moved AS (
                    UPDATE {self.runs} r SET run_key = p.run_key FROM pairs p
                    WHERE r.run_key = p.legacy AND r.status <> 'done'
                      AND NOT EXISTS (SELECT 1 FROM {self.runs} x WHERE x.run_key = p.run_key)
                    RETURNING p.run_key, p.legacy)
                UPDATE {self.progress} g SET run_key = m.run_key FROM moved m WHERE g.run_key = m.legacy""",
            parameters=(keys, legacy),
        )

    def record_chunks(self, cur: Any, chunks: list[tuple[str, int, datetime, datetime, int]]) -> None:
        """Record committed chunks ``(run key, chunk_no, span_start, span_end, events)``, in their transaction."""
        cur.execute(
            f"""INSERT INTO {self.progress} (run_key, chunk_no, span_start, span_end, events)
                SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[], $4::timestamptz[], $5::int[])
                ON CONFLICT (run_key, chunk_no) DO UPDATE SET span_start = EXCLUDED.span_start,
                span_end = EXCLUDED.span_end, events = EXCLUDED.events, committed_at = now()""",
            parameters=tuple(list(column) for column in zip(*chunks, strict=True)),
        )

    def record_purge(self, cur: Any, keys: list[str]) -> None:
        """Record that the runs' range was purged, in the purge's own transaction."""
        cur.execute(
            f"UPDATE {self.runs} SET purged = true WHERE run_key = ANY($1::text[])", parameters=(keys,)
        )

    def finish(self, cur: Any, chunks: dict[str, int]) -> None:
        """Mark runs done (``{run key: its chunks}``): a later identical command starts afresh
        (replace keeps it idempotent)."""
        cur.execute(
            f"""UPDATE {self.runs} SET status = 'done', chunks = u.n, finished_at = now()
                FROM unnest($1::text[], $2::int[]) AS u(k, n) WHERE run_key = u.k""",
            parameters=(list(chunks), list(chunks.values())),
        )
