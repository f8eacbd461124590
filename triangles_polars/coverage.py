"""Coverage: the spans of ``confirmed_at`` whose events are all written (``docs/contract.md#coverage``).

Kept per (events table, symbol, strength, settings), where "settings" is everything that changes
the events: the bars table and its columns, ts convention, bar interval, hygiene profile and
thresholds, and the bars' series version. Each committed chunk extends it in the chunk's own
transaction; adjacent and overlapping spans merge, so tasks that finish out of order still end
as one contiguous span. A finished task is one whose range is covered: a rerun skips it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from triangles_polars.db import fetch_all, qualified
from triangles_polars.settings import THRESHOLD_KEYS, RunConfig, Task

COVERAGE_TABLE = "triangles_coverage"
_KEY_COLUMNS = ("events_table", "symbol", "strength", "settings_key")


def coverage_ddl(schema: str | None) -> str:
    """CREATE statement of the coverage table (idempotent)."""
    return f"""CREATE TABLE IF NOT EXISTS {qualified(schema, COVERAGE_TABLE)} (
  events_table text NOT NULL, symbol text NOT NULL, strength smallint NOT NULL,
  settings_key text NOT NULL, span_start timestamptz NOT NULL, span_end timestamptz NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (events_table, symbol, strength, settings_key, span_start))"""


def settings_key(config: RunConfig, task: Task) -> str:
    """The hash of everything that changes a symbol's events (not the range, mode or chunking)."""
    thresholds = task.hygiene.thresholds
    parts = {
        "bars": [config.tables.bars, sorted(config.tables.columns.items())],
        "ts": [config.read.ts_convention, config.read.interval.total_seconds()],
        "hygiene": [task.hygiene.profile, {k: getattr(thresholds, k) for k in THRESHOLD_KEYS}],
        "series_version": task.series_version,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CoverageKey:
    """Whose coverage: one (events table, symbol, strength, settings)."""

    events_table: str
    symbol: str
    strength: int
    settings: str

    def params(self) -> tuple[Any, ...]:
        return (self.events_table, self.symbol, self.strength, self.settings)


class Coverage:
    """Reads and extends coverage (statements run in the caller's transaction)."""

    def __init__(self, schema: str | None) -> None:
        self.table = qualified(schema, COVERAGE_TABLE)
        self._key = "events_table = $1 AND symbol = $2 AND strength = $3 AND settings_key = $4"

    def extend(self, cur: Any, key: CoverageKey, start: datetime, end: datetime) -> None:
        """Add ``[start, end)`` to the key's coverage, merging every span it touches."""
        self.extend_many(cur, [(key, start, end)])

    def extend_many(
        self, cur: Any, spans: list[tuple[CoverageKey, datetime, datetime]], until: datetime | None = None
    ) -> None:
        """:meth:`extend` for several distinct keys, in one statement. Committed chunks' spans are
        cut at ``until``, the close of the newest bar read: a later bar may still come."""
        spans = [(key, start, end if until is None else min(end, until)) for key, start, end in spans]
        spans = [(key, start, end) for key, start, end in spans if end > start]
        if not spans:
            return
        columns = tuple(
            list(c) for c in zip(*((*key.params(), lo, hi) for key, lo, hi in spans), strict=True)
        )
        same = " AND ".join(f"c.{c} = n.{c}" for c in _KEY_COLUMNS)  # c: a stored span, n: a new one
        cur.execute(
            f"""WITH n AS (SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[],
                    $5::timestamptz[], $6::timestamptz[]) AS n({", ".join(_KEY_COLUMNS)}, lo, hi)),
                touched AS (
                    DELETE FROM {self.table} c USING n WHERE {same} AND c.span_end >= n.lo AND c.span_start <= n.hi
                    RETURNING c.*)
                INSERT INTO {self.table} ({", ".join(_KEY_COLUMNS)}, span_start, span_end)
                SELECT {", ".join(f"n.{c}" for c in _KEY_COLUMNS)}, LEAST(n.lo, min(c.span_start)),
                    GREATEST(n.hi, max(c.span_end))
                FROM n LEFT JOIN touched c ON {same}
                GROUP BY {", ".join(f"n.{c}" for c in _KEY_COLUMNS)}, n.lo, n.hi""",
            parameters=columns,
        )

    def covered(self, cur: Any, wanted: list[tuple[CoverageKey, datetime, datetime]]) -> list[bool]:
        """For each (key, start, end): whether ``[start, end)`` lies inside one covered span (one query)."""
        if not wanted:
            return []
        columns = list(zip(*((*key.params(), lo, hi) for key, lo, hi in wanted), strict=True))
        sql = f"""SELECT q.i FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::timestamptz[],
                    $6::timestamptz[]) WITH ORDINALITY AS q(events_table, symbol, strength, settings_key, lo, hi, i)
                  WHERE EXISTS (SELECT 1 FROM {self.table} c WHERE c.events_table = q.events_table
                    AND c.symbol = q.symbol AND c.strength = q.strength AND c.settings_key = q.settings_key
                    AND c.span_start <= q.lo AND q.hi <= c.span_end)"""
        hits = {int(row[0]) for row in fetch_all(cur, sql, tuple(list(c) for c in columns))}
        return [i + 1 in hits for i in range(len(wanted))]

    def spans(self, cur: Any, key: CoverageKey) -> list[tuple[datetime, datetime]]:
        """The key's covered spans, in time order."""
        sql = f"SELECT span_start, span_end FROM {self.table} WHERE {self._key} ORDER BY span_start"
        return [(r[0], r[1]) for r in fetch_all(cur, sql, key.params())]

    def covers(self, cur: Any, key: CoverageKey, start: datetime, end: datetime) -> bool:
        """Whether ``[start, end)`` lies inside one covered span."""
        return any(lo <= start and end <= hi for lo, hi in self.spans(cur, key))

    def end(self, cur: Any, key: CoverageKey) -> datetime | None:
        """Where the key's latest covered span ends (None if never covered)."""
        spans = self.spans(cur, key)
        return spans[-1][1] if spans else None
